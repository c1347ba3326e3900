"""Tiny, learnable folder tasks and tiny-model training overrides."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TASK = "eurosat"  # a real VTAB task name (10 classes); the images are generated


def write_folder_task(root: Path, task: str = TASK, classes: int = 4, train: int = 32, test: int = 16, seed: int = 0) -> Path:
    """Colour-coded images (class k is brightest in a class-specific quadrant), in the VTAB layout."""
    rng = np.random.default_rng(seed)
    folder = root / task
    lists = {}
    for split, count in (("train800", train), ("val200", max(4, train // 4)), ("test", test)):
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(count):
            label = i % classes
            pixels = rng.integers(0, 60, (16, 16, 3), dtype=np.uint8)
            r, c = divmod(label % 4, 2)
            pixels[r * 8 : r * 8 + 8, c * 8 : c * 8 + 8, label % 3] = 250
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(pixels).save(folder / rel)
            lines.append(f"{rel} {label}")
        lists[split] = lines
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def tiny_overrides(root: Path, output: Path, **extra) -> dict:
    values = {
        "data.task": TASK,
        "data.source": "folder",
        "data.data_dir": str(root),
        "data.image_size": 32,
        "data.num_workers": 0,
        "model.name": "vit_tiny_patch16_224",
        "model.pretrained": False,
        "model.kwargs": {"img_size": 32, "patch_size": 8, "depth": 1},
        "adapter.rank": 2,
        "adapter.warmup": 0.2,
        "adapter.adjust_interval": 2,
        "adapter.stabilize": 0.2,
        "optim.epochs": 3,
        "optim.batch_size": 8,
        "optim.warmup_epochs": 0,
        "optim.lr": 3e-3,
        "progress": False,
        "output_dir": str(output),
    }
    values.update(extra)
    return values


@pytest.fixture(scope="session")
def folder_root(tmp_path_factory) -> Path:
    return write_folder_task(tmp_path_factory.mktemp("vtab"))
