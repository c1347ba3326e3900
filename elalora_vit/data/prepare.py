"""Writing VTAB-1k tasks from tensorflow-datasets into the shared folder layout.

Reading goes through `tfds.data_source` (array_record, no TensorFlow needed);
only `download=True`, which runs TFDS's `download_and_prepare`, needs TensorFlow.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

from elalora_vit.data.folder import is_complete_task_dir, write_task_dir
from elalora_vit.data.tasks import VTabTask, selected_tasks
from elalora_vit.data.tfds_source import TfdsSource

logger = logging.getLogger(__name__)


def prepare_vtab(
    tasks: str | Iterable[str],
    data_dir: str | Path,
    tfds_dir: str | Path | None = None,
    *,
    download: bool = False,
    overwrite: bool = False,
    jpeg_quality: int = 95,
    progress: bool = True,
) -> list[Path]:
    """Writes VTAB-1k tasks in the folder layout under `data_dir`; returns their folders.

    `tasks` is a task name, a group name ("natural", "specialized",
    "structured"), "all", a string of those separated by spaces or commas, or a
    list of them (see `parse_task_list`).
    The TFDS data must already be prepared in `tfds_dir` as array_record files,
    unless `download=True` (which needs TensorFlow and internet access). Images
    are saved as JPEG under `<task>/images/<split>/`. A task whose folder already
    holds the four list files is skipped, and any other existing folder is an
    error, unless `overwrite=True`. A task is written into a staging folder and
    renamed into place only when complete.
    """
    folders = []
    for task in selected_tasks(tasks):
        folder = Path(data_dir) / task.name
        if is_complete_task_dir(folder) and not overwrite:
            logger.info("%s is already prepared in %s; skipping it.", task.name, folder)
        else:
            write_task_from_tfds(task, folder, tfds_dir, download, overwrite, jpeg_quality, progress)
        write_class_names(task, folder, tfds_dir)
        folders.append(folder)
    return folders


def write_task_from_tfds(
    task: VTabTask,
    folder: Path,
    tfds_dir: str | Path | None,
    download: bool,
    overwrite: bool,
    jpeg_quality: int,
    progress: bool,
) -> Path:
    """Writes one task's train800, val200 and test images from TFDS into `folder`."""
    sources = {
        split: TfdsSource(task, split, tfds_dir, download=download)
        for split in ("train800", "val200", "test")
    }
    return write_task_dir(
        folder,
        sources,
        image_suffix=".jpg",
        save_options={"format": "JPEG", "quality": jpeg_quality},
        overwrite=overwrite,
        progress=progress,
    )


CLASS_NAMES_FILE = "classes.txt"


def write_class_names(task: VTabTask, folder: Path, tfds_dir: str | Path | None) -> Path | None:
    """Writes `<folder>/classes.txt`, one class name per line in label order, when TFDS
    names the task's classes (tasks labelled by TFDS's own "label"); `predict` shows them."""
    names = tfds_class_names(task, tfds_dir)
    if names is None:
        return None
    # Written whole or not at all (the data package does not use core's writer).
    path, tmp = folder / CLASS_NAMES_FILE, folder / f".{CLASS_NAMES_FILE}.tmp"
    tmp.write_text("\n".join(names) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def tfds_class_names(task: VTabTask, tfds_dir: str | Path | None) -> list[str] | None:
    """The TFDS label names of `task`, or None when its labels are derived (counts, bins, ...)
    or TFDS does not know them."""
    if task.label_rule != "label":
        return None
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(task.tfds_name, data_dir=None if tfds_dir is None else str(tfds_dir))
        names = list(builder.info.features["label"].names)
    except Exception as err:  # unknown builder, version or feature: names are a nicety
        logger.info("no class names for %s from TFDS (%s)", task.name, err)
        return None
    if len(names) != task.num_classes or names == [str(i) for i in range(task.num_classes)]:
        return None  # indices are what predict shows anyway
    return names
