"""VTAB-1k splits read straight from prepared tensorflow-datasets data, without TensorFlow.

`tfds.data_source` gives random access to the array_record files of a prepared
dataset, whatever format its dataset_info names first (a TFRecord build
converted in place by `tfds convert_format` lists array_record as an
alternative); this module applies the VTAB split strings and label rules to it.
Images are decoded here, not by TFDS, so every PIL mode becomes RGB.
Preparing the TFDS data itself (`download_and_prepare`, `tfds build`) needs
TensorFlow and importlib_resources, and internet access; resisc45 and
diabetic_retinopathy need files downloaded by hand first.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from elalora_vit.data.errors import DataError, MissingDataError
from elalora_vit.data.images import rgb_array
from elalora_vit.data.labels import label_rule
from elalora_vit.data.tasks import VTabTask

MANUAL_DOWNLOAD_TASKS = ("resisc45", "diabetic_retinopathy")

# What `download_and_prepare` of the VTAB builders imports beyond tensorflow-datasets
# (checked with tensorflow-datasets 4.9.10 in a fresh venv; tensorflow does not pull in
# importlib_resources).
PREPARE_PACKAGES = "tensorflow importlib_resources"
# What `tfds convert_format` imports (checked the same way). Every `tfds` command,
# `tfds build` too, imports apache-beam and mlcroissant when it starts.
CONVERT_PACKAGES = "tensorflow apache-beam mlcroissant"
TFDS_CLI_PACKAGES = "apache-beam mlcroissant"

# Imported once by the forkserver rather than by every worker of every evaluation
# (seconds each); none of them opens an array_record reader on import.
WORKER_PRELOAD = ["torch", "tensorflow_datasets", "elalora_vit.data.datasets", "elalora_vit.data.tfds_source"]


def worker_context() -> multiprocessing.context.BaseContext:
    """The start method for DataLoader workers reading TFDS data: forkserver (spawn where absent).

    array_record's reader uses a process-wide thread pool: a worker forked after its
    parent read a record dies (SIGSEGV) on its first read, even through a reader it
    opened itself. Workers forked from a fresh server process are safe.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(WORKER_PRELOAD)
    return context


def open_tfds_split(
    task: VTabTask, split: str, tfds_dir: str | Path | None = None, *, download: bool = False
) -> Sequence[dict[str, Any]]:
    """Random-access examples of one VTAB split of `task` (a dict of arrays each).

    The image feature is left encoded (bytes); `images.rgb_array` decodes it.
    `tfds_dir` is the TFDS data_dir (None: TFDS's default, ~/tensorflow_datasets).
    With `download=True`, TFDS first downloads and prepares the dataset, which
    needs TensorFlow, importlib_resources and internet access.
    """
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(
            task.tfds_name,
            split=task.tfds_split(split),
            data_dir=None if tfds_dir is None else str(tfds_dir),
            download=download,
            decoders={"image": tfds.decode.SkipDecoding()},
        )
    except ImportError as err:
        if not download:
            raise DataError(
                f"reading TFDS data for task {task.name!r} needs a package that is not "
                f"installed ({err}); install it (array_record reads the files), then retry."
            ) from err
        raise DataError(
            f"preparing TFDS dataset {task.tfds_name} for task {task.name!r} needs a package "
            f"that is not installed ({err}). TFDS's download_and_prepare needs TensorFlow and "
            f"importlib_resources: pip install {PREPARE_PACKAGES}, then retry.\n"
            + how_to_prepare(task, tfds_dir)
        ) from err
    except (KeyError, FileNotFoundError, NotImplementedError, ValueError, AssertionError) as err:
        raise unreadable_split_error(task, split, tfds_dir, err) from err


