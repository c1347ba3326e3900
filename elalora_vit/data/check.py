"""Checking prepared VTAB-1k data against the benchmark's definition (``elalora-vit check-data``).

Per task:

- every split's size: 800 / 200 / 1000 / the task's test size;
- train800val200 is train800 followed by val200;
- no list names the same image twice;
- labels are in range, and every class is present in train800val200;
- (full check) every image decodes, and no test image is byte-identical to a training image;
- the SHA-256 of each list file, to compare folders between machines.

Problems are of three kinds: ``broken`` (the data cannot be read as it says: a
malformed or duplicated line, a missing image, an inconsistent union),
``nonstandard`` (readable, but not VTAB-1k: a wrong count, a missing class) and
``missing`` (no task folder or list file: not prepared yet). ``check-data``
fails on any; the fast pre-flight of ``vtab-sweep`` and ``vtab-tune`` refuses
broken data and warns about the others (a deliberately smaller experiment may
use nonstandard data; the runs of a task not prepared fail and are recorded,
as runs that fail are).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from elalora_vit.data.errors import DataError
from elalora_vit.data.fingerprint import file_sha256
from elalora_vit.data.folder import ImageEntry, list_lines, load_rgb_image, parse_list_line, task_dir
from elalora_vit.data.tasks import SPLITS, TaskLike, VTabTask

TEST_SIZES = {
    "cifar": 10000, "caltech101": 6084, "dtd": 1880, "oxford_flowers102": 6149, "oxford_iiit_pet": 3669,
    "svhn": 26032, "sun397": 21750, "patch_camelyon": 32768, "eurosat": 5400, "resisc45": 6300,
    "diabetic_retinopathy": 42670, "clevr_count": 15000, "clevr_dist": 15000, "dmlab": 22735, "kitti": 711,
    "dsprites_loc": 73728, "dsprites_ori": 73728, "smallnorb_azi": 12150, "smallnorb_ele": 12150,
}
"""Test-split sizes of the 19 tasks as the VTAB split strings give them (and the
shared folder copies hold), from the TFDS versions in ``tasks.TASKS``."""
TRAIN_SIZES = {"train800": 800, "val200": 200, "train800val200": 1000}
BROKEN, NONSTANDARD, MISSING = "broken", "nonstandard", "missing"


@dataclass(frozen=True)
class Problem:
    """One violation: where (file and line when known) and what."""

    kind: str  # BROKEN or NONSTANDARD
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass
class TaskCheck:
    """What was found in one task's data."""

    task: str
    sizes: dict[str, int] = field(default_factory=dict)
    expected: dict[str, int | None] = field(default_factory=dict)
    classes: str = "–"  # "present / expected" in train800val200
    list_sha256: dict[str, str] = field(default_factory=dict)
    decoded: int | None = None  # images decoded (full check)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def broken(self) -> list[Problem]:
        return [p for p in self.problems if p.kind == BROKEN]

    def add(self, kind: str, where: str | Path, message: str) -> None:
        self.problems.append(Problem(kind, str(where), message))


def expected_size(task: TaskLike, split: str) -> int | None:
    """How many examples ``split`` of ``task`` holds in VTAB-1k (None: unknown)."""
    return TRAIN_SIZES.get(split) or TEST_SIZES.get(task.name)


def check_folder_task(root: str | Path, task: TaskLike, *, full: bool = True,
                      splits: Sequence[str] = SPLITS) -> TaskCheck:
    """Check ``task``'s folder under ``root``; ``full`` also decodes every image and
    compares test images with training images byte for byte. Leaving ``test`` out of
    ``splits`` leaves the test split unread (tuning on train800 -> val200)."""
    check = TaskCheck(task.name)
    try:
        folder = task_dir(root, task)
    except DataError as err:
        check.add(MISSING, root, str(err).splitlines()[0])
        return check
    entries = {split: _read_list(folder, split, task, check) for split in splits}
    for split, listed in entries.items():
        if listed is None:
            continue
        check.sizes[split] = len(listed)
        check.expected[split] = expected_size(task, split)
        if check.expected[split] is not None and len(listed) != check.expected[split]:
            check.add(NONSTANDARD, folder / f"{split}.txt",
                      f"{len(listed)} images, VTAB-1k has {check.expected[split]} in {split}")
    _check_union(folder, entries, check)
    _check_classes(folder, task, entries.get("train800val200"), check)
    if full:
        check.decoded = _check_decoding(folder, entries, check)
        _check_test_overlap(folder, entries, check)
    return check


def _read_list(folder: Path, split: str, task: TaskLike, check: TaskCheck) -> list[tuple[int, ImageEntry]] | None:
    """``(line number, entry)`` of every good line of ``<split>.txt``; problems recorded in ``check``."""
    path = folder / f"{split}.txt"
    if not path.is_file():
        check.add(MISSING, path, "missing list file")
        return None
    check.list_sha256[split] = file_sha256(path)
    try:
        lines = list_lines(path)
    except DataError as err:
        check.add(BROKEN, path, str(err))
        return None
    entries, first_line = [], {}
    for number, line in enumerate(lines, start=1):
        try:
            entry = parse_list_line(line, path, number, folder, task.num_classes)
        except DataError as err:
            where, _, message = str(err).partition(": ")
            check.add(BROKEN, where, message)
            continue
        if entry is None:
            continue
        if entry.path in first_line:
            check.add(BROKEN, f"{path}, line {number}", f"duplicated line: {entry.path.name} is already on line "
                      f"{first_line[entry.path]}")
            continue
        first_line[entry.path] = number
        entries.append((number, entry))
    return entries


