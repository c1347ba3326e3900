"""The 19 VTAB-1k tasks: where their data comes from and how it is labelled.

See docs/VTAB.md for the sources of these facts. The order of `TASKS` is the
order of the VTAB tables: natural, specialized, structured.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from elalora_vit.data.errors import DataError, UnknownSplitError, UnknownTaskError, prepare_command

SPLITS = ("train800", "val200", "train800val200", "test")
"""The split names of the VTAB-1k protocol and of the folder layout."""


class TaskLike(Protocol):
    """What the folder loader needs from a task: `VTabTask` or `digits.DigitsTask`."""

    name: str
    num_classes: int
    aliases: tuple[str, ...]

    def prepare_hint(self, data_dir: str | Path) -> str:
        """How to write this task in the folder layout under `data_dir`."""
        ...


@dataclass(frozen=True)
class VTabTask:
    """One VTAB-1k task.

    `train800`, `val200` and `test` are TFDS split strings (slicing syntax);
    `train800val200` is their union as TFDS writes it (`a+b`).
    """

    name: str
    group: str
    num_classes: int
    tfds_builder: str
    tfds_version: str
    train800: str
    val200: str
    test: str
    label_rule: str = "label"
    grayscale: bool = False
    pixel_scale: int = 1
    aliases: tuple[str, ...] = ()

    @property
    def tfds_name(self) -> str:
        """Builder name with version spec, as `tfds.data_source` takes it."""
        return f"{self.tfds_builder}:{self.tfds_version}"

    @property
    def train800val200(self) -> str:
        """TFDS split string for the 1000 training images (train800 then val200)."""
        return f"{self.train800}+{self.val200}"

    def tfds_split(self, split: str) -> str:
        """The TFDS split string of a VTAB split name (one of `SPLITS`)."""
        check_split(split)
        return getattr(self, split)

    def prepare_hint(self, data_dir: str | Path) -> str:
        """The command that writes this task in the folder layout under `data_dir`."""
        return prepare_command(self.name, data_dir)


def check_split(split: str) -> str:
    """`split` itself if it is one of `SPLITS`; `UnknownSplitError` otherwise."""
    if split not in SPLITS:
        raise UnknownSplitError(
            f"unknown split {split!r}; the VTAB-1k splits are {', '.join(SPLITS)}."
        )
    return split


TASKS: tuple[VTabTask, ...] = (
    # natural
    VTabTask("cifar", "natural", 100, "cifar100", "3.*.*",
             "train[:800]", "train[45000:45200]", "test", aliases=("cifar100",)),
    VTabTask("caltech101", "natural", 102, "caltech101", "3.*.*",
             "train[:800]", "train[2754:2954]", "test"),
    VTabTask("dtd", "natural", 47, "dtd", "3.*.*",
             "train[:800]", "validation[:200]", "test"),
    VTabTask("oxford_flowers102", "natural", 102, "oxford_flowers102", "2.*.*",
             "train[:800]", "validation[:200]", "test"),
    # The reference code used 3.x; only 4.0.0 can be built with today's TFDS.
    VTabTask("oxford_iiit_pet", "natural", 37, "oxford_iiit_pet", "4.*.*",
             "train[:800]", "train[2944:3144]", "test", aliases=("oxford_pet",)),
    VTabTask("svhn", "natural", 10, "svhn_cropped", "3.*.*",
             "train[:800]", "train[65931:66131]", "test"),
    VTabTask("sun397", "natural", 397, "sun397/tfds", "4.*.*",
             "train[:800]", "validation[:200]", "test"),
    # specialized
    VTabTask("patch_camelyon", "specialized", 2, "patch_camelyon", "2.*.*",
             "train[:800]", "validation[:200]", "test"),
    VTabTask("eurosat", "specialized", 10, "eurosat/rgb", "2.*.*",
             "train[:800]", "train[16200:16400]", "train[21600:]"),
    VTabTask("resisc45", "specialized", 45, "resisc45", "3.*.*",
             "train[:800]", "train[18900:19100]", "train[25200:]"),
    VTabTask("diabetic_retinopathy", "specialized", 5,
             "diabetic_retinopathy_detection/btgraham-300", "3.*.*",
             "train[:800]", "validation[:200]", "test"),
    # structured
    VTabTask("clevr_count", "structured", 8, "clevr", "3.*.*",
             "train[:800]", "train[63000:63200]", "validation", label_rule="clevr_count"),
    VTabTask("clevr_dist", "structured", 6, "clevr", "3.*.*",
             "train[:800]", "train[63000:63200]", "validation", label_rule="clevr_dist"),
    VTabTask("dmlab", "structured", 6, "dmlab", "2.0.1",
             "train[:800]", "validation[:200]", "test"),
    # The reference code used 3.1.0; 3.3.0 is what builds today.
    VTabTask("kitti", "structured", 4, "kitti", "3.*.*",
             "train[:800]", "validation[:200]", "test", label_rule="kitti"),
    VTabTask("dsprites_loc", "structured", 16, "dsprites", "2.*.*",
             "train[:800]", "train[589824:590024]", "train[663552:]",
             label_rule="dsprites_loc", grayscale=True, pixel_scale=255),
    VTabTask("dsprites_ori", "structured", 16, "dsprites", "2.*.*",
             "train[:800]", "train[589824:590024]", "train[663552:]",
             label_rule="dsprites_ori", grayscale=True, pixel_scale=255),
    VTabTask("smallnorb_azi", "structured", 18, "smallnorb", "2.*.*",
             "train[:800]", "test[:200]", "test[50%:]", label_rule="smallnorb_azi", grayscale=True),
    VTabTask("smallnorb_ele", "structured", 9, "smallnorb", "2.*.*",
             "train[:800]", "test[:200]", "test[50%:]", label_rule="smallnorb_ele", grayscale=True),
)

GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(task.name for task in TASKS if task.group == group)
    for group in ("natural", "specialized", "structured")
}
"""Task names per VTAB group, in table order."""

_BY_NAME: dict[str, VTabTask] = {
    key.lower(): task for task in TASKS for key in (task.name, *task.aliases)
}


def task_names() -> list[str]:
    """The 19 task names (folder names), in table order."""
    return [task.name for task in TASKS]


def get_task(name: str) -> VTabTask:
    """The task called `name` (a folder name or an alias, any case).

    Raises `UnknownTaskError` listing the valid names when there is none.
    """
    try:
        return _BY_NAME[name.strip().lower()]
    except (KeyError, AttributeError):
        aliases = ", ".join(f"{alias} -> {task.name}" for task in TASKS for alias in task.aliases)
        raise UnknownTaskError(
            f"unknown VTAB-1k task {name!r}. Valid names: {', '.join(task_names())} "
            f"(aliases: {aliases})."
        ) from None


def parse_task_list(tasks: str | Iterable[str]) -> list[str]:
    """Canonical task names, in table order and without repeats, from a task list as
    users type it: task names, aliases (any case), groups ("natural", "specialized",
    "structured") or "all", separated by spaces, commas or both, in one string or a
    list of strings (``--tasks natural kitti`` and ``--tasks natural,kitti`` alike).

    The one parser of task lists: every command that takes ``--tasks`` calls it.
    Raises `UnknownTaskError` for an unknown name, `DataError` for an empty list.
    """
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    words = [word for item in items for word in str(item).replace(",", " ").split()]
    chosen: set[str] = set()
    for word in words:
        if word.lower() == "all":
            chosen.update(task_names())
        elif word.lower() in GROUPS:
            chosen.update(GROUPS[word.lower()])
        else:
            chosen.add(get_task(word).name)
    if not chosen:
        raise DataError(f"no tasks selected from {tasks!r}; name tasks, groups (natural, specialized, "
                        "structured) or 'all', separated by spaces or commas.")
    return [name for name in task_names() if name in chosen]


def selected_tasks(tasks: str | Iterable[str]) -> list[VTabTask]:
    """The tasks named by `tasks` (see `parse_task_list`), in table order, without repeats."""
    return [get_task(name) for name in parse_task_list(tasks)]
