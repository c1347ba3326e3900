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
    # The adapters of all layers of one shape (a ViT has three or four shapes) are batched, and
    # the whole of R is one autograd node with its gradient written out: a few kernels per shape,
    # forward and backward, instead of a dozen per layer.
    groups = _same_shape_groups(layers)
    masks = [mask for group in groups for mask in _group_masks(group, group[0].lora_A.dtype)]
    factors = [layer.lora_A for group in groups for layer in group] + [layer.lora_B for group in groups for layer in group]
    # One norm per matrix, 2 per adapter; an excluded part (no active slot) has norms 0 and is
    # no adapter, so it does not count in the mean either.
    adapters = sum(layer.n_parts - len(layer.excluded_parts) for layer in layers)
    sizes = tuple(tuple(layer.n_parts for layer in group) for group in groups)
    return _Regulariser.apply(sizes, 1.0 / (2 * adapters), *masks, *factors)


class _Regulariser(torch.autograd.Function):
    """``scale * sum ||(Q Q^T) o B - E||_F + ||(P^T P) o B - E||_F`` over the matrices of every
    group, with ``B`` the both-active mask and ``E`` the identity on the active slots.

    Its gradient, written out: with ``D = (X X^T) o B - E`` (symmetric, zero outside ``B``) and
    ``N = ||D||_F``, ``dN / dX = 2 D X / N`` (and 0 where ``N = 0``: an excluded part), so an
    inactive slot, a zero row and column of ``D``, gets no gradient.  It runs in fp32 (or the
    factors' float64) under autocast too: near orthonormality ``D`` is a small difference.
    """

    @staticmethod
    def forward(ctx, sizes, scale, *tensors):
        n_groups = len(sizes)
        masks, factors = tensors[: 2 * n_groups], tensors[2 * n_groups:]
        layers = sum(len(parts) for parts in sizes)
        As, Bs = factors[:layers], factors[layers:]
        norms, saved, start = [], [], 0
        with torch.autocast(As[0].device.type, enabled=False):
            for g, parts in enumerate(sizes):
                both, eye = masks[2 * g], masks[2 * g + 1]
                Q = _cat(As[start:start + len(parts)])  # (m, R, d_in)
                P = _cat(Bs[start:start + len(parts)])  # (m, d_part, R)
                start += len(parts)
                for X, gram in ((Q, torch.bmm(Q, Q.mT)), (P, torch.bmm(P.mT, P))):
                    D = torch.addcmul(eye, gram, both, value=-1)  # -D: the sign is undone in backward
                    N = torch.linalg.vector_norm(D, dim=(-2, -1), keepdim=True)  # (m, 1, 1)
                    norms.append(N)
                    saved += [X, D.div_(N.clamp_min(torch.finfo(D.dtype).tiny))]  # -D / N, 0 where N = 0
        ctx.sizes = sizes
        ctx.scale = scale
        ctx.save_for_backward(*saved)
        return torch.cat(norms).sum() * scale

    @staticmethod
    def backward(ctx, grad):
        saved = ctx.saved_tensors
        coef = grad * (-2 * ctx.scale)  # -2: the sign of the saved -D / N
        grads_A, grads_B = [], []
        for g, parts in enumerate(ctx.sizes):
            Q, DQ, P, DP = saved[4 * g: 4 * g + 4]
            grads_A += torch.bmm(DQ, Q).mul_(coef).split(parts)
            grads_B += torch.bmm(P, DP).mul_(coef).split(parts)
        return (None, None, *([None] * 2 * len(ctx.sizes)), *grads_A, *grads_B)


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
