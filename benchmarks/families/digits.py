"""Digit identity: scikit-learn's bundled handwritten digits (8 x 8 grayscale).

Pre-training sees digits 0-4 (all their images but a 10% hold-out); adaptation learns the
disjoint digits 5-9 (relabelled 0-4) from ``shots_train`` labelled images per class, is
validated on the next ``shots_val`` and tested on every other image of 5-9.  The split is
fixed (``DATA_SEED``); seeds change only the initialisation and the batch order.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from . import Split

NAME = "digits"
DESCRIPTION = "digits 5-9 (identity)"
PRETRAIN_CLASSES = (0, 1, 2, 3, 4)
ADAPT_CLASSES = (5, 6, 7, 8, 9)
CLASSES = len(ADAPT_CLASSES)
DATA_SEED = 0


@cache
def _images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    return images, torch.tensor(digits.target, dtype=torch.int64)


@cache
def _index(shots_train: int, shots_val: int) -> dict[str, tuple[int, ...]]:
    labels = _images()[1].numpy()
    rng = np.random.default_rng(DATA_SEED)
    index: dict[str, list[int]] = {k: [] for k in ("pretrain", "pretrain_holdout", "train", "val", "test")}
    for c in range(10):
        members = rng.permutation(np.flatnonzero(labels == c)).tolist()
        if c in PRETRAIN_CLASSES:
            cut = len(members) // 10
            index["pretrain_holdout"] += members[:cut]
            index["pretrain"] += members[cut:]
        else:
            index["train"] += members[:shots_train]
            index["val"] += members[shots_train : shots_train + shots_val]
            index["test"] += members[shots_train + shots_val :]
    return {k: tuple(v) for k, v in index.items()}


def normalisation() -> tuple[float, float]:
    """Mean and std of the pre-training images (the backbone's preprocessing); the pre-training
    split does not depend on the shots, so any shots give it."""
    pre = _images()[0][list(_index(0, 0)["pretrain"])]
    return float(pre.mean()), float(pre.std())


def _splits(names: tuple[str, ...], shots_train: int, shots_val: int) -> dict[str, Split]:
    images, labels = _images()
    mean, std = normalisation()
    relabel = torch.full((10,), -1, dtype=torch.int64)
    for classes in (PRETRAIN_CLASSES, ADAPT_CLASSES):
        relabel[list(classes)] = torch.arange(len(classes))
    index = _index(shots_train, shots_val)
    return {k: Split((images[list(index[k])] - mean) / std, relabel[labels[list(index[k])]]) for k in names}


def pretraining_splits() -> dict[str, Split]:
    """``pretrain`` and ``pretrain_holdout``: digits 0-4, labels 0-4."""
    return _splits(("pretrain", "pretrain_holdout"), 0, 0)


def adaptation_splits(shots_train: int, shots_val: int) -> dict[str, Split]:
    """``train`` / ``val`` / ``test``: digits 5-9, relabelled 0-4."""
    return _splits(("train", "val", "test"), shots_train, shots_val)
