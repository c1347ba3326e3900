"""What a training run carries from step to step, and what its checkpoint holds."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch
from torch import nn

from ..core import RankAllocator, unwrap_model
from .health import HealthMonitor
from .methods import MethodSetup
from .tracking import Tracker


@dataclass
class EpochProgress:
    """The epoch in progress: steps taken, the loss sum and count over the steps not
    skipped (as read so far), and the seconds of its steps and of getting their batches.
    Saved in a checkpoint written between two steps, so a resumed run continues the epoch."""

    steps: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0
    data_s: float = 0.0  # host seconds spent getting the batches (reading, pinning, copying)
    train_s: float = 0.0  # seconds of the steps, data included

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass
class RunState:
    """The model, its optimizer and schedule, the method's allocator and the run's
    counters: everything the loop updates, all of it saved in each checkpoint."""

    model: nn.Module  # as accelerate prepared it (wrapped in DDP under several processes)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    method: MethodSetup
    health: HealthMonitor
    started: float  # time.time() at the start, moved back by the time a resumed run already spent
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken (skipped ones included)
    metrics: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    bad_in_a_row: int = 0  # non-finite steps since the last good one
    progress: EpochProgress = field(default_factory=EpochProgress)  # the epoch in progress
    last_eval: float | None = None  # top-1 of the latest evaluation during training
    current_rank: int | None = None  # total adapter rank; changes only in an allocation round
    checkpoint_epoch: int | None = None  # the epoch of the checkpoint on disk (None: none yet)
    tracker: Tracker = field(default_factory=Tracker)  # log_to's; not part of the checkpoint
    checkpoint_seconds: float | None = None  # how long the last checkpoint took to write; not part of it
    checkpoint_written_at: float = 0.0  # time.monotonic() when it was written; not part of it

    @property
    def allocator(self) -> RankAllocator | None:
        return self.method.allocator

    @cached_property
    def unwrapped(self) -> nn.Module:
        """The model itself, without the DDP / compile wrappers."""
        return unwrap_model(self.model)
