"""Surgical edits of optimizer state when a rank slot changes.

Parameter shapes never change, so the optimizer (and any LR scheduler bound to
it) is kept.  Only the per-element state of a changed slot is touched; every
other element is left bit-for-bit as it was.

A slot that starts afresh gets zero momentum (SGD's ``momentum_buffer``, Adam's
``exp_avg``, ...).  Adam's second moment (``exp_avg_sq``, ``max_exp_avg_sq``)
of a *grown* slot is not zeroed but set to the mean of the slots it joins.  The
reason is Adam's single step counter per tensor: its bias correction divides
the second moment by ``1 - beta2**step``, which late in training is about 1, as
if the zeroed entry had been averaging squared gradients for ``step`` steps.
The new slot's denominator is then ``sqrt(1 - beta2**k)`` too small ``k`` steps
after the reset, and its updates run at 2-6 times the learning rate for
hundreds of steps (beta2 = 0.999).  At a high learning rate that made freshly
grown ranks destabilise training (BENCHMARKS.md, "Fresh optimizer state of a
grown rank").  With the neighbours' second moment and a zero first moment, the
new slot's steps grow from about 0.1 lr to lr over ~1 / (1 - beta1) steps, as a
freshly started Adam's would.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Adam / AdamW / NAdam / RAdam (and amsgrad's running maximum) name their second moments so.
SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")


@torch.no_grad()
def reset_optimizer_slot(
    optimizer: torch.optim.Optimizer | None,
    param: Tensor,
    index: tuple,
    like: tuple | None = None,
    dim: int = 0,
) -> None:
    """Give the slot ``param[index]`` fresh optimizer state.

    Every element-wise state tensor of ``param`` is zeroed at ``index``.  With
    ``like`` (an index of ``param`` selecting the slots the new one joins), the
    second moments at ``index`` become the mean of ``state[like]`` over
    dimension ``dim`` instead (zero when ``like`` selects nothing); see the
    module docstring for why.  State entries not shaped like the parameter
    (AdamW's ``step`` counter, for instance) are left alone.
    """
    if optimizer is None:
        return
    state = optimizer.state.get(param)
    if not state:
        return
    for key, value in state.items():
        if not (torch.is_tensor(value) and value.shape == param.shape):
            continue
        value[index] = 0
        if like is not None and key in SECOND_MOMENTS:
            neighbours = value[like]
            if neighbours.numel():
                value[index] = neighbours.mean(dim=dim)
