"""Fixtures for the data tests: tiny task folders built from generated images."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

FOLDER_TASK = "eurosat"  # a real VTAB task (10 classes); its folder here holds tiny images
SPLIT_SIZES = {"train800": 6, "val200": 3, "test": 4}


def solid_image(value: int, size: tuple[int, int] = (12, 10)) -> np.ndarray:
    """A uint8 (H, W, 3) image whose red channel is `value` (so tests can tell images apart)."""
    image = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    image[..., 0] = value
    image[..., 1] = 255 - value
    image[..., 2] = 100
    return image


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def build_task_folder(root: Path, task: str = FOLDER_TASK, num_labels: int = 3) -> Path:
    """Writes <root>/<task> in the folder layout with PNG images; labels cycle 0..num_labels-1."""
    task_dir = root / task
    lists: dict[str, list[str]] = {}
    value = 0
    for split, count in SPLIT_SIZES.items():
        (task_dir / "images" / split).mkdir(parents=True)
        lists[split] = []
        for index in range(count):
            relative = f"images/{split}/{index:06d}.png"
            Image.fromarray(solid_image(value * 10)).save(task_dir / relative)
            lists[split].append(f"{relative} {index % num_labels}")
            value += 1
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        write_lines(task_dir / f"{split}.txt", lines)
    return task_dir


@pytest.fixture
def kit() -> SimpleNamespace:
    """The helpers above, as a fixture (test modules do not import conftest)."""
    return SimpleNamespace(
        task_name=FOLDER_TASK,
        split_sizes=dict(SPLIT_SIZES),
        solid_image=solid_image,
        write_lines=write_lines,
        build_task_folder=build_task_folder,
    )


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """A data root holding one small task folder (eurosat layout, 3 labels used)."""
    root = tmp_path / "vtab-1k"
    build_task_folder(root)
    return root
