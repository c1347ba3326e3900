"""The report's section on grid variants (:mod:`.grid`): each variant against its
method's default setting, task by task.

The comparison is paired: a variant and its default are compared on the tasks both
ran (the same data, split and seeds), per task the difference of their means, then
averaged like the headline (per group, then the mean of the group deltas), with the
same paired 95% interval over seeds as the baselines get (:mod:`.stats`), the spread
of the per-task differences (their min and max), and the tasks better / worse.
"""

from __future__ import annotations

from .formatting import fmt, markdown_table, signed
from .grid import base_method, is_variant
from .results import GROUP_NAMES, Results
from .stats import paired_aggregate

TIE = 1e-9


def variant_rows(results: Results) -> list[list[str]]:
    """One row per grid variant whose default setting also ran, in ``results.methods`` order
    (per method, best mean of group means first)."""
    rows = []
    for variant in (m for m in results.methods if is_variant(m)):
        default = base_method(variant)
        deltas = results.task_deltas(variant, default)
        if not deltas:
            continue
        per_group = []
        for group in GROUP_NAMES:
            agg = results.delta(variant, default, group)
            text = signed(agg.value)
            per_group.append(text + (f" ({agg.n_tasks}/{agg.of})" if agg.value is not None and not agg.complete else ""))
        values = list(deltas.values())
        rows.append([
            variant,
            fmt(results.mean_of_groups(variant).value),
            *per_group,
            f"**{signed(results.delta(variant, default).value)}**",
            _interval_text(results, variant, default),
            f"{signed(min(values))} … {signed(max(values))}",
            f"{sum(d > TIE for d in values)} / {sum(d < -TIE for d in values)} / {sum(abs(d) <= TIE for d in values)}",
        ])
    return rows


def _interval_text(results: Results, variant: str, default: str) -> str:
    """The paired interval over seeds of the mean of group deltas, as for the baselines."""
    found = paired_aggregate(results, variant, default, "mean_of_groups")
    return found[0].text() if found is not None else "–"


def variants_section(results: Results) -> str:
    """``## Grid variants``, or "" when the folder holds none."""
    if not any(is_variant(m) for m in results.methods):
        return ""
    rows = variant_rows(results)
    intro = ("Each variant of a `--grid` against its method's default setting (the column without brackets), "
             "paired: per task the difference of the two means, over the tasks both ran, then averaged per group "
             "and over the groups like the headline. Variants are listed best mean of group means first.")
    if not rows:
        return f"## Grid variants\n\n{intro}\n\nNo variant has a task in common with its default setting yet."
    head = ["variant", "mean of group means", *(f"Δ {g}" for g in GROUP_NAMES), "Δ mean of group deltas",
            "95% interval over seeds", "Δ per task, min … max", "tasks better / worse / tied"]
    note = ("The interval is paired by seed (Student-t, see \"How sure\"); with fewer than 3 seeds (†) it says "
            "little, so read the per-task range and the better / worse counts beside the mean difference.")
    return f"## Grid variants\n\n{intro}\n\n" + markdown_table(head, rows) + f"\n\n{note}"
