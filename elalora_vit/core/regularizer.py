"""The orthogonal regulariser of the SVD factors (METHOD.md section 1).

    R = sum over adapters ( ||P^T P - I||_F + ||Q Q^T - I||_F ) / (number of matrices)

(excluded parts of a split layer are not adapters and take no part.)

Plain (not squared) Frobenius norms, as AdaLoRA and the reference code use; only
active ranks take part, so an inactive slot neither adds to R nor gets a gradient.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from .layer import SVDLinear, adapted_layers


def orthogonal_regularization(model_or_layers: nn.Module | Iterable[SVDLinear]) -> Tensor:
    """R over every SVD adapter of a model (or of the given layers); 0 for orthonormal P and Q."""
    if isinstance(model_or_layers, nn.Module):
        layers = [m for _, m in adapted_layers(model_or_layers) if isinstance(m, SVDLinear)]
    else:
        layers = list(model_or_layers)
    if not layers:
        raise ValueError("orthogonal_regularization: the model has no SVD adapters")
    norms = []
    for group in _same_shape_groups(layers):
        # The adapters of all layers of one shape (a ViT has four shapes) are
        # batched: a handful of kernels per shape instead of a dozen per layer.
        Q = _cat([layer.lora_A for layer in group])  # (m, R, d_in)
        P = _cat([layer.lora_B for layer in group])  # (m, d_part, R)
        both_active, eye = _group_masks(group, Q.dtype)
        norms.append(torch.linalg.matrix_norm(_Gram.apply(Q) * both_active - eye))  # Q Q^T
        norms.append(torch.linalg.matrix_norm(_Gram.apply(P.mT) * both_active - eye))  # P^T P
    # One norm per matrix, 2 per adapter; an excluded part (no active slot) has norms 0 and is
    # no adapter, so it does not count in the mean either.
    adapters = sum(layer.n_parts - len(layer.excluded_parts) for layer in layers)
    return torch.cat(norms).sum() / (2 * adapters)


class _Gram(torch.autograd.Function):
    """``X X^T`` for a batch of matrices X (m, R, d), with a backward of one
    matmul, ``(G + G^T) X``, where autograd's generic one takes two matmuls and
    a sum of two (m, R, d) tensors."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x @ x.mT

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        grad = grad.to(x.dtype)  # under autocast the forward matmul ran in half precision
        return (grad + grad.mT) @ x


def _group_masks(group: list[SVDLinear], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``(both_active, eye)`` of a group, shapes (m, R, R).

    Masking the R x R Gram matrix equals zeroing inactive rows of Q and columns of P first
    (entry ij is multiplied by mask_i * mask_j), for a fraction of the memory traffic;
    inactive slots still get no gradient.  ``eye`` is the identity on the active slots only.
    The masks change only in a round: they are kept on the group's first layer, keyed by the
    group's masks and the version torch counts for every in-place write to them (no host
    read; a few launches fewer per step).
    """
    def build() -> tuple[Tensor, Tensor]:
        mask = _cat([layer.rank_mask for layer in group]).to(dtype)  # (m, R)
        return mask.unsqueeze(2) * mask.unsqueeze(1), torch.diag_embed(mask)

    if torch.compiler.is_compiling():
        return build()
    key = (tuple((id(layer.rank_mask), layer.rank_mask._version) for layer in group), dtype)
    cached = getattr(group[0], "_orth_masks", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, *build())
        group[0]._orth_masks = cached
    return cached[1], cached[2]


def _same_shape_groups(layers: list[SVDLinear]) -> list[list[SVDLinear]]:
    groups: dict[tuple, list[SVDLinear]] = {}
    for layer in layers:
        key = (layer.lora_A.shape[1:], layer.lora_B.shape[1:], layer.lora_A.dtype, layer.lora_A.device)
        groups.setdefault(key, []).append(layer)
    return list(groups.values())


def _cat(tensors: list[Tensor]) -> Tensor:
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)
