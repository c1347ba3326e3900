"""Counting: how many dots an 8 x 8 image holds, 1 to 5 (a structured task, as VTAB's
clevr/count; the backbone never saw a dot, only digits 0-4).

Each image is a dark background with faint noise (uniform in [0, 0.15]) and ``count`` dots:
single pixels of brightness uniform in [0.55, 1.0], no two of them touching (not even at a
corner), so the count is unambiguous.  Dots sit anywhere, so several may share one 2 x 2
patch: the model has to count across patches, not classify a shape.  The images are drawn
once from ``DATA_SEED`` (the split is fixed, as the digits' is); ``TEST_PER_CLASS`` test images
per class.  Pixel values are on the digits' [0, 1] scale and are normalised with the
pre-training data's statistics.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from . import Split
from .digits import normalisation

NAME = "counting"
DESCRIPTION = "dots counted, 1-5 (structured)"
COUNTS = (1, 2, 3, 4, 5)
CLASSES = len(COUNTS)
DATA_SEED = 1
TEST_PER_CLASS = 200
SIZE = 8


def render(count: int, rng: np.random.Generator) -> np.ndarray:
    """One ``SIZE x SIZE`` image holding ``count`` non-touching dots."""
    image = rng.uniform(0.0, 0.15, size=(SIZE, SIZE))
    free = np.ones((SIZE + 2, SIZE + 2), dtype=bool)  # padded: a dot blocks its 3 x 3 neighbourhood
    for _ in range(count):
        rows, cols = np.nonzero(free[1:-1, 1:-1])
        pick = rng.integers(len(rows))
        r, c = int(rows[pick]), int(cols[pick])
        image[r, c] = rng.uniform(0.55, 1.0)
        free[r : r + 3, c : c + 3] = False
    return image


@cache
def _stream(count: int, stream: int, n: int) -> torch.Tensor:
    """The first ``n`` images of ``count`` dots from one of two fixed generators (0: training and
    validation, 1: test), so a split's images do not change when another's size does."""
    rng = np.random.default_rng([DATA_SEED, count, stream])
    return torch.tensor(np.stack([render(count, rng) for _ in range(n)]), dtype=torch.float32).unsqueeze(1)


def adaptation_splits(shots_train: int, shots_val: int) -> dict[str, Split]:
    """``train`` / ``val`` / ``test``: per count, the first ``shots_train`` images of the first
    stream, its next ``shots_val``, and ``TEST_PER_CLASS`` of the second; labels are ``count - 1``."""
    mean, std = normalisation()
    parts: dict[str, list[tuple[torch.Tensor, int]]] = {"train": [], "val": [], "test": []}
    for label, count in enumerate(COUNTS):
        fit = _stream(count, 0, shots_train + shots_val)
        parts["train"].append((fit[:shots_train], label))
        parts["val"].append((fit[shots_train:], label))
        parts["test"].append((_stream(count, 1, TEST_PER_CLASS), label))
    return {k: Split((torch.cat([x for x, _ in v]) - mean) / std,
                     torch.cat([torch.full((len(x),), label, dtype=torch.int64) for x, label in v]))
            for k, v in parts.items()}
