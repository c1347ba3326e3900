"""The VTAB-1k folder layout shared by the PEFT code bases: reading and writing it.

    <root>/<task>/train800.txt
    <root>/<task>/val200.txt
    <root>/<task>/train800val200.txt
    <root>/<task>/test.txt
    <root>/<task>/images/<split>/000123.jpg

Each list line is `<relative image path> <integer label>`, the path relative to
`<root>/<task>`. Blank lines and surrounding whitespace are ignored; the label is
the last field, so image paths may contain spaces.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from elalora_vit.data.errors import DataError, MissingDataError
from elalora_vit.data.images import rgb_from_pil
from elalora_vit.data.tasks import SPLITS, TaskLike, check_split

_LABEL = re.compile(r"[+-]?\d+")


@dataclass(frozen=True)
class ImageEntry:
    """One list line: the image file and its label."""

    path: Path
    label: int


class FolderSource:
    """Images of one split of a task folder, decoded on access.

    Items are (PIL RGB image, int label); images of any mode become RGB.
    Picklable (it holds only paths), so DataLoader workers can share the
    decoding. `where` (e.g. "task 'dtd', split 'test'") prefixes decoding errors.
    """

    def __init__(self, entries: Sequence[ImageEntry], where: str = ""):
        self.entries = list(entries)
        self.where = where

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> tuple[Image.Image, int]:
        entry = self.entries[index]
        try:
            return load_rgb_image(entry.path), entry.label
        except DataError as err:
            if not self.where:
                raise
            raise DataError(f"{self.where}, image {index}: {err}") from err

    def check_files(self) -> None:
        """A cheap look at every image (not empty, a header that decodes), so that a bad
        evaluation image stops a run before training rather than after it."""
        for entry in self.entries:
            check_image_file(entry.path)


def folder_source(root: str | Path, task: TaskLike, split: str) -> FolderSource:
    """The split `split` of `task` under `root`, checked line by line."""
    return FolderSource(read_split_list(root, task, split), f"task {task.name!r}, split {split!r}")


def expected_layout(root: str | Path, task: TaskLike) -> str:
    """A message showing the folder layout for `task` and how to create it."""
    task_dir = Path(root) / task.name
    lists = "\n".join(f"    {task_dir / f'{split}.txt'}" for split in SPLITS)
    return (
        f"Expected the VTAB-1k folder layout:\n{lists}\n"
        f"    {task_dir / 'images' / '<split>' / '000123.jpg'}\n"
        "with one '<relative image path> <integer label>' per list line.\n"
        f"To create it, run:\n    {task.prepare_hint(root)}"
    )


def task_dir(root: str | Path, task: TaskLike) -> Path:
    """The folder of `task` under `root`: its name, else the first alias present."""
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(
            f"data folder {root} does not exist (looked for task {task.name!r}).\n"
            + expected_layout(root, task)
        )
    for name in (task.name, *task.aliases):
        if (root / name).is_dir():
            return root / name
    tried = ", ".join(str(root / name) for name in (task.name, *task.aliases))
    raise MissingDataError(
        f"no folder for task {task.name!r} in {root} (tried {tried}).\n" + expected_layout(root, task)
    )


def read_split_list(root: str | Path, task: TaskLike, split: str) -> list[ImageEntry]:
    """The checked entries of `<root>/<task>/<split>.txt`.

    Every image must lie inside the task folder and exist; every label must be in
    [0, task.num_classes). Raises `DataError` naming the file and line otherwise.
    """
    check_split(split)
    folder = task_dir(root, task)
    list_path = folder / f"{split}.txt"
    if not list_path.is_file():
        raise MissingDataError(
            f"list file {list_path} is missing for split {split!r} of task {task.name!r}.\n"
            + expected_layout(root, task)
        )
    entries = [
        entry
        for line_number, line in enumerate(list_lines(list_path), start=1)
        if (entry := parse_list_line(line, list_path, line_number, folder, task.num_classes))
    ]
    if not entries:
        raise DataError(f"list file {list_path} has no entries; it should list the {split} images.")
    return entries


def list_lines(list_path: Path) -> list[str]:
    """The lines of a list file, as text: UTF-8, a leading byte-order mark (as Windows editors
    write) dropped; a byte that is not UTF-8 or a NUL byte is an error naming its line."""
    try:
        data = list_path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read list file {list_path}: {err}.") from err
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataError(f"{list_path}, line {line}: byte 0x{data[err.start]:02x} is not UTF-8; "
                        "list files are UTF-8 text.") from None
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if "\x00" in line:
            raise DataError(f"{list_path}, line {number}: holds a NUL byte; list files are text, "
                            "one '<relative image path> <integer label>' a line.")
    return lines


def parse_list_line(
    line: str, list_path: Path, line_number: int, folder: Path, num_classes: int
) -> ImageEntry | None:
    """The entry on one list line, or None for a blank line."""
    where = f"{list_path}, line {line_number}"
    text = line.strip()
    if not text:
        return None
    fields = text.rsplit(maxsplit=1)
    if len(fields) != 2 or not _LABEL.fullmatch(fields[1]):
        raise DataError(
            f"{where}: malformed line {line!r}; expected '<relative image path> <integer label>', "
            "e.g. 'images/train800/000000.jpg 3'."
        )
    label = int(fields[1])
    if not 0 <= label < num_classes:
        raise DataError(
            f"{where}: label {label} is out of range; labels must be in [0, {num_classes}) "
            f"({num_classes} classes); is this list file meant for another task?"
        )
    return ImageEntry(image_path(fields[0], folder, where), label)


def image_path(relative: str, folder: Path, where: str) -> Path:
    """The image file `relative` names, which must exist inside `folder`."""
    if Path(relative).is_absolute():
        raise DataError(
            f"{where}: image path {relative!r} is absolute; paths must be relative to {folder}."
        )
    path = (folder / relative).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise DataError(
            f"{where}: image path {relative!r} resolves to {path}, outside the task folder "
            f"{folder}; list files may only name images inside their task folder."
        )
    if not path.is_file():
        raise DataError(f"{where}: image {path} does not exist.")
    return path


def check_image_file(path: Path) -> None:
    """`DataError` naming `path` if it is empty or its header does not decode; the pixels
    are not decoded (that happens when the image is used)."""
    _check_not_empty(path)
    try:
        with Image.open(path) as image:
            image.size  # noqa: B018 -- parsing the header is the check
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot decode image {path}: {err}. The file is unreadable or corrupt; re-create the task folder."
        ) from err


def _check_not_empty(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as err:
        raise DataError(f"cannot read image {path}: {err}.") from err
    if size == 0:
        raise DataError(f"image {path} is empty (0 bytes); re-create the task folder.")


def load_rgb_image(path: Path) -> Image.Image:
    """The decoded image at `path`, in RGB whatever its mode; `DataError` naming it if unusable."""
    _check_not_empty(path)
    try:
        with Image.open(path) as image:
            return rgb_from_pil(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(
            f"cannot decode image {path}: {err}. The file is unreadable or corrupt; "
            "re-create the task folder."
        ) from err


def is_complete_task_dir(folder: Path) -> bool:
    """Whether `folder` holds all four list files."""
    return all((folder / f"{split}.txt").is_file() for split in SPLITS)


def write_task_dir(
    folder: str | Path,
    sources: Mapping[str, Sequence[tuple[Any, int]]],
    *,
    image_suffix: str = ".jpg",
    save_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Writes one task in the folder layout and returns its folder.

    `sources` maps "train800", "val200" and "test" to sequences of
    (uint8 (H, W, 3) array or PIL image, label). train800val200.txt lists the
    train800 images then the val200 images. The task is written into a hidden
    staging folder next to `folder` and renamed into place at the end, so an
    interrupted run never leaves a folder that looks complete.
    """
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise DataError(
            f"{folder} already exists; pass overwrite=True to replace it, or move it away."
        )
    missing = {"train800", "val200", "test"} - set(sources)
    if missing:
        raise DataError(f"cannot write {folder}: no source for split(s) {', '.join(sorted(missing))}.")
    with staging_dir(folder) as staging:
        lists = {
            split: write_split_images(
                sources[split], staging, split, image_suffix, save_options or {}, progress,
                description=f"{folder.name} {split}",
            )
            for split in ("train800", "val200", "test")
        }
        lists["train800val200"] = lists["train800"] + lists["val200"]
        for split in SPLITS:
            write_split_list(staging / f"{split}.txt", lists[split])
    return folder


