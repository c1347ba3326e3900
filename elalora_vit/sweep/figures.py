"""The report's figures: group means per method, top-1 per task, and each
method's final rank per adapter averaged over tasks."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..storage.files import atomic_write
from ..core.registry import get_method, method_names
from .grid import base_method
from .rank_allocation import mean_pattern, ranks_move, task_patterns
from ..train.heatmap import plot_rank_heatmap
from .results import GROUP_NAMES, Results

GROUP_MEANS = "group_means.png"
PER_TASK = "per_task_top1.png"
RANK_HEATMAP = "rank_heatmap_{method}.png"


def write_figures(results: Results, folder: Path) -> dict[str, Path]:
    """Every figure that has data, by caption, written into ``folder``."""
    figures: dict[str, Path] = {}
    if not results.runs:
        return figures
    figures["Group means per method (hatched: over fewer tasks than the group has)"] = _saved(
        folder / GROUP_MEANS, lambda path: plot_group_means(results, path))
    figures["Top-1 per task (mean ± std over seeds)"] = _saved(folder / PER_TASK, lambda path: plot_per_task(results, path))
    for method in results.methods:
        if not ranks_move(method):  # a fixed-rank method's pattern is a flat grid
            continue
        path = _saved(folder / RANK_HEATMAP.format(method=method), lambda p, m=method: plot_mean_rank_heatmap(results, m, p))
        if path is not None:
            figures[f"{method}: final rank per adapter, averaged over tasks"] = path
    return {caption: path for caption, path in figures.items() if path is not None}


def plot_group_means(results: Results, path: Path) -> Path:
    """Bars: the three group means and their mean, one bar per method."""
    plt = _pyplot()
    fig = group_means_figure(results, plt)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def group_means_figure(results: Results, plt=None):
    """The figure of :func:`plot_group_means` (a matplotlib Figure, not saved)."""
    plt = plt or _pyplot()
    categories = [*GROUP_NAMES, "mean of groups"]
    methods = results.methods
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(1.6 * len(categories) + 2, 3.6))
    for i, method in enumerate(methods):
        aggregates = [results.group_mean(method, g) for g in GROUP_NAMES] + [results.mean_of_groups(method)]
        label = method
        for j, agg in enumerate(aggregates):
            if agg.value is None:
                continue
            ax.bar(j + (i - (len(methods) - 1) / 2) * width, agg.value, width, color=f"C{i}", label=label,
                   hatch=None if agg.complete else "//", edgecolor="white" if agg.complete else "black")
            label = None  # one legend entry per method
    # x in data (the group's slot), y in axes units (just above the axis): the label sits in
    # its group's empty slot whatever the bars' heights; the limits keep every slot in view.
    for j, category in enumerate(GROUP_NAMES):
        if all(results.group_mean(m, category).value is None for m in methods):
            ax.text(j, 0.03, "no results", ha="center", va="bottom", fontsize=8, color="gray",
                    transform=ax.get_xaxis_transform())
    ax.set_xlim(-0.5, len(categories) - 0.5)
    ax.set_xticks(range(len(categories)), categories)
    ax.set_ylabel("top-1 (%)")
    ax.set_title(f"VTAB-1k group means ({results.eval_split} split)", fontsize=10)
    ax.legend(fontsize=8, ncols=min(len(methods), 5), loc="upper center", bbox_to_anchor=(0.5, -0.08), frameon=False)
    fig.tight_layout()
    return fig


def plot_per_task(results: Results, path: Path) -> Path:
    """Horizontal bars per task (table order, top to bottom), one per method, with std."""
    plt = _pyplot()
    tasks, methods = results.tasks, results.methods
    height = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(7, 0.13 * len(tasks) * len(methods) + 0.3 * len(tasks) + 1.0))
    for i, method in enumerate(methods):
        ys, means, errors = [], [], []
        for t, task in enumerate(tasks):
            if (cell := results.cell(task, method)) is not None:
                ys.append(t + (i - (len(methods) - 1) / 2) * height)
                means.append(cell.mean)
                errors.append(cell.std or 0.0)
        ax.barh(ys, means, height, xerr=errors, color=f"C{i}", label=method, error_kw={"elinewidth": 0.8})
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_ylim(len(tasks) - 0.5, -0.5)  # first task on top
    ax.set_xlabel(f"top-1 (%) on {results.eval_split}")
    ax.legend(fontsize=8, ncols=min(len(methods), 5), loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_mean_rank_heatmap(results: Results, method: str, path: Path) -> Path | None:
    """``method``'s final rank per adapter, averaged over seeds within a task, then over
    tasks (each task weighs the same); None without rank patterns."""
    per_task = task_patterns(results, method)
    if not per_task:
        return None
    initial = {run.initial_rank for task in results.tasks if (cell := results.cell(task, method)) for run in cell.runs}
    # a pruning method starts above its final rank: its start is no reference line
    base = base_method(method)
    prunes_from_above = base in method_names() and get_method(base).init_rank_factor is not None
    initial_rank = initial.pop() if not prunes_from_above and len(initial) == 1 else None
    return plot_rank_heatmap(mean_pattern(per_task), path, title=f"{method}: mean final rank over {len(per_task)} task(s)",
                             initial_rank=initial_rank)


class _NothingDrawn(Exception):
    """Raised inside ``atomic_write`` when there is nothing to draw, so no file is put in place."""


def _saved(path: Path, draw: Callable[[Path], Path | None]) -> Path | None:
    """Draw atomically (the temporary file keeps ``path``'s suffix, from which matplotlib
    takes the format), so that concurrent shards finishing together never leave a
    half-written figure; None when ``draw`` had nothing to draw."""

    def write(tmp: Path) -> None:
        if draw(tmp) is None:
            raise _NothingDrawn

    try:
        return atomic_write(path, write)
    except _NothingDrawn:
        return None


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt

