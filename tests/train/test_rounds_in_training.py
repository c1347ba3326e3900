"""Rounds inside a real ``train()``: the slots a round changed have fresh AdamW moments
right after it (zero, except a grown slot's second moment: the mean of its part's
slots that stayed active), and every other moment is left bit for bit as it was.

The core tests check this on a hand-written loop; here the training loop itself must
hand its optimizer to the allocator. The test watches from outside the loop: it wraps
``RankAllocator.step`` and finds the run's optimizer through torch's global
optimizer-step hook, so it does not depend on how the loop is written.
"""

from __future__ import annotations

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from elalora_vit.core import RankAllocator
from elalora_vit.train import load_config, train
from tests.core.slot_moments import assert_moments_after_round
from tests.train.conftest import tiny_overrides

MOMENTS = ("exp_avg", "exp_avg_sq")


def _state(alloc: RankAllocator, optimizer) -> list[dict]:
    """Per SVD layer: its mask, factors and AdamW moments, cloned."""
    out = []
    for layer in alloc.layers:
        params = {"A": layer.lora_A, "E": layer.lora_theta, "B": layer.lora_B}
        out.append({
            "mask": layer.rank_mask.detach().clone(),
            "weights": {k: p.detach().clone() for k, p in params.items()},
            "moments": {k: {m: optimizer.state[p][m].clone() for m in MOMENTS} for k, p in params.items()},
        })
    return out


def _changed_slots(before: dict, after: dict) -> torch.Tensor:
    """(parts, capacity) bool: slots whose mask flipped or whose factors a round rewrote."""
    w0, w1 = before["weights"], after["weights"]
    return (
        (before["mask"] != after["mask"])
        | (w0["A"] != w1["A"]).any(dim=2)
        | (w0["E"] != w1["E"])
        | (w0["B"] != w1["B"]).any(dim=1)
    )


def test_rounds_give_changed_slots_fresh_moments_and_leave_the_rest(folder_root, tmp_path, monkeypatch):
    stepped: list = []  # the optimizers that took a step, most recent last
    hook = register_optimizer_step_post_hook(lambda opt, args, kwargs: stepped.append(opt))
    rounds = []
    original = RankAllocator.step

    def step(self, optimizer=None, *, skipped=False, **kwargs):
        trained_by = stepped[-1]  # the run's AdamW, whatever the loop passes on
        before = _state(self, trained_by)
        record = original(self, optimizer, skipped=skipped, **kwargs)
        if record is not None:
            rounds.append((record, before, _state(self, trained_by)))
        return record

    monkeypatch.setattr(RankAllocator, "step", step)
    try:
        train(load_config(None, tiny_overrides(folder_root, tmp_path / "run")))
    finally:
        hook.remove()

    assert len(rounds) >= 2
    reset_something = grown_beside_others = False
    for record, before, after in rounds:
        changed_total = 0
        for layer_before, layer_after in zip(before, after):
            changed = _changed_slots(layer_before, layer_after)
            changed_total += int(changed.sum())
            stayed = layer_before["mask"] & layer_after["mask"] & ~changed
            grown_beside_others |= bool(((changed & layer_after["mask"]).any(dim=1) & stayed.any(dim=1)).any())
            for which, moments in layer_after["moments"].items():
                slot_dim = 2 if which == "B" else 1
                for m in MOMENTS:
                    old, new = layer_before["moments"][which][m], moments[m]
                    assert_moments_after_round(old, new, m, slot_dim, changed, layer_before["mask"],
                                               layer_after["mask"])
                    reset_something |= bool(torch.count_nonzero(old.movedim(slot_dim, 1)[changed]))
        assert changed_total >= len(record.expanded) >= 1, record.step
    assert reset_something  # the changed slots had moments to reset: a missing reset would show
    assert grown_beside_others  # the second-moment rule for grown slots was exercised