def write_split_images(
    source: Sequence[tuple[Any, int]],
    folder: Path,
    split: str,
    image_suffix: str,
    save_options: Mapping[str, Any],
    progress: bool,
    description: str,
) -> list[tuple[str, int]]:
    """Saves the images of one split as images/<split>/000123<suffix>; returns (path, label) lines."""
    image_dir = folder / "images" / split
    image_dir.mkdir(parents=True)
    lines = []
    for index in tqdm(range(len(source)), desc=description, disable=not progress):
        image, label = source[index]
        relative = f"images/{split}/{index:06d}{image_suffix}"
        as_pil(image).save(folder / relative, **save_options)
        lines.append((relative, int(label)))
    return lines


def write_split_list(path: Path, lines: Sequence[tuple[str, int]]) -> None:
    """Writes a list file: one '<relative image path> <integer label>' per line."""
    path.write_text("".join(f"{relative} {label}\n" for relative, label in lines), encoding="utf-8")


def as_pil(image: Any) -> Image.Image:
    """A PIL RGB image from a PIL image (any mode) or a uint8 (H, W, 3) array."""
    if isinstance(image, Image.Image):
        return rgb_from_pil(image)
    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")


@contextlib.contextmanager
def staging_dir(target: Path) -> Iterator[Path]:
    """A hidden folder next to `target` that replaces `target` if the block succeeds.

    If the block raises, the staging folder is deleted and `target` is untouched.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        replace_dir(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_dir(new: Path, target: Path) -> None:
    """Moves folder `new` to `target`, replacing what was there."""
    if not target.exists():
        new.rename(target)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
    old.rmdir()
    target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)
