"""An offline quick-start task: scikit-learn's handwritten digits shaped like VTAB-1k.

`sklearn.datasets.load_digits` ships 1797 grayscale 8 x 8 digits (values 0..16)
with scikit-learn, so this task needs no download. The images are scaled to
0..255 and tiled to 3 channels; the dataset preprocessing upscales them to the
model's image size like any other task. Splits are stratified and fixed by a
seed: train800, val200, train800val200 (their union) and test (the other 797).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from elalora_vit.data.datasets import ArraySource
from elalora_vit.data.folder import is_complete_task_dir, write_task_dir
from elalora_vit.data.tasks import check_split

DIGITS_SEED = 0


@dataclass(frozen=True)
class DigitsTask:
    """The digits quick-start task; stands in for a `VTabTask` where a task is needed."""

    name: str = "digits"
    group: str = "quickstart"
    num_classes: int = 10
    aliases: tuple[str, ...] = ()

    def prepare_hint(self, data_dir: str | Path) -> str:
        """The Python call that writes this task in the folder layout under `data_dir`."""
        return (
            "python -c \"from elalora_vit.data import write_digits_folder; "
            f"write_digits_folder('{data_dir}', task_name='{self.name}')\""
        )


DIGITS_TASK = DigitsTask()


@functools.lru_cache(maxsize=1)
def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits: uint8 images (N, 8, 8, 3) in 0..255, and int labels (N,)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return np.repeat(gray[:, :, :, None], 3, axis=3), digits.target.astype(np.int64)


@functools.lru_cache(maxsize=4)
def digits_split_indices(seed: int = DIGITS_SEED) -> dict[str, np.ndarray]:
    """Sorted example indices of each split, stratified by digit and fixed by `seed`."""
    from sklearn.model_selection import train_test_split

    _, labels = digits_arrays()
    indices = np.arange(len(labels))
    trainval, test = train_test_split(indices, train_size=1000, stratify=labels, random_state=seed)
    train, val = train_test_split(
        trainval, train_size=800, stratify=labels[trainval], random_state=seed
    )
    train, val, test = np.sort(train), np.sort(val), np.sort(test)
    return {"train800": train, "val200": val, "train800val200": np.concatenate([train, val]), "test": test}


def digits_source(split: str, seed: int = DIGITS_SEED) -> ArraySource:
    """One split of the digits task: items are (uint8 (8, 8, 3) image, int label)."""
    images, labels = digits_arrays()
    chosen = digits_split_indices(seed)[check_split(split)]
    return ArraySource(images[chosen], labels[chosen])


def write_digits_folder(
    root: str | Path, task_name: str = "digits", *, overwrite: bool = False, progress: bool = False
) -> Path:
    """Writes the digits task in the VTAB-1k folder layout under `root`; returns its folder.

    Images are saved as lossless PNG at their 8 x 8 size, so the folder loader
    sees exactly the pixels `digits_source` serves. An existing complete folder
    is kept unless `overwrite=True`.
    """
    folder = Path(root) / task_name
    if is_complete_task_dir(folder) and not overwrite:
        return folder
    sources = {split: digits_source(split) for split in ("train800", "val200", "test")}
    return write_task_dir(
        folder, sources, image_suffix=".png", save_options={"format": "PNG"},
        overwrite=overwrite, progress=progress,
    )
