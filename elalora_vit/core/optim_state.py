"""Surgical edits of optimizer state when a rank slot changes.

Parameter shapes never change, so the optimizer (and any LR scheduler bound to
it) is kept.  Only the per-element state of a changed slot (AdamW's
``exp_avg``/``exp_avg_sq``, SGD's ``momentum_buffer``, ...) is zeroed; every
other element is left bit-for-bit as it was.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def reset_optimizer_slot(optimizer: torch.optim.Optimizer | None, param: Tensor, index: tuple) -> None:
    """Zero every element-wise state tensor of ``param`` at ``index``.

    State entries that are not shaped like the parameter (AdamW's ``step``
    counter, for instance) are left alone.
    """
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for value in state.values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value[index] = 0
