"""Data for VTAB-1k fine-tuning: task registry, sources, preprocessing, datasets.

The training loop needs one call, `load_task_data` (in `load`)::

    data = load_task_data("cifar", data_dir="data/vtab-1k")
    train_loader = DataLoader(data.train, batch_size=64, shuffle=True)
    eval_loader = DataLoader(data.eval, batch_size=256, **loader_workers(data.eval, 4))  # TFDS-safe workers

- `tasks`: the 19 VTAB-1k tasks, their groups and the task-selection grammar;
- `load`: `load_task_data`, `resolve_task` and the `SOURCES` images come from;
- `folder`, `tfds_source`, `digits`: the three sources; `prepare`: writing TFDS
  data into the folder layout;
- `transforms`, `datasets`, `labels`: preprocessing, datasets, VTAB label rules.
"""

from __future__ import annotations

from elalora_vit.data.datasets import ArraySource, ImageSource, LazyDataset, TensorCacheDataset, loader_workers
from elalora_vit.data.digits import DIGITS_TASK, DigitsTask, digits_source, write_digits_folder
from elalora_vit.data.errors import DataError, MissingDataError, UnknownSplitError, UnknownTaskError
from elalora_vit.data.folder import folder_source
from elalora_vit.data.load import SOURCES, TaskData, load_task_data, open_source, resolve_task
from elalora_vit.data.tasks import (
    GROUPS,
    SPLITS,
    TASKS,
    TaskLike,
    VTabTask,
    check_split,
    get_task,
    parse_task_list,
    selected_tasks,
    task_names,
)
from elalora_vit.data.transforms import IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocess

__all__ = [
    "DIGITS_TASK", "GROUPS", "IMAGENET_MEAN", "IMAGENET_STD", "INTERPOLATIONS", "SOURCES", "SPLITS", "TASKS",
    "ArraySource", "DataError", "DigitsTask", "LazyDataset", "MissingDataError", "Preprocess",
    "TaskData", "TensorCacheDataset", "UnknownSplitError", "UnknownTaskError", "VTabTask",
    "get_task", "load_task_data", "loader_workers", "parse_task_list", "prepare_vtab", "resolve_task",
    "selected_tasks", "task_names",
    "write_digits_folder",
]


def __getattr__(name: str):
    # prepare_vtab is imported on first use: it brings in the TFDS source, which
    # loading folder data or planning a sweep does not need.
    if name == "prepare_vtab":
        from elalora_vit.data.prepare import prepare_vtab

        return prepare_vtab
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
