"""How sure we are that ElaLoRA beats a baseline: paired differences over seeds,
with 95% t-intervals.

Runs of two methods with the same seed share the seed's data order and head
initialisation, so they are compared in pairs: for a task, ``d_s = ElaLoRA_s -
baseline_s`` over the seeds both ran, and the interval is

    mean(d) ± t_{0.975, n-1} * sd(d) / sqrt(n)

For an aggregate (a group, the mean of group means, the 19-task mean) the same
aggregate is taken of ``d_{task,s}`` for each seed ``s`` that every included task
ran with both methods, and the interval is over those per-seed aggregates: it
says how much the aggregate moves with the seed, the run-to-run noise that
decides whether a difference is real.  With fewer than 3 seeds this is not
meaningful (2 seeds give one degree of freedom, t = 12.7): the report says so.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from ..data.tasks import GROUPS, task_names
from .formatting import markdown_table
from .grid import is_variant
from .results import GROUP_NAMES, Results

LEVEL = 0.95
MIN_SEEDS = 3


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds, with its ``LEVEL`` t-interval (None for one seed)."""

    mean: float
    low: float | None
    high: float | None
    n: int

    @property
    def meaningful(self) -> bool:
        return self.n >= MIN_SEEDS

    def text(self) -> str:
        """``+1.2 [-0.3, +2.7] (n=3)``; a mark when too few seeds make the interval meaningless."""
        if self.low is None:
            return f"{self.mean:+.2f} (n=1, no interval)"
        mark = "" if self.meaningful else " †"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}] (n={self.n}){mark}"


def t_interval(values: Sequence[float], level: float = LEVEL) -> Interval:
    """The mean of ``values`` with its two-sided ``level`` Student-t interval."""
    n = len(values)
    if n == 0:
        raise ValueError("an interval needs at least one value")
    mean = statistics.fmean(values)
    if n == 1:
        return Interval(mean, None, None, 1)
    half = t_quantile(0.5 + level / 2, n - 1) * statistics.stdev(values) / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n)


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (as
    ``scipy.stats.t.ppf``), by bisection on the CDF; scipy is not a dependency."""
    if not 0 < p < 1 or df < 1:
        raise ValueError(f"need 0 < p < 1 and df >= 1, got p={p}, df={df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    low, high = 0.0, 1.0
    while t_cdf(high, df) < p:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_cdf(mid, df) < p else (low, mid)
        if high - low < 1e-12 * max(1.0, high):
            break
    return (low + high) / 2


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t: 1 - I_x(df/2, 1/2) / 2 at x = df / (df + t^2), for t >= 0."""
    tail = 0.5 * regularized_beta(df / (df + t * t), df / 2, 0.5)
    return 1 - tail if t >= 0 else tail


def regularized_beta(x: float, a: float, b: float) -> float:
    """I_x(a, b), by its continued fraction (modified Lentz), on the side where it converges fast."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x > (a + 1) / (a + b + 2):
        return 1 - regularized_beta(1 - x, b, a)
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 + numerator * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1) < 1e-15:
            break
    return math.exp(log_front) * fraction / a


# ----------------------------------------------------------------------------- paired differences
def seed_deltas(results: Results, task: str, method: str, baseline: str) -> dict[int, float]:
    """``{seed: method - baseline}`` on ``task`` for the seeds both ran."""
    a, b = results.cell(task, method), results.cell(task, baseline)
    if a is None or b is None:
        return {}
    theirs = {r.seed: r.accuracy for r in b.runs}
    return {r.seed: r.accuracy - theirs[r.seed] for r in a.runs if r.seed in theirs}


def paired_task(results: Results, task: str, method: str, baseline: str) -> Interval | None:
    deltas = seed_deltas(results, task, method, baseline)
    return t_interval(list(deltas.values())) if deltas else None


def paired_aggregate(results: Results, method: str, baseline: str, level: str) -> tuple[Interval, int] | None:
    """The interval of an aggregate of the paired differences, and over how many tasks.

    ``level``: a group name, ``mean_of_groups`` or ``mean_of_tasks``; the tasks are
    those both methods ran, the seeds those every one of them has."""
    per_task = {t: d for t in task_names() if (d := seed_deltas(results, t, method, baseline))}
    if level in GROUPS:
        per_task = {t: d for t, d in per_task.items() if t in GROUPS[level]}
    if not per_task:
        return None
    seeds = sorted(set.intersection(*(set(d) for d in per_task.values())))
    if not seeds:
        return None
    values = [_aggregate({t: d[s] for t, d in per_task.items()}, level) for s in seeds]
    return t_interval(values), len(per_task)


def _aggregate(deltas: dict[str, float], level: str) -> float:
    if level == "mean_of_groups":
        groups = [[d for t, d in deltas.items() if t in GROUPS[g]] for g in GROUP_NAMES]
        return statistics.fmean(statistics.fmean(g) for g in groups if g)
    return statistics.fmean(deltas.values())


def stats_markdown(results: Results, method: str = "elalora") -> str:
    """The "How sure" section of results.md: per baseline, per task and per aggregate."""
    if method not in results.methods:
        return ""
    blocks = []
    for baseline in [m for m in results.methods if m != method and not is_variant(m)]:  # variants: their own section
        rows = [[t, i.text()] for t in results.tasks if (i := paired_task(results, t, method, baseline))]
        if not rows:
            continue
        for level, label in [*((g, f"{g} (group mean)") for g in GROUP_NAMES),
                             ("mean_of_groups", "**mean of group means**"), ("mean_of_tasks", "19-task mean")]:
            if (found := paired_aggregate(results, method, baseline, level)) is not None:
                interval, n_tasks = found
                rows.append([f"{label}, {n_tasks} task{'s' if n_tasks > 1 else ''}", interval.text()])
        blocks.append(f"### {method} − {baseline}\n\n" + markdown_table(["", f"paired difference, {LEVEL:.0%} interval"], rows))
    if not blocks:
        return ""
    few = min(len(c.runs) for c in results.cells.values()) < MIN_SEEDS
    intro = ("## How sure: paired differences over seeds\n\n"
             f"Points of top-1, {method} minus the baseline on the same seed, mean over seeds with a "
             f"{LEVEL:.0%} Student-t interval; an aggregate is taken per seed (over the tasks both ran) and the "
             "interval is over seeds. An interval that excludes 0 says the difference is larger than the seed noise.")
    if few:
        intro += (f"\n\n> **Fewer than {MIN_SEEDS} seeds (†):** with so few seeds the interval is not meaningful "
                  "(2 seeds: one degree of freedom); run more seeds (--seeds 0 1 2) before reading anything into it.")
    return intro + "\n\n" + "\n\n".join(blocks)