def unreadable_split_error(
    task: VTabTask, split: str, tfds_dir: str | Path | None, err: Exception
) -> MissingDataError:
    """Why a split of `task` cannot be read (not prepared, TFRecord only, too few examples)."""
    import tensorflow_datasets as tfds

    split_string = task.tfds_split(split)
    try:
        builder = tfds.builder(task.tfds_name, data_dir=None if tfds_dir is None else str(tfds_dir))
        prepared = builder.is_prepared()
    except Exception:  # whatever stops TFDS here, the data is not usable
        prepared = False
    if not prepared:
        return MissingDataError(
            f"TFDS data for task {task.name!r} ({task.tfds_name}, split {split_string!r}) "
            f"is not prepared in {tfds_dir or 'the default TFDS data_dir'}.\n"
            + how_to_prepare(task, tfds_dir)
        )
    formats = sorted(str(fmt.value) for fmt in builder.info.available_file_formats())
    if "array_record" not in formats:
        return MissingDataError(
            f"TFDS data for task {task.name!r} in {builder.data_dir} is in {', '.join(formats)} "
            "files only; elalora-vit reads array_record files (random access, no TensorFlow). "
            f"Convert it in place (needs pip install {CONVERT_PACKAGES}):\n"
            f"    tfds convert_format --dataset_version_dir={builder.data_dir} "
            "--out_file_format=array_record"
        )
    if "incompatible with" not in str(err):  # TFDS's words for a slice beyond a split's end
        return MissingDataError(
            f"TFDS data for task {task.name!r} in {builder.data_dir} cannot be read as split "
            f"{split_string!r} ({type(err).__name__}: {err}).\n" + how_to_prepare(task, tfds_dir)
        )
    sizes = ", ".join(f"{name} {info.num_examples}" for name, info in builder.info.splits.items())
    return MissingDataError(
        f"TFDS data for task {task.name!r} in {builder.data_dir} is incomplete: the VTAB split "
        f"{split!r} needs the examples {split_string!r}, but the prepared splits hold {sizes} "
        f"examples (TFDS says: {err}). Prepare the full dataset again, replacing this one "
        f"(needs internet access and pip install {PREPARE_PACKAGES} {TFDS_CLI_PACKAGES}):\n"
        f"    tfds build {task.tfds_builder} --file_format=array_record --overwrite"
        f"{f' --data_dir={tfds_dir}' if tfds_dir else ''}"
    )


def how_to_prepare(task: VTabTask, tfds_dir: str | Path | None) -> str:
    """Instructions for getting `task` ready to read through TFDS."""
    tfds_dir_flag = f" --tfds-dir {tfds_dir}" if tfds_dir else ""
    data_dir_flag = f" --data_dir={tfds_dir}" if tfds_dir else ""
    text = (
        f"To prepare it (needs internet access and pip install {PREPARE_PACKAGES}), run\n"
        f"    elalora-vit prepare-vtab --tasks {task.name} --download{tfds_dir_flag}\n"
        "which also writes the folder layout, or TFDS's own command "
        f"(also needs pip install {TFDS_CLI_PACKAGES})\n"
        f"    tfds build {task.tfds_builder} --file_format=array_record{data_dir_flag}"
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
    DataLoader workers must not be forked from a process that has read it
    (array_record crashes there); `multiprocessing_context` is a start method
    that is safe, see `datasets.loader_workers`.
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
        return self.image(example, index), self.label(example, index)

    @property
    def examples(self) -> Sequence[dict[str, Any]]:
        """The TFDS data source, opened again after unpickling."""
        if self._examples is None:
            self._examples = open_tfds_split(self.task, self.split, self.tfds_dir)
        return self._examples

    @property
    def multiprocessing_context(self) -> multiprocessing.context.BaseContext:
        """How DataLoader workers reading this source must start (`worker_context`)."""
        return worker_context()

    def where(self, index: int) -> str:
        """Names example `index` in error messages."""
        return f"task {self.task.name!r}, split {self.split!r}, example {index}"

    def image(self, example: dict[str, Any], index: int) -> np.ndarray:
        """The uint8 (H, W, 3) RGB image of `example`, whatever its mode and encoding."""
        try:
            return rgb_array(example["image"], self.task.pixel_scale)
        except DataError as err:
            raise DataError(f"{self.where(index)} of {self.tfds_dir or 'TFDS'}: {err}") from err

    def label(self, example: dict[str, Any], index: int) -> int:
        """The task label of `example`, checked against the number of classes."""
        where = self.where(index)
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
