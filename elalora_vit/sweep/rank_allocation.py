"""Where the ranks go: per method, the mean final rank by layer kind (q, k, v, proj,
fc1, fc2) and by depth (block), averaged over tasks; the paper's headline
observation (fc1 gains the most rank, output projections the least), measured."""

from __future__ import annotations

import statistics
from typing import Iterable, Mapping

from ..core.registry import get_method, method_names
from ..train.heatmap import KIND_ORDER
from ..vit import block_index_and_kind
from .formatting import markdown_table
from .grid import base_method
from .results import Results


def ranks_move(method: str) -> bool:
    """Whether ``method`` (or the method of a grid variant) allocates ranks (ElaLoRA, AdaLoRA)."""
    method = base_method(method)
    return method in method_names() and get_method(method).allocator is not None


def mean_pattern(patterns: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average rank of each adapter over several runs."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for pattern in patterns:
        for name, rank in pattern.items():
            sums[name] = sums.get(name, 0.0) + rank
            counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in sums}


def task_patterns(results: Results, method: str) -> list[dict[str, float]]:
    """``method``'s final rank per adapter on each task it ran (mean over seeds); tasks
    whose runs have no rank pattern are left out."""
    return [
        mean_pattern(run.rank_pattern for run in cell.runs)
        for task in results.tasks
        if (cell := results.cell(task, method)) is not None and all(run.rank_pattern for run in cell.runs)
    ]


def rank_by(results: Results, method: str, axis: str) -> dict[str | int, float]:
    """Mean final rank of ``method``'s ViT adapters by ``axis`` (``"kind"`` or ``"block"``):
    within a task the mean over that kind's (block's) adapters, then the mean over tasks,
    so every task weighs the same.  {} without ViT rank patterns."""
    per_task: dict[str | int, list[float]] = {}
    for pattern in task_patterns(results, method):
        groups: dict[str | int, list[float]] = {}
        for name, rank in pattern.items():
            where = block_index_and_kind(name)
            if where is not None:
                groups.setdefault(where[1] if axis == "kind" else where[0], []).append(rank)
        for key, ranks in groups.items():
            per_task.setdefault(key, []).append(statistics.fmean(ranks))
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    keys = sorted(per_task, key=lambda k: (order.get(k, len(order)), str(k)) if axis == "kind" else k)
    return {key: statistics.fmean(per_task[key]) for key in keys}


def rank_allocation_section(results: Results) -> str:
    """``## Where the ranks go``: mean final rank by kind and by block, per method whose
    ranks move; "" when none ran."""
    methods = [m for m in results.methods if ranks_move(m) and rank_by(results, m, "kind")]
    if not methods:
        return ""
    tables = []
    for axis, title in (("kind", "by layer kind"), ("block", "by depth (block)")):
        columns = list(dict.fromkeys(key for m in methods for key in rank_by(results, m, axis)))
        rows = []
        for method in methods:
            values = rank_by(results, method, axis)
            best = max(values.values())
            rows.append([method, str(len(task_patterns(results, method))),
                         *(_cell(values.get(c), best) for c in columns)])
        head = ["method", "tasks", *(c if axis == "kind" else f"block {c}" for c in columns)]
        tables.append(f"Mean final rank {title}:\n\n" + markdown_table(head, rows))
    intro = ("Each adapter's final rank, averaged within a task over the adapters of a kind (or block) and the "
             "seeds, then over the tasks; bold: where the method put the most rank. The paper reports the MLP's "
             "fc1 gaining the most rank and the output projections the least.")
    return "## Where the ranks go\n\n" + intro + "\n\n" + "\n\n".join(tables)


def _cell(value: float | None, best: float) -> str:
    if value is None:
        return "–"
    return f"**{value:.2f}**" if value >= best - 1e-9 else f"{value:.2f}"
