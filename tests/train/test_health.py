"""The allocation health checks fire on the failures they name, once, and stay quiet otherwise."""

import logging

import pytest
import torch
from torch import nn

from elalora_vit.core import ElaLoRAConfig, RankAllocator, RoundRecord, patch_model
from elalora_vit.core import allocator as allocator_module
from elalora_vit.train.health import HealthMonitor, concentration, is_concentrated, net_rank_change


class FakeAllocator:
    """What HealthMonitor reads of an allocator: config, total_steps, history, rank_pattern()."""

    def __init__(self, pattern, total_steps=100, warmup=10, stabilize=20):
        self.config = ElaLoRAConfig(rank=4, warmup_steps=warmup, adjust_interval=5, stabilize_steps=stabilize)
        self.total_steps = total_steps
        self.history: list[RoundRecord] = []
        self.pattern = dict(pattern)

    def rank_pattern(self):
        return dict(self.pattern)

    def run_round(self, monitor, step, pattern, pruned=(), expanded=(), model=None):
        self.pattern = dict(pattern)
        record = RoundRecord(step=step, b=len(expanded), pruned=list(pruned), expanded=list(expanded),
                             rank_pattern=dict(pattern))
        self.history.append(record)
        monitor.after_round(record, model if model is not None else nn.Linear(2, 2))


def uniform(n=20, rank=4):
    return {f"a{i}": rank for i in range(n)}


def test_concentration_measure_is_relative_to_a_uniform_pattern():
    assert concentration(uniform()) == pytest.approx(0.1)
    hoarded = {**{f"a{i}": 1 for i in range(18)}, "a18": 30, "a19": 32}
    assert concentration(hoarded) == pytest.approx(62 / 80)
    assert is_concentrated(hoarded) and not is_concentrated(uniform())
    # One adapter, or three, hold all of "their" rank by construction: not a failure.
    assert not is_concentrated({"only": 8})
    assert not is_concentrated({"q": 10, "k": 1, "v": 1})


def test_rank_flowing_into_a_few_adapters_warns_once_and_counts_every_round(caplog):
    alloc = FakeAllocator(uniform())
    monitor = HealthMonitor(alloc, logging.getLogger("health-test"))
    hoarded = {**{f"a{i}": 1 for i in range(18)}, "a18": 30, "a19": 32}
    with caplog.at_level(logging.WARNING, logger="health-test"):
        alloc.run_round(monitor, 15, uniform(), pruned=["a0"], expanded=["a1"])
        assert monitor.fired == {}
        alloc.run_round(monitor, 20, hoarded, pruned=["a0"], expanded=["a19"])
        alloc.run_round(monitor, 25, hoarded, pruned=["a1"], expanded=["a19"])
    assert monitor.fired["concentration"] == 2
    assert sum("flowing into a few adapters" in r.message for r in caplog.records) == 1
    summary = monitor.summary()
    assert summary["rank_concentration_top10pct"] == pytest.approx(62 / 80, abs=1e-4)
    assert any("flowing into a few adapters" in w for w in summary["warnings"])


def test_a_round_that_leaves_nan_in_an_adapter_is_reported(monkeypatch, caplog):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    cfg = ElaLoRAConfig(rank=2, max_rank=4, k=1, b=1, warmup_steps=1, adjust_interval=1, stabilize_steps=1)
    patch_model(model, ["0", "2"], cfg)
    alloc = RankAllocator(model, cfg, total_steps=10)
    monitor = HealthMonitor(alloc, logging.getLogger("health-test"))
    model(torch.randn(4, 6)).sum().backward()
    alloc.step()  # warm-up: scores only
    # A broken expansion: the new direction is NaN (e.g. Gram-Schmidt of a degenerate basis).
    monkeypatch.setattr(allocator_module, "_orthogonal_unit_vector", lambda rows, gen: torch.full((rows.shape[1],), float("nan")))
    with caplog.at_level(logging.WARNING, logger="health-test"):
        record = alloc.step()
        assert record is not None and record.expanded, "the schedule should run a round at step 2"
        monitor.after_round(record, model)
    # lambda = 0 does not hide it: NaN * 0 is NaN, the next forward is NaN.
    assert not torch.isfinite(model(torch.randn(1, 6))).all()
    summary = monitor.summary()
    assert summary["nonfinite_after_round"] == 1
    assert summary["fired"]["nonfinite_after_round"] == 1
    assert any("non-finite adapter values after a round" in r.message for r in caplog.records)


def test_a_healthy_round_reports_nothing():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    cfg = ElaLoRAConfig(rank=2, max_rank=4, k=1, b=1, warmup_steps=1, adjust_interval=1, stabilize_steps=1)
    patch_model(model, ["0", "2"], cfg)
    alloc = RankAllocator(model, cfg, total_steps=10)
    monitor = HealthMonitor(alloc)
    for step in range(1, 10):
        loss = model(torch.randn(4, 6)).pow(2).mean()
        loss.backward()
        record = alloc.step()
        if record is not None:
            monitor.after_round(record, model)
        model.zero_grad()
    assert monitor.nonfinite_after_round == 0 and "nonfinite_after_round" not in monitor.fired


def test_loss_rising_during_the_adjustment_phase_is_detected():
    rising = HealthMonitor(FakeAllocator(uniform()))
    falling = HealthMonitor(FakeAllocator(uniform()))
    for step in range(1, 101):
        # Only steps 11..80 are in the adjustment phase (warm-up 10, stabilisation 20).
        rising.after_step(step, 1.0 + 0.02 * step if 10 < step <= 80 else 0.1, skipped=False)
        falling.after_step(step, 2.0 - 0.01 * step, skipped=False)
    assert rising.loss_rise() == pytest.approx((1 + 0.02 * 70.5) / (1 + 0.02 * 20.5))  # steps 61-80 over 11-30
    assert falling.loss_rise() < 1.0
    assert "loss_rising" in rising.summary()["fired"]
    assert "loss_rising" not in falling.summary()["fired"]


def test_loss_check_ignores_skipped_steps_and_too_short_phases():
    monitor = HealthMonitor(FakeAllocator(uniform(), total_steps=16, warmup=10, stabilize=2))
    for step in range(1, 17):
        monitor.after_step(step, None if step == 12 else 1.0 + step, skipped=step == 12)
    assert monitor.skipped_steps == 1 and monitor.fired["skipped_steps"] == 1
    assert monitor.loss_rise() is None  # 3 adjustment losses: too few for two windows


def test_no_rank_moving_is_detected_with_its_reason():
    never = FakeAllocator(uniform(4))
    monitor = HealthMonitor(never)
    summary = monitor.summary()
    assert summary["fired"]["no_rank_moved"] == 1 and "no adjustment round ran" in summary["warnings"][0]

    blocked = FakeAllocator(uniform(4))
    monitor = HealthMonitor(blocked)
    blocked.run_round(monitor, 15, uniform(4))  # a round that moved nothing (shortfall)
    assert "all 1 rounds were blocked" in monitor.summary()["warnings"][0]

    back_and_forth = FakeAllocator(uniform(4))
    monitor = HealthMonitor(back_and_forth)
    back_and_forth.run_round(monitor, 15, {**uniform(4), "a0": 3, "a1": 5}, pruned=["a0"], expanded=["a1"])
    back_and_forth.run_round(monitor, 20, uniform(4), pruned=["a1"], expanded=["a0"])
    summary = monitor.summary()
    assert summary["ranks_moved"] == 2 and summary["net_rank_change"] == 0
    assert "every adapter ended at its initial rank" in summary["warnings"][0]


def test_rank_that_moved_for_good_is_healthy():
    alloc = FakeAllocator(uniform(4))
    monitor = HealthMonitor(alloc)
    alloc.run_round(monitor, 15, {**uniform(4), "a0": 3, "a1": 5}, pruned=["a0"], expanded=["a1"])
    summary = monitor.summary()
    assert summary["fired"] == {} and summary["warnings"] == []
    assert summary["net_rank_change"] == 1 and net_rank_change({"a": 4, "b": 4}, {"a": 2, "b": 6}) == 2


def test_monitor_state_survives_a_resume():
    alloc = FakeAllocator(uniform(4))
    monitor = HealthMonitor(alloc)
    for step in range(1, 40):
        monitor.after_step(step, 1.0 / step, skipped=step == 5)
    alloc.run_round(monitor, 15, {**uniform(4), "a0": 3, "a1": 5}, pruned=["a0"], expanded=["a1"])
    resumed = HealthMonitor(FakeAllocator(uniform(4)))
    resumed.allocator.pattern, resumed.allocator.history = alloc.pattern, alloc.history
    resumed.load_state_dict(monitor.state_dict())
    assert resumed.summary() == monitor.summary()
