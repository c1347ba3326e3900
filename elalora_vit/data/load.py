"""The entry point of the data package: `load_task_data`, the datasets of one task.

    data = load_task_data("cifar", data_dir="data/vtab-1k")
    train_loader = DataLoader(data.train, batch_size=64, shuffle=True)
    eval_loader = DataLoader(data.eval, batch_size=256, **loader_workers(data.eval, 4))  # TFDS-safe workers

Sources: "folder" reads the shared folder layout (see `folder`), "tfds" reads
prepared tensorflow-datasets data without TensorFlow, "digits" serves the
offline scikit-learn digits task.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch.utils.data import Dataset

from elalora_vit.data.cache import CachedDataset, cached_split
from elalora_vit.data.datasets import ImageSource, LazyDataset, TensorCacheDataset
from elalora_vit.data.digits import DIGITS_TASK, digits_source
from elalora_vit.data.errors import DataError
from elalora_vit.data.fingerprint import split_fingerprint
from elalora_vit.data.folder import folder_source
from elalora_vit.data.tasks import TaskLike, check_split, get_task
from elalora_vit.storage.lock import LockUnavailable
from elalora_vit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, Preprocess

SOURCES = ("folder", "tfds", "digits")
"""Where images come from: the folder layout, prepared TFDS data, or the offline digits."""


@dataclass
class TaskData:
    """The datasets of one task, ready for DataLoaders.

    `train` and `eval` yield (float tensor (3, image_size, image_size), int label).
    """

    train: Dataset
    eval: Dataset
    num_classes: int
    task: TaskLike
    source: str
    train_split: str = "train800val200"
    eval_split: str = "test"


def load_task_data(
    task: str | TaskLike,
    *,
    source: str = "folder",
    data_dir: str | Path = "data/vtab-1k",
    tfds_dir: str | Path | None = None,
    train_split: str = "train800val200",
    eval_split: str = "test",
    image_size: int = 224,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    interpolation: str = "bicubic",
    cache_train: bool = True,
    progress: bool = True,
    cache_dir: str | Path | None = None,
) -> TaskData:
    """Training and evaluation datasets of `task`, preprocessed per the VTAB-1k protocol.

    `task` is a name (or alias), or a task `resolve_task` already returned.
    Images are resized to image_size x image_size (`interpolation`, bicubic by
    default; aspect ratio not kept) and normalised with `mean` / `std`; there is
    no augmentation. With `cache_train`, the training images are decoded and
    resized once and kept in memory as uint8 (`TensorCacheDataset`); the
    evaluation set is always decoded per item (`LazyDataset`), so use
    DataLoader workers for it.

    With `cache_dir`, both splits come from the decoded-image cache there
    (`data.cache`): decoded and resized once, by whichever process gets there
    first, then read memory-mapped by every later run (`cache_train` is then moot).

    `source` is "folder" (`<data_dir>/<task>/<split>.txt`), "tfds" (prepared
    TFDS data in `tfds_dir`) or "digits" (offline, task "digits", ignores
    `data_dir`). The folder source also accepts task "digits" for a folder
    written by `write_digits_folder`.
    """
    resolved = resolve_task(task, source)
    check_split(train_split)
    check_split(eval_split)
    preprocess = Preprocess(image_size, tuple(mean), tuple(std), interpolation)
    # Open the evaluation split first: its errors surface before the slow caching.
    eval_images = open_source(resolved, eval_split, source, data_dir, tfds_dir)
    if hasattr(eval_images, "check_files"):  # folder images: each one looked at now, not after training
        eval_images.check_files()
    train_images = open_source(resolved, train_split, source, data_dir, tfds_dir)
    if cache_dir is not None:
        try:
            train_cached, eval_cached = (
                cached_split(images, preprocess, task=resolved.name, split=split, cache_dir=cache_dir,
                             progress=progress, fingerprint=split_fingerprint(resolved, split, source, data_dir, tfds_dir))
                for images, split in ((train_images, train_split), (eval_images, eval_split))
            )
        except LockUnavailable as err:  # a read-only or lock-less cache folder: decode per access instead
            warnings.warn(f"the image cache is not usable ({err}); decoding images per access instead. Set "
                          "data.cache_dir (or $ELALORA_VIT_CACHE) to a writable folder, or data.cache: false",
                          stacklevel=2)
            cache_dir = None
    if cache_dir is not None:
        train = CachedDataset(train_cached, preprocess)
        train = TensorCacheDataset.from_pixels(train.pixels(), torch.from_numpy(train_cached.labels), preprocess)
        return TaskData(train=train, eval=CachedDataset(eval_cached, preprocess), num_classes=resolved.num_classes,
                        task=resolved, source=source, train_split=train_split, eval_split=eval_split)
    if cache_train:
        description = f"caching {resolved.name} {train_split}"
        train = TensorCacheDataset(train_images, preprocess, progress=progress, description=description)
    else:
        train = LazyDataset(train_images, preprocess)
    return TaskData(
        train=train,
        eval=LazyDataset(eval_images, preprocess),
        num_classes=resolved.num_classes,
        task=resolved,
        source=source,
        train_split=train_split,
        eval_split=eval_split,
    )


def resolve_task(task: str | TaskLike, source: str = "folder") -> TaskLike:
    """The task `task` refers to for `source` (a VTAB task, or the digits task).

    A task object (from an earlier call) is returned as it is, once checked
    against `source`, so that a caller resolves the name once.
    """
    if source not in SOURCES:
        raise DataError(f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)}.")
    given = not isinstance(task, str) and hasattr(task, "num_classes")  # resolved before
    name = task.name if given else task
    is_digits = isinstance(name, str) and name.strip().lower() == DIGITS_TASK.name
    if source == "digits" and not is_digits:
        raise DataError(
            f"source 'digits' serves only the task 'digits', not {name!r}; "
            "use source='folder' or 'tfds' for VTAB tasks."
        )
    if is_digits and source == "tfds":
        raise DataError("task 'digits' has no TFDS builder; use source='digits' or 'folder'.")
    if given:
        return task
    return DIGITS_TASK if is_digits else get_task(name)


def open_source(
    task: TaskLike, split: str, source: str, data_dir: str | Path, tfds_dir: str | Path | None
) -> ImageSource:
    """The image source of one split: a sequence of (image, int label)."""
    if source == "digits":
        return digits_source(split)
    if source == "tfds":
        from elalora_vit.data.tfds_source import TfdsSource

        return TfdsSource(task, split, tfds_dir)
    return folder_source(data_dir, task, split)
