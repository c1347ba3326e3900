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

The EMAs of every adapter tensor live in one flat buffer per device (``ibar`` and
``ubar`` are views of it, one per adapter tensor), so a step is a fixed number of kernel
launches whatever the model size, and a step whose gradients are not finite is masked
out on the device (a zero weight, NaN and inf zeroed first) instead of being decided by a read of a device
value on the host, which would stall the host until a GPU drains its queue.
"""

from __future__ import annotations

import math
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
        self.ibar: list[Tensor] = [None] * len(self.params)  # views of the groups' flat buffers
        self.ubar: list[Tensor] = [None] * len(self.params)
        self._groups = [_FlatGroup(self.params, members, self.ibar, self.ubar)
                        for members in _by_device_and_dtype(self.params)]

    @torch.no_grad()
    def update(self, check_finite: bool = True, valid: Tensor | None = None) -> Tensor:
        """Fold the current gradients into the EMAs; returns a 0-dim bool tensor on the
        device: whether they were folded in.

        ``valid`` (a 0-dim bool tensor, e.g. the training loop's finite flag) says whether
        this step counts; when it is false nothing changes.  With ``check_finite`` (the
        default) a step whose gradients are not all finite (an fp16 overflow, a bad batch)
        changes nothing either; ``check_finite=False`` is for a caller whose ``valid``
        already says the gradients are finite.  Nothing here reads a device value on the
        host: the decision is a mask applied on the device.  Parameters without a gradient
        count as having a zero gradient.
        """
        folded = None
        for group in self._groups:
            ok = group.update(self.params, valid, check_finite, self.beta1, self.beta2)
            folded = ok if folded is None else folded & ok.to(folded.device)
        return folded

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


def _by_device_and_dtype(params: Sequence[Tensor]) -> list[list[int]]:
    """Indices of ``params`` grouped by (device, dtype): one flat buffer per group (one group
    unless a model is split over devices, e.g. a language model with ``device_map``)."""
    groups: dict[tuple, list[int]] = {}
    for i, p in enumerate(params):
        groups.setdefault((p.device, p.dtype), []).append(i)
    return list(groups.values())


class _FlatGroup:
    """The EMAs (and a scratch buffer for the sensitivities) of the adapter tensors of one
    device and dtype, each a flat buffer; ``ibar[i]`` / ``ubar[i]`` are views of its slices."""

    def __init__(self, params: Sequence[Tensor], members: list[int], ibar: list, ubar: list):
        self.members = members
        first = params[members[0]]
        total = sum(params[i].numel() for i in members)
        self.ibar, self.ubar, self.sens = (torch.zeros(total, device=first.device, dtype=first.dtype)
                                           for _ in range(3))
        self.sens_views = []
        offset = 0
        for i in members:
            shape, n = params[i].shape, params[i].numel()
            ibar[i] = self.ibar[offset: offset + n].view(shape)
            ubar[i] = self.ubar[offset: offset + n].view(shape)
            self.sens_views.append(self.sens[offset: offset + n].view(shape))
            offset += n

    def update(self, params, valid: Tensor | None, check_finite: bool, beta1: float, beta2: float) -> Tensor:
        mine = [params[i] for i in self.members]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in mine]
        torch._foreach_copy_(self.sens_views, torch._foreach_mul(mine, grads))
        sensitivity = self.sens.abs_()  # I_t = |w * g|, every tensor of the group at once
        ok = None if valid is None else valid.to(self.sens.device)
        if check_finite:  # |w * g| >= 0: not all finite <=> the max is inf or NaN (a NaN max compares false)
            finite = sensitivity.amax() < math.inf
            ok = finite if ok is None else ok & finite
        if ok is None:  # every step counts
            weight1, weight2 = 1 - beta1, 1 - beta2
        else:  # a step that does not count folds in with weight 0, which leaves both EMAs exactly as
            # they were once NaN and inf are zeroed (NaN * 0 = NaN; one pass, cheaper than a where)
            sensitivity.nan_to_num_(0.0, 0.0, 0.0)
            weight1, weight2 = ok * (1 - beta1), ok * (1 - beta2)
        # lerp(a, b, w) = a + w (b - a) = (1 - w) a + w b: each EMA in one pass over memory.
        self.ibar.lerp_(sensitivity, weight1)
        sensitivity.sub_(self.ibar).abs_()  # |I_t - Ibar_t|
        self.ubar.lerp_(sensitivity, weight2)
        return torch.ones((), dtype=torch.bool, device=self.sens.device) if ok is None else ok
