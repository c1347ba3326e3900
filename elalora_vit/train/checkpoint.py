"""Training checkpoints: written atomically, loaded without executing code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.config import ConfigError, upgrade_schedule_key
from ..core.errors import first_line
from ..core.files import atomic_write

FORMAT = "elalora-vit/checkpoint/1"
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
    complete checkpoint, never a partial one (see :func:`~elalora_vit.core.files.atomic_write`)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            torch.save({"format": FORMAT, **state}, f)

    return atomic_write(path, write)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``torch.load(weights_only=True)``: tensors and plain data only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # damaged bytes fail anywhere in the unpickler: IndexError, UnicodeDecodeError, ...
        raise CheckpointError(
            f"checkpoint {path} is truncated, corrupt or not a plain-data checkpoint ({first_line(err)}); "
            "delete it to start the run afresh"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an elalora-vit training checkpoint")
    return state


def check_same_run(saved_config: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written with different settings (a checkpoint of an
    older version, with the deprecated ``adapter.cubic_schedule``, resumes as its ``schedule``)."""
    saved_config = _upgraded(saved_config)
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


def _upgraded(saved_config: Any) -> Any:
    adapter = saved_config.get("adapter") if isinstance(saved_config, dict) else None
    if not isinstance(adapter, dict):
        return saved_config
    try:
        return {**saved_config, "adapter": upgrade_schedule_key(adapter, warn=False)}
    except ConfigError:  # a hand-edited value: the comparison below names the difference
        return saved_config


def _get(config: dict[str, Any], dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node

