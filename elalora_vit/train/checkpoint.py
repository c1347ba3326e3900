"""Training checkpoints: written atomically, loaded without executing code."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

# 2: SVD adapters store lambda as lambda_scale * lora_theta, and lambda's speed-up is no longer
# an optimizer group's learning rate. A format-1 checkpoint's optimizer and LR-scheduler state
# would apply that speed-up twice, so it is refused rather than converted.
FORMAT = "elalora-vit/checkpoint/2"
OLD_FORMATS = {
    "elalora-vit/checkpoint/1": "it was written before singular values were stored as "
    "lambda_scale * lora_theta (its optimizer state would speed lambda up twice); its adapters "
    "can still be used (adapter.safetensors of the run loads as before), but its training cannot "
    "be resumed: start the run afresh in a new output folder",
}
# Settings that must not change between a run and its resumption.
RESUME_KEYS = (
    "method",
    "seed",
    "data.task",
    "data.train_split",
    "data.image_size",
    "model.name",
    "model.kwargs",
    "model.targets",
    "model.split",
    "adapter",
    "optim",
    "precision",
)


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, foreign, or from a different run."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` so that ``path`` is always either the old or the new
    complete checkpoint, never a partial one (temp file, fsync, atomic rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain data only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged bytes fail anywhere in the unpickler: IndexError, UnicodeDecodeError, ...
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a plain-data checkpoint ({first}); "
            "delete it to start the run afresh"
        ) from err
    found = state.get("format") if isinstance(state, dict) else None
    if found in OLD_FORMATS:
        raise CheckpointError(f"checkpoint {path} has format {found!r}, this version reads {FORMAT!r}: "
                              + OLD_FORMATS[found])
    if found != FORMAT:
        raise CheckpointError(f"{path} is not an elalora-vit training checkpoint")
    return state


def check_same_run(saved_config: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written with different settings."""
    differences = []
    for key in RESUME_KEYS:
        theirs, mine = _get(saved_config, key), _get(config, key)
        if theirs != mine:
            differences.append(f"{key}: {theirs!r} in the checkpoint, {mine!r} now")
    if differences:
        raise CheckpointError(
            f"checkpoint {path} belongs to a run with other settings ("
            + "; ".join(differences[:4])
            + "); use another output folder or the original settings"
        )


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