def _check_union(folder: Path, entries, check: TaskCheck) -> None:
    parts = [entries.get(s) for s in ("train800", "val200", "train800val200")]
    if any(p is None for p in parts):
        return
    train, val, union = ([e for _, e in p] for p in parts)
    if union != train + val:
        check.add(BROKEN, folder / "train800val200.txt", "is not train800.txt followed by val200.txt "
                  f"({len(set(union) ^ set(train + val))} entries differ, or the order does)")


def _check_classes(folder: Path, task: TaskLike, listed, check: TaskCheck) -> None:
    if listed is None:
        return
    present = {entry.label for _, entry in listed}
    check.classes = f"{len(present)} / {task.num_classes}"
    missing = sorted(set(range(task.num_classes)) - present)
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        check.add(NONSTANDARD, folder / "train800val200.txt",
                  f"missing class(es) {shown}: no training image has that label")


def _check_decoding(folder: Path, entries, check: TaskCheck) -> int:
    decoded = 0
    seen: set[Path] = set()
    for split, listed in entries.items():
        for number, entry in listed or []:
            if entry.path in seen:
                continue
            seen.add(entry.path)
            try:
                load_rgb_image(entry.path)
                decoded += 1
            except DataError as err:
                check.add(BROKEN, f"{folder / (split + '.txt')}, line {number}", str(err))
    return decoded


def _check_test_overlap(folder: Path, entries, check: TaskCheck) -> None:
    train = entries.get("train800val200")
    test = entries.get("test")
    if not train or not test:
        return
    by_hash = {}
    for number, entry in train:
        by_hash.setdefault(file_sha256(entry.path), number)
    for number, entry in test:
        twin = by_hash.get(file_sha256(entry.path))
        if twin is not None:
            check.add(NONSTANDARD, f"{folder / 'test.txt'}, line {number}",
                      f"test image {entry.path.name} is byte-identical to train800val200.txt line {twin}")


def check_tfds_task(task: VTabTask, tfds_dir: str | Path | None, *, full: bool = True,
                    splits: Sequence[str] = SPLITS) -> TaskCheck:
    """Check ``task`` read from prepared TFDS data: sizes always; with ``full``, every
    example's label and image, and test images identical to training images."""
    from elalora_vit.data.tfds_source import TfdsSource

    check = TaskCheck(task.name)
    sources = {}
    for split in splits:
        try:
            sources[split] = TfdsSource(task, split, tfds_dir)
        except DataError as err:
            check.add(MISSING, f"{task.tfds_name} {task.tfds_split(split)}", str(err).splitlines()[0])
            continue
        check.sizes[split] = len(sources[split])
        check.expected[split] = expected_size(task, split)
        if check.expected[split] is not None and check.sizes[split] != check.expected[split]:
            check.add(NONSTANDARD, f"{task.tfds_name} {task.tfds_split(split)}",
                      f"{check.sizes[split]} examples, VTAB-1k has {check.expected[split]} in {split}")
    if full:
        _check_tfds_examples(task, sources, check)
    return check


def _check_tfds_examples(task: VTabTask, sources, check: TaskCheck) -> None:
    hashes: dict[str, dict[str, int]] = {}
    labels: set[int] = set()
    check.decoded = 0
    for split, source in sources.items():
        hashes[split] = {}
        for index in range(len(source)):
            try:
                image, label = source[index]
            except DataError as err:
                check.add(BROKEN, f"{task.tfds_name} {task.tfds_split(split)}, example {index}", str(err))
                continue
            check.decoded += 1
            hashes[split].setdefault(hashlib.sha256(image.tobytes()).hexdigest(), index)
            if split == "train800val200":
                labels.add(label)
    if "train800val200" in sources:
        missing = sorted(set(range(task.num_classes)) - labels)
        check.classes = f"{len(labels)} / {task.num_classes}"
        if missing:
            check.add(NONSTANDARD, f"{task.tfds_name} {task.train800val200}", f"missing class(es) {missing[:10]}")
    for digest, index in hashes.get("test", {}).items():
        if digest in hashes.get("train800val200", {}):
            check.add(NONSTANDARD, f"{task.tfds_name} {task.test}, example {index}",
                      f"identical to train800val200 example {hashes['train800val200'][digest]}")


def check_data(tasks: Iterable[TaskLike], *, source: str = "folder", data_dir: str | Path = "data/vtab-1k",
               tfds_dir: str | Path | None = None, full: bool = True,
               splits: Sequence[str] = SPLITS) -> list[TaskCheck]:
    """:func:`check_folder_task` or :func:`check_tfds_task` for each of ``tasks``."""
    if source not in ("folder", "tfds"):
        raise DataError(f"check-data reads the folder layout or TFDS data, not source {source!r}")
    if source == "tfds":
        return [check_tfds_task(task, tfds_dir, full=full, splits=splits) for task in tasks]
    return [check_folder_task(data_dir, task, full=full, splits=splits) for task in tasks]


def format_checks(checks: Sequence[TaskCheck]) -> str:
    """A table per task (split, images, expected, list SHA-256), then its problems."""
    blocks = []
    for check in checks:
        status = "ok" if check.ok else f"{len(check.problems)} problem(s)"
        lines = [f"{check.task}: {status}; classes in train800val200: {check.classes}"
                 + (f"; {check.decoded} images decoded" if check.decoded is not None else "")]
        lines.append(f"  {'split':<16}{'images':>8}{'expected':>10}  list sha256")
        for split, size in check.sizes.items():
            expected = check.expected.get(split)
            mark = "" if expected in (None, size) else "  <-- wrong count"
            lines.append(f"  {split:<16}{size:>8}{expected if expected is not None else '?':>10}  "
                         f"{check.list_sha256.get(split, '–')[:16]}{mark}")
        lines += [f"  {p.kind.upper()}: {p}" for p in check.problems]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)
