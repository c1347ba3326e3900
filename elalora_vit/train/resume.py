"""A run's state in and out of its checkpoint: written after an epoch (or, on Ctrl-C or
SIGTERM, between two steps of one), read back by ``train(resume=True)`` so that the resumed
run reaches what an uninterrupted one does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..core.errors import first_line
from .checkpoint import CheckpointError, check_same_run, load_checkpoint, save_checkpoint
from ..config import TrainConfig
from .errors import TrainingError
from .methods import trainable_state_names
from .state import EpochProgress, RunState


def save_run_checkpoint(path: Path, cfg: TrainConfig, state: RunState, accelerator) -> None:
    """The main process writes the checkpoint; every process waits until it is on disk."""
    if accelerator.is_main_process:
        save_checkpoint(path, checkpoint_state(cfg, state, accelerator))
    accelerator.wait_for_everyone()
    state.checkpoint_epoch = state.epoch


def checkpoint_state(cfg: TrainConfig, state: RunState, accelerator) -> dict[str, Any]:
    """The checkpoint's contents (plain data and tensors): the trainable weights only,
    the optimizer, schedule, AMP scaler, allocator, health counters and RNG."""
    full_state = state.unwrapped.state_dict()
    return {
        "config": cfg.to_dict(),
        "epoch": state.epoch,
        "step": state.step,
        "model": {k: full_state[k] for k in trainable_state_names(state.unwrapped, cfg)},
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "allocator": state.allocator.state_dict() if state.allocator is not None else None,
        "health": state.health.state_dict(),
        "epoch_progress": state.progress.to_dict(),  # a stop between two steps: the epoch in progress
        "bad_in_a_row": state.bad_in_a_row,
        "torch_rng": torch.get_rng_state(),
        "metrics": state.metrics,
        "wall_time": time.time() - state.started,
    }


def resume_from(path: Path, cfg: TrainConfig, state: RunState, accelerator) -> None:
    """Load the checkpoint at ``path`` into ``state``.

    Raises:
        CheckpointError: the file is unreadable or foreign, was written with other
            settings, or does not fit this run.
    """
    saved = load_checkpoint(path)
    check_same_run(saved.get("config"), cfg.to_dict(), path)
    try:  # plain data of the right format, yet not what this run wrote (edited, truncated by hand)
        restore(state, saved, accelerator)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit this run ({first_line(err)}); delete it to start the run afresh"
        ) from err


def restore(state: RunState, saved: dict[str, Any], accelerator) -> None:
    """Put a checkpoint's contents back into ``state`` (see :func:`checkpoint_state`)."""
    current = state.unwrapped.state_dict()
    missing = set(saved["model"]) - set(current)
    if missing:
        raise TrainingError(f"checkpoint holds weights this model lacks: {sorted(missing)[:4]}")
    wrong = [(k, tuple(v.shape), tuple(current[k].shape)) for k, v in saved["model"].items()
             if isinstance(v, torch.Tensor) and tuple(v.shape) != tuple(current[k].shape)]
    if wrong:
        name, theirs, ours = wrong[0]
        more = f" (and {len(wrong) - 1} more tensor(s))" if len(wrong) > 1 else ""
        raise TrainingError(f"'{name}' has shape {theirs} in the checkpoint and {ours} in this model{more}")
    state.unwrapped.load_state_dict(saved["model"], strict=False)
    state.optimizer.load_state_dict(saved["optimizer"])
    state.scheduler.load_state_dict(saved["scheduler"])
    if accelerator.scaler is not None and saved["scaler"] is not None:
        accelerator.scaler.load_state_dict(saved["scaler"])
    if state.allocator is not None:
        state.allocator.load_state_dict(saved["allocator"])
    state.health.load_state_dict(saved["health"])
    torch.set_rng_state(saved["torch_rng"])
    state.epoch, state.step = int(saved["epoch"]), int(saved["step"])
    state.progress = EpochProgress(**saved.get("epoch_progress", {}))  # older checkpoints have neither
    state.bad_in_a_row = int(saved.get("bad_in_a_row", 0))
    state.checkpoint_epoch = state.epoch
    state.metrics = list(saved["metrics"])
    state.started -= float(saved["wall_time"])
    state.last_eval = state.metrics[-1].get("eval_acc") if state.metrics else None
