"""VTAB-1k splits read straight from prepared tensorflow-datasets data, without TensorFlow.

`tfds.data_source` gives random access to the array_record files of a prepared
dataset; this module applies the VTAB split strings and label rules to it.
Preparing the TFDS data itself (`download_and_prepare`, `tfds build`) needs
TensorFlow and internet access, and resisc45 and diabetic_retinopathy need files
downloaded by hand first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from elalora_vit.data.errors import DataError, MissingDataError
from elalora_vit.data.labels import label_rule, rgb_image
from elalora_vit.data.tasks import VTabTask

MANUAL_DOWNLOAD_TASKS = ("resisc45", "diabetic_retinopathy")


def open_tfds_split(
    task: VTabTask, split: str, tfds_dir: str | Path | None = None, *, download: bool = False
) -> Sequence[dict[str, Any]]:
    """Random-access decoded examples of one VTAB split of `task` (a dict of arrays each).

    `tfds_dir` is the TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets).
    With `download=True`, TFDS first downloads and prepares the dataset, which
    needs TensorFlow and internet access.
    """
    import tensorflow_datasets as tfds

    split_string = task.tfds_split(split)
    try:
        return tfds.data_source(
            task.tfds_name,
            split=split_string,
            data_dir=None if tfds_dir is None else str(tfds_dir),
            download=download,
            builder_kwargs={"file_format": "array_record"},
        )
    except ImportError as err:
        raise DataError(
            f"preparing TFDS dataset {task.tfds_name} for task {task.name!r} needs a package "
            f"that is not installed ({err}). `download_and_prepare` needs TensorFlow: "
            "pip install tensorflow, then retry.\n" + how_to_prepare(task, tfds_dir)
        ) from err
    except (KeyError, FileNotFoundError, NotImplementedError, ValueError, AssertionError) as err:
        raise MissingDataError(
            f"TFDS data for task {task.name!r} ({task.tfds_name}, split {split_string!r}) "
            f"is not prepared in {tfds_dir or 'the default TFDS data_dir'} "
            f"as array_record files ({type(err).__name__}: {err}).\n" + how_to_prepare(task, tfds_dir)
        ) from err


def how_to_prepare(task: VTabTask, tfds_dir: str | Path | None) -> str:
    """Instructions for getting `task` ready to read through TFDS."""
    data_dir_flag = f" --data_dir={tfds_dir}" if tfds_dir else ""
    text = (
        "To prepare it, run (needs TensorFlow, pip install tensorflow, and internet access)\n"
        f"    tfds build {task.tfds_builder} --file_format=array_record{data_dir_flag}\n"
        "or call elalora_vit.data.prepare_vtab("
        f"[{task.name!r}], data_dir, tfds_dir={str(tfds_dir) if tfds_dir else None!r}, download=True), "
        "which also writes the folder layout."
    )
    if task.name in MANUAL_DOWNLOAD_TASKS:
        text += (
            f"\n{task.name} also needs its source files downloaded by hand into the TFDS "
            "manual_dir (<data_dir>/downloads/manual); see the TFDS catalogue page of "
            f"{task.tfds_builder.split('/')[0]}."
        )
    return text


class TfdsSource:
    """One VTAB split of a task, read from prepared TFDS data.

    Items are (uint8 (H, W, 3) image, int label), with the task's image and
    label rules applied. Picklable: a worker process reopens the data source.
    """

    def __init__(
        self, task: VTabTask, split: str, tfds_dir: str | Path | None = None, *, download: bool = False
    ):
        self.task = task
        self.split = split
        self.tfds_dir = tfds_dir
        self._examples = open_tfds_split(task, split, tfds_dir, download=download)
        self._length = len(self._examples)
        self._label = label_rule(task.label_rule)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        if not -self._length <= index < self._length:
            raise IndexError(f"index {index} out of range for {self._length} examples")
        example = self.examples[index]
        return rgb_image(example["image"], self.task.pixel_scale), self.label(example, index)

    @property
    def examples(self) -> Sequence[dict[str, Any]]:
        """The TFDS data source, opened again after unpickling."""
        if self._examples is None:
            self._examples = open_tfds_split(self.task, self.split, self.tfds_dir)
        return self._examples

    def label(self, example: dict[str, Any], index: int) -> int:
        """The task label of `example`, checked against the number of classes."""
        where = f"task {self.task.name!r}, split {self.split!r}, example {index}"
        try:
            label = self._label(example)
        except (DataError, KeyError) as err:
            raise DataError(f"{where}: label rule {self.task.label_rule!r} failed: {err}") from err
        if not 0 <= label < self.task.num_classes:
            raise DataError(
                f"{where}: rule {self.task.label_rule!r} gave label {label}, "
                f"outside [0, {self.task.num_classes})."
            )
        return label

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_examples"] = None
        return state
