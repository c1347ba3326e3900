"""Training checkpoints: written atomically, loaded without executing code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..core.config import ConfigError, upgrade_schedule_key
from ..core.errors import first_line
from ..storage.files import atomic_write

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
    "model.exclude",
    "adapter",
    "optim",
    "precision",
)


class CheckpointError(ValueError):
    """A checkpoint that is unreadable, foreign, or from a different run."""


def non_finite_tensors(tensors: Any) -> list[str]:
    """Names of the floating tensors of a ``{name: tensor}`` mapping holding NaN or inf (one
    read of a device value for all of them; names only when there is one)."""
    if not isinstance(tensors, dict):
        return []
    floats = {k: t for k, t in tensors.items() if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()}
    if not floats or bool(torch.stack([t.isfinite().all() for t in floats.values()]).all()):
        return []
    return [k for k, t in floats.items() if not bool(t.isfinite().all())]


def _non_finite_text(names: list[str]) -> str:
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"{len(names)} weight tensor(s) holding NaN or inf ({shown})"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` so that ``path`` is always either the old or the new
    complete checkpoint, never a partial one (see :func:`~elalora_vit.storage.files.atomic_write`).

    Raises:
        CheckpointError: the trained weights (``state["model"]``) hold NaN or inf; nothing is
            written, so the previous checkpoint stays the one a resume starts from.
    """
    bad = non_finite_tensors(state.get("model"))
    if bad:
        raise CheckpointError(f"not writing {path}: the model has {_non_finite_text(bad)}, so training has diverged; "
                              f"the previous checkpoint, if any, is intact: lower optim.lr and resume or start afresh")

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
    found = state.get("format") if isinstance(state, dict) else None
    if found in OLD_FORMATS:
        raise CheckpointError(f"checkpoint {path} has format {found!r}, this version reads {FORMAT!r}: "
                              + OLD_FORMATS[found])
    if found != FORMAT:
        raise CheckpointError(f"{path} is not an elalora-vit training checkpoint")
    bad = non_finite_tensors(state.get("model"))
    if bad:
        raise CheckpointError(f"checkpoint {path} has {_non_finite_text(bad)}: resuming would continue a diverged "
                              "model; delete it to start the run afresh")
    return state


# Why a setting cannot change on resume, by the most specific key prefix that applies.
_STEPS_REASON = (
    "the learning-rate schedule and the rank allocator's schedule (warm-up, rounds, final "
    "budget) are laid out over the run's total steps, so a resumed run cannot change its length"
)
WHY_FIXED = {
    "optim.epochs": _STEPS_REASON,
    "optim.batch_size": _STEPS_REASON,
    "data.train_split": _STEPS_REASON + " or its training images",
    "optim": "the optimizer state and learning-rate schedule in the checkpoint were built with it",
    "adapter": "the adapters and the rank allocator's state in the checkpoint were built with it",
    "method": "the checkpoint holds the weights and optimizer state of that method",
    "model": "the checkpoint holds the weights of that model",
    "seed": "the data order and the random directions of re-grown ranks follow from it",
    "data.task": "the checkpoint's classifier head was trained for that task",
    "data.image_size": "the model was built and trained for that input size",
    "precision": "the optimizer and gradient-scaler state were saved under it",
}


def check_same_run(saved_config: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written with different settings; the error lists
    only the keys that differ (old -> new) and why each one cannot change. A checkpoint of
    an older version, with the deprecated ``adapter.cubic_schedule``, resumes as its ``schedule``."""
    saved_config = _upgraded(saved_config)
    differences = [
        (key, theirs, mine)
        for section in RESUME_KEYS
        for key, theirs, mine in _differences(section, _get(saved_config, section), _get(config, section))
    ]
    if differences:
        lines = [f"  {key}: {_show(theirs)} -> {_show(mine)} ({_why_fixed(key)})" for key, theirs, mine in differences]
        raise CheckpointError(
            f"checkpoint {path} was written with other settings ({', '.join(d[0] for d in differences)}); "
            "resume with the checkpoint's settings, or start a new run in another folder (--output DIR):\n"
            + "\n".join(lines)
        )


def _differences(key: str, theirs: Any, mine: Any) -> list[tuple[str, Any, Any]]:
    """The leaf keys under ``key`` whose values differ, with both values (`_UNSET`: absent)."""
    if isinstance(theirs, dict) and isinstance(mine, dict):
        return [
            diff
            for name in sorted(set(theirs) | set(mine), key=str)
            for diff in _differences(f"{key}.{name}", theirs.get(name, _UNSET), mine.get(name, _UNSET))
        ]
    return [] if theirs == mine else [(key, theirs, mine)]


_UNSET = object()


def _show(value: Any) -> str:
    return "(unset)" if value is _UNSET else repr(value)


def _why_fixed(key: str) -> str:
    parts = key.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in WHY_FIXED:
            return WHY_FIXED[".".join(parts[:n])]
    return "the checkpoint was written with it"


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

