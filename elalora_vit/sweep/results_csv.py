"""``results.csv``: the report's numbers for scripts, one row per task x method,
then the aggregates and the published rows."""

from __future__ import annotations

import csv
import io
from typing import Any

from ..data.tasks import GROUPS
from .formatting import num
from .published import PUBLISHED, SOURCE
from .results import GROUP_NAMES, Aggregate, Cell, Results

CSV_COLUMNS = (
    "source", "level", "group", "task", "method", "n_seeds", "seeds", "top1_mean", "top1_std",
    "top1_per_seed", "n_tasks", "of_tasks", "trainable_params", "total_rank", "wall_time_s",
)
"""``level``: task, group, mean_of_groups (the VTAB headline) or mean_of_tasks."""
WALL_TIME_COLUMNS = ("wall_time_s",)


def results_csv(results: Results) -> str:
    """One row per task x method, then per method its group means, the mean of group
    means and the plain task mean, then the published rows."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for task in results.tasks:
        for method in results.methods:
            if (cell := results.cell(task, method)) is not None:
                writer.writerow(_cell_row(cell))
    for method in results.methods:
        for group in GROUP_NAMES:
            writer.writerow(_aggregate_row("ours", "group", group, method, results.group_mean(method, group)))
        writer.writerow(_aggregate_row("ours", "mean_of_groups", "", method, results.mean_of_groups(method)))
        writer.writerow(_aggregate_row("ours", "mean_of_tasks", "", method, results.task_mean(method)))
    for row in PUBLISHED:
        for group in GROUP_NAMES:
            writer.writerow(_aggregate_row(SOURCE, "group", group, row.label, Aggregate(row.group(group), len(GROUPS[group]), len(GROUPS[group]))))
        writer.writerow(_aggregate_row(SOURCE, "mean_of_groups", "", row.label, Aggregate(row.mean_of_groups, 19, 19)))
    return out.getvalue()


def _cell_row(cell: Cell) -> dict[str, Any]:
    return {
        "source": "ours", "level": "task", "group": cell.group, "task": cell.task, "method": cell.method,
        "n_seeds": len(cell.runs), "seeds": " ".join(map(str, cell.seeds)),
        "top1_mean": num(cell.mean), "top1_std": num(cell.std),
        "top1_per_seed": " ".join(num(a) for a in cell.accuracies),
        "n_tasks": 1, "of_tasks": 1,
        "trainable_params": num(cell.trainable_params, 1), "total_rank": num(cell.total_rank, 2),
        "wall_time_s": num(cell.wall_time_s, 1),
    }


def _aggregate_row(source: str, level: str, group: str, method: str, agg: Aggregate) -> dict[str, Any]:
    return {"source": source, "level": level, "group": group, "method": method,
            "top1_mean": num(agg.value), "n_tasks": agg.n_tasks, "of_tasks": agg.of}
