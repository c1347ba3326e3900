"""What a round must leave in the optimizer's per-element state (shared by the
core and the training-loop tests)."""

from __future__ import annotations

import torch
from torch import Tensor

SECOND_MOMENTS = ("exp_avg_sq", "max_exp_avg_sq")


def expected_after_round(before: Tensor, key: str, slot_dim: int, changed: Tensor, stayed: Tensor,
                         active_after: Tensor) -> Tensor:
    """``before`` (a state tensor shaped like a factor whose slots run along ``slot_dim``)
    as a round should leave it: slots it did not change as they were; changed slots at
    zero, except the second moment of a grown slot, which is the mean over the slots of
    its part that stayed active through the round.  ``changed``, ``stayed`` and
    ``active_after`` are (parts, capacity) bool."""
    out = before.clone()
    view, old = out.movedim(slot_dim, 1), before.movedim(slot_dim, 1)  # (parts, capacity, ...)
    for part, slot in changed.nonzero().tolist():
        view[part, slot] = 0
        if key in SECOND_MOMENTS and active_after[part, slot] and stayed[part].any():
            view[part, slot] = old[part, stayed[part]].mean(dim=0)
    return out


def assert_moments_after_round(before: Tensor, after: Tensor, key: str, slot_dim: int, changed: Tensor,
                               mask_before: Tensor, mask_after: Tensor) -> None:
    stayed = mask_before & mask_after & ~changed
    expected = expected_after_round(before, key, slot_dim, changed, stayed, mask_after)
    touched = torch.zeros_like(before, dtype=torch.bool)
    touched.movedim(slot_dim, 1)[changed] = True
    assert torch.equal(after[~touched], before[~touched]), key  # bit for bit
    torch.testing.assert_close(after, expected, rtol=1e-6, atol=0, msg=key)
