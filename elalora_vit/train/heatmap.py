"""The rank heatmap: a ViT's final rank per adapter as blocks x projection kinds,
like the paper's allocation figure (one run's, or the sweep's mean over runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from ..vit import block_index_and_kind

KIND_ORDER = ("q", "k", "v", "qkv", "proj", "fc1", "fc2")


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
