"""Importance of the ranks of SVD adapters (METHOD.md section 2).

For every adapter element w with gradient g:

    I_t    = |w * g|                                          sensitivity
    Ibar_t = beta1 * Ibar_{t-1} + (1 - beta1) * I_t           smoothed sensitivity
    Ubar_t = beta2 * Ubar_{t-1} + (1 - beta2) * |I_t - Ibar_t|  uncertainty
    s(w)   = Ibar_t * Ubar_t

and the score of rank i of an adapter (its triplet) is

    S_i = s(lambda_i) + mean_j s(P_ji) + mean_j s(Q_ij).

``lambda`` is stored as ``lambda_scale * theta`` (see ``layer.py``); the
tracker scores the parameter ``theta`` the optimizer trains, and
``|theta * dL/dtheta| = |lambda * dL/dlambda|``, so the scores are those of
``lambda``, equal to PEFT AdaLoRA's whatever ``lambda_scale`` is.

The EMAs of every adapter tensor are updated together with ``torch._foreach``
kernels: a fixed number of kernel launches per step, whatever the model size.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from .layer import SVDLinear


class ImportanceTracker:
    """Element-wise EMAs of sensitivity and uncertainty for a list of SVD layers."""

    def __init__(self, layers: Sequence[SVDLinear], beta1: float = 0.85, beta2: float = 0.85):
        self.layers = list(layers)
        self.beta1 = beta1
        self.beta2 = beta2
        self.params = [t for layer in self.layers for t in (layer.lora_A, layer.lora_theta, layer.lora_B)]
        self.ibar = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        self.ubar = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]

    @torch.no_grad()
    def update(self, check_finite: bool = True) -> bool:
        """Fold the current gradients into the EMAs.

        Returns False, and changes nothing, when any gradient is not finite
        (an fp16 overflow, a bad batch); ``check_finite=False`` skips that check, for a
        caller that has checked the gradients already.  Parameters without a gradient
        count as having a zero gradient.
        """
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        sensitivity = torch._foreach_mul(self.params, grads)  # I_t = |w * g|
        torch._foreach_abs_(sensitivity)
        if check_finite and not bool(torch.stack(torch._foreach_max(sensitivity)).isfinite().all()):
            return False
        # lerp(a, b, w) = a + w (b - a) = (1 - w) a + w b: each EMA in one pass over memory.
        torch._foreach_lerp_(self.ibar, sensitivity, 1 - self.beta1)
        torch._foreach_sub_(sensitivity, self.ibar)  # I_t - Ibar_t
        torch._foreach_abs_(sensitivity)
        torch._foreach_lerp_(self.ubar, sensitivity, 1 - self.beta2)
        return True

    @torch.no_grad()
    def layer_scores(self, index: int) -> Tensor:
        """Triplet scores S of every slot of layer ``index``, shape (n_parts, capacity).

        Inactive slots are scored too; callers select the active ones.
        """
        s_A, s_E, s_B = (
            self.ibar[3 * index + j] * self.ubar[3 * index + j] for j in range(3)
        )
        return s_E + s_A.mean(dim=2) + s_B.mean(dim=1)

    @torch.no_grad()
    def scores(self) -> Tensor:
        """Triplet scores of all adapters, shape (number of adapters, capacity), in layer/part order."""
        return torch.cat([self.layer_scores(i).float() for i in range(len(self.layers))])

    @torch.no_grad()
    def reset_slot(self, index: int, part: int, slot: int) -> None:
        """Fresh (zero) statistics for one rank of one adapter."""
        for stats in (self.ibar, self.ubar):
            stats[3 * index][part, slot].zero_()  # row of Q
            stats[3 * index + 1][part, slot].zero_()  # lambda (its theta)
            stats[3 * index + 2][part, :, slot].zero_()  # column of P

    def state_dict(self) -> dict:
        return {"ibar": [t.clone() for t in self.ibar], "ubar": [t.clone() for t in self.ubar]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        for key in ("ibar", "ubar"):
            saved = state[key]
            if len(saved) != len(self.params):
                raise ValueError(
                    f"importance state holds {len(saved)} tensors, this model has {len(self.params)}"
                )
            for mine, theirs in zip(getattr(self, key), saved):
                if mine.shape != theirs.shape:
                    raise ValueError(f"importance state shape {tuple(theirs.shape)} != {tuple(mine.shape)}")
                mine.copy_(theirs)
