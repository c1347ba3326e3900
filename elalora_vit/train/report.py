"""Run outputs that people read: JSON files and the rank heatmap."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from ..vit import block_index_and_kind

KIND_ORDER = ("q", "k", "v", "qkv", "proj", "fc1", "fc2")


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
    return path


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def rank_matrix(pattern: Mapping[str, float]) -> tuple[np.ndarray, list[str]] | None:
    """Blocks x projection kinds matrix of a ViT rank pattern (NaN where absent), or None
    when the names are not ViT adapter names."""
    cells = {}
    for name, rank in pattern.items():
        where = block_index_and_kind(name)
        if where is None:
            return None
        cells[where] = rank
    if not cells:
        return None
    kinds = [k for k in KIND_ORDER if any(kind == k for _, kind in cells)]
    blocks = max(b for b, _ in cells) + 1
    matrix = np.full((blocks, len(kinds)), np.nan)
    for (block, kind), rank in cells.items():
        matrix[block, kinds.index(kind)] = rank
    return matrix, kinds


def plot_rank_heatmap(
    pattern: Mapping[str, float],
    path: str | Path,
    title: str = "final rank per adapter",
    initial_rank: float | None = None,
) -> Path | None:
    """Draw blocks (rows) x projection types (columns), coloured and annotated by rank,
    like the paper's allocation figure.  Returns None when ``pattern`` is not a ViT's."""
    fitted = rank_matrix(pattern)
    if fitted is None:
        return None
    matrix, kinds = fitted
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.1 * len(kinds) + 2.2, 0.42 * matrix.shape[0] + 1.6))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(matrix.shape[0]), [f"block {b}" for b in range(matrix.shape[0])])
    ax.set_xlabel("projection")
    subtitle = f" (initial rank {initial_rank:g})" if initial_rank is not None else ""
    ax.set_title(title + subtitle, fontsize=10)
    finite = matrix[np.isfinite(matrix)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        if np.isfinite(value):
            text = f"{value:.1f}" if value != int(value) else f"{int(value)}"
            ax.text(col, row, text, ha="center", va="center", fontsize=8, color="white" if value < middle else "black")
    fig.colorbar(image, ax=ax, label="rank")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def mean_pattern(patterns: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Average rank of each adapter over several runs (for the sweep's figure)."""
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    for pattern in patterns:
        for name, rank in pattern.items():
            sums[name] = sums.get(name, 0.0) + rank
            counts[name] = counts.get(name, 0) + 1
    return {name: sums[name] / counts[name] for name in sums}
