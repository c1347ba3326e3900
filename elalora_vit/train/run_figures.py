"""The figures of a run whose ranks move (ElaLoRA, AdaLoRA), drawn from its
``rank_history.json``:

- ``rank_evolution.png``: every adapter's rank over the training steps, one panel
  per projection kind, one line per block (coloured by depth), with the phase
  boundaries of the schedule marked;
- ``importance_scores.png``: per kind, the triplet scores each round decided on:
  the kept ranks' quartiles, and every pruned and every newly grown rank.

The plotted data come from :func:`rank_series` and :func:`score_series`, which the
plots call, so the tests check what is drawn without reading pixels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from ..core import ElaLoRAConfig
from ..storage.files import atomic_write
from ..core.score_summary import adapter_kind
from ..vit import block_index_and_kind
from .heatmap import KIND_ORDER

History = Sequence[Mapping[str, Any]]  # rank_history.json: RoundRecord.to_dict() per round


def initial_pattern(history: History, final_pattern: Mapping[str, int]) -> dict[str, int]:
    """Every adapter's rank before the first round: the first round's pattern with its
    moves undone (the final pattern when no round ran)."""
    if not history:
        return dict(final_pattern)
    first = history[0]
    pattern = dict(first["rank_pattern"])
    for name in first["pruned"]:
        pattern[name] += 1
    for name in first["expanded"]:
        pattern[name] -= 1
    return pattern


def rank_series(history: History, final_pattern: Mapping[str, int], total_steps: int) -> dict[str, tuple[list[int], list[int]]]:
    """``{adapter: (steps, ranks)}``: its rank from step 0, after every round, to ``total_steps``."""
    patterns = [(0, initial_pattern(history, final_pattern))]
    patterns += [(int(r["step"]), r["rank_pattern"]) for r in history]
    patterns.append((total_steps, dict(final_pattern)))
    return {
        name: ([step for step, _ in patterns], [int(p[name]) for _, p in patterns])
        for name in final_pattern
    }


def phase_boundaries(config: ElaLoRAConfig, total_steps: int) -> dict[str, int]:
    """The steps after which the adjustment and the stabilisation phases begin."""
    return {
        "adjustment begins": config.warmup_steps,
        "stabilisation begins": total_steps - config.stabilize_steps,
    }


def by_kind(names: Sequence[str]) -> dict[str, list[tuple[int, str]]]:
    """``{kind: [(block, adapter name), ...]}`` in the heatmap's kind order, blocks ascending;
    adapters of other models count as block = their position."""
    panels: dict[str, list[tuple[int, str]]] = {}
    for position, name in enumerate(names):
        block, kind = block_index_and_kind(name) or (position, adapter_kind(name))
        panels.setdefault(kind, []).append((block, name))
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    return {k: sorted(panels[k]) for k in sorted(panels, key=lambda k: (order.get(k, len(order)), k))}


def score_series(history: History) -> dict[str, dict[str, list]]:
    """Per kind, what ``importance_scores.png`` draws: ``steps`` and ``kept`` (the kept
    ranks' quantiles, one list per round that recorded them), ``pruned`` and ``new``
    (``(step, score)`` of every pruned rank and every rank grown at the round before)."""
    series: dict[str, dict[str, list]] = {}

    def of(kind: str) -> dict[str, list]:
        return series.setdefault(kind, {"steps": [], "kept": [], "pruned": [], "new": []})

    for record in history:
        scores, step = record.get("scores") or {}, int(record["step"])
        for kind, kept in scores.get("kept", {}).items():
            of(kind)["steps"].append(step)
            of(kind)["kept"].append(list(kept["quantiles"]))
        for group in ("pruned", "new"):
            for name, _, score in scores.get(group, []):
                of(adapter_kind(name))[group].append((step, float(score)))
    return {kind: series[kind] for kind in by_kind([f"x.{k}" for k in series])}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _panels(plt, count: int, title: str):
    cols = min(3, count)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows + 0.6), squeeze=False, sharex=True)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    fig.suptitle(title, fontsize=10)
    return fig, list(axes.flat[:count])


def _mark_phases(ax, boundaries: Mapping[str, int]) -> None:
    for label, step in boundaries.items():
        ax.axvline(step, color="grey", linestyle="--", linewidth=0.8)
        ax.text(step, 0.98, " " + label.split()[0], transform=ax.get_xaxis_transform(),
                fontsize=6, color="grey", va="top", rotation=90)


def plot_rank_evolution(
    history: History, final_pattern: Mapping[str, int], total_steps: int,
    boundaries: Mapping[str, int], path: str | Path, title: str = "rank per adapter over training",
) -> dict[str, tuple[list[int], list[int]]]:
    """Draw every adapter's rank over the steps into ``path``; returns :func:`rank_series`."""
    series = rank_series(history, final_pattern, total_steps)
    panels = by_kind(list(series))
    plt = _pyplot()
    fig, axes = _panels(plt, len(panels), title)
    depth = max(block for members in panels.values() for block, _ in members) + 1
    cmap = plt.get_cmap("viridis")
    for ax, (kind, members) in zip(axes, panels.items()):
        for block, name in members:
            steps, ranks = series[name]
            ax.step(steps, ranks, where="post", color=cmap(block / max(depth - 1, 1)), linewidth=1.2,
                    label=f"block {block}")
        _mark_phases(ax, boundaries)
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("rank", fontsize=8)
        ax.yaxis.get_major_locator().set_params(integer=True)
    axes[0].legend(fontsize=6, ncol=2 if depth > 6 else 1, loc="best")
    _save(fig, plt, path)
    return series


def plot_importance_scores(history: History, path: str | Path, title: str = "triplet scores per round") -> dict:
    """Draw each round's score distribution per kind into ``path``; returns :func:`score_series`
    ({} and no file when the history holds no scores, e.g. a history of an older version)."""
    series = score_series(history)
    if not series:
        return {}
    plt = _pyplot()
    fig, axes = _panels(plt, len(series), title)
    for ax, (kind, data) in zip(axes, series.items()):
        if data["steps"]:
            q = list(zip(*data["kept"]))  # quantile levels 0, .25, .5, .75, 1
            ax.fill_between(data["steps"], q[0], q[4], color="tab:blue", alpha=0.12, label="kept: min-max")
            ax.fill_between(data["steps"], q[1], q[3], color="tab:blue", alpha=0.3, label="kept: quartiles")
            ax.plot(data["steps"], q[2], color="tab:blue", linewidth=1.2, label="kept: median")
        for group, style in (("pruned", dict(marker="x", color="tab:red")), ("new", dict(marker="^", color="tab:green"))):
            if data[group]:
                steps, scores = zip(*data[group])
                label = "pruned" if group == "pruned" else "grown at the round before"
                ax.scatter(steps, scores, s=14, label=label, **style)
        ax.set_yscale("log")
        ax.set_title(kind, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.set_ylabel("triplet score", fontsize=8)
    axes[0].legend(fontsize=6, loc="best")
    _save(fig, plt, path)
    return series


def _save(fig, plt, path: str | Path) -> None:
    fig.tight_layout()
    fig.savefig(Path(path), dpi=110)
    plt.close(fig)


def write_run_figures(
    rank_evolution: Path, importance_scores: Path, history: History, final_pattern: Mapping[str, int],
    config: ElaLoRAConfig, total_steps: int, label: str,
) -> list[Path]:
    """Both figures of a run, written atomically; returns the files written."""
    boundaries = phase_boundaries(config, total_steps)
    written = [atomic_write(rank_evolution, lambda tmp: plot_rank_evolution(
        history, final_pattern, total_steps, boundaries, tmp, f"{label}: rank per adapter over training"))]
    if score_series(history):
        written.append(atomic_write(importance_scores, lambda tmp: plot_importance_scores(
            history, tmp, f"{label}: triplet scores at each round")))
    return written
