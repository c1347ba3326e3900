"""Paired differences over seeds with t-intervals, per task and for both aggregates."""

from __future__ import annotations

import math
import statistics

import pytest

from elalora_vit.sweep import collect_results, write_report
from elalora_vit.sweep.stats import paired_aggregate, paired_task, t_interval, t_quantile
from tests.test_protocol import write_result

# Two-sided 95% quantiles t_{0.975, df} from any statistics table.
TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 29: 2.045, 120: 1.980}


def test_t_quantile_matches_the_table_and_scipy():
    for df, value in TABLE.items():
        assert t_quantile(0.975, df) == pytest.approx(value, abs=5e-4)
        assert t_quantile(0.025, df) == pytest.approx(-value, abs=5e-4)
    scipy_t = pytest.importorskip("scipy.stats").t
    for df in (1, 2, 5, 17, 300):
        for p in (0.6, 0.9, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy_t.ppf(p, df), rel=1e-9)


def test_t_interval_by_hand():
    values = [1.0, 2.0, 4.0]
    interval = t_interval(values)
    half = TABLE[2] * statistics.stdev(values) / math.sqrt(3)
    assert interval.mean == pytest.approx(7 / 3)
    assert interval.low == pytest.approx(7 / 3 - half, abs=1e-3) and interval.high == pytest.approx(7 / 3 + half, abs=1e-3)
    assert interval.meaningful and not t_interval([1.0, 2.0]).meaningful
    assert t_interval([5.0]).low is None


# dtd and eurosat in two groups, kitti in the third; elalora beats lora by seed-dependent margins.
ACCURACY = {  # task -> seed -> (elalora, lora)
    "dtd": {0: (61.0, 60.0), 1: (63.0, 61.0), 2: (60.0, 60.0)},
    "eurosat": {0: (90.0, 88.0), 1: (91.0, 90.0), 2: (92.0, 89.0)},
    "kitti": {0: (70.0, 71.0), 1: (72.0, 70.0), 2: (75.0, 72.0)},
}


@pytest.fixture
def root(tmp_path):
    for task, seeds in ACCURACY.items():
        for seed, (ela, lora) in seeds.items():
            write_result(tmp_path, task, "elalora", seed, ela)
            write_result(tmp_path, task, "lora", seed, lora)
    write_result(tmp_path, "dtd", "linear", 0, 50.0)
    return tmp_path


def test_paired_differences_per_task_group_and_both_aggregates(root):
    results = collect_results(root)
    dtd = paired_task(results, "dtd", "elalora", "lora")
    assert (dtd.mean, dtd.n) == (pytest.approx(1.0), 3)
    assert dtd.low == pytest.approx(1.0 - TABLE[2] * 1.0 / math.sqrt(3), abs=1e-3)  # d = 1, 2, 0: sd 1
    deltas = {t: [e - b for e, b in s.values()] for t, s in ACCURACY.items()}
    per_seed_groups = [statistics.fmean([deltas["dtd"][s], deltas["eurosat"][s], deltas["kitti"][s]]) for s in range(3)]
    groups, n_tasks = paired_aggregate(results, "elalora", "lora", "mean_of_groups")
    # one task per group: the mean of group means equals the task mean here
    assert n_tasks == 3 and groups.mean == pytest.approx(statistics.fmean(per_seed_groups))
    assert groups.high - groups.low == pytest.approx(2 * TABLE[2] * statistics.stdev(per_seed_groups) / math.sqrt(3), abs=1e-3)
    natural, n_natural = paired_aggregate(results, "elalora", "lora", "natural")
    assert n_natural == 1 and natural.mean == pytest.approx(dtd.mean)
    assert paired_aggregate(results, "elalora", "linear", "mean_of_tasks")[0].n == 1  # one common seed


def test_the_report_gives_the_intervals_and_warns_below_three_seeds(root):
    text = write_report(root)["markdown"].read_text()
    assert "## How sure: paired differences over seeds" in text and "### elalora − lora" in text
    assert "| dtd | +1.00 [-1.48, +3.48] (n=3) |" in text
    assert "**mean of group means**, 3 tasks" in text and "19-task mean, 3 tasks" in text
    assert "| dtd | +11.00 (n=1, no interval) |" in text  # against linear: one seed
    assert "Fewer than 3 seeds" in text
