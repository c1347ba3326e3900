"""No silent no-op: notice when an ElaLoRA model trains but no rank allocator runs.

ElaLoRA's ranks move only when a :class:`RankAllocator` is stepped after every
optimizer step.  A loop that forgets it still trains, as a fixed-rank SVD
adapter, and nothing says so (PEFT AdaLoRA users meet the same trap when they
forget ``update_and_allocate``).  :func:`patch_model` attaches one
:class:`TrainingCounts` to the SVD layers of a model; a global
``torch.optim`` step hook counts the optimizer steps that update those layers,
and the allocator counts its own steps and rounds.  Once the optimizer is past
``warmup_steps`` with no allocator step, one :class:`AllocatorNotSteppedWarning`
says what to call.  The counts also end up in saved adapter files.

The hook runs outside the model's forward, so ``torch.compile`` graphs are not
touched; its cost is a dictionary look-up per optimizer step.
"""

from __future__ import annotations

import warnings
import weakref
from typing import Iterable

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from torch import nn


class AllocatorNotSteppedWarning(UserWarning):
    """An ElaLoRA model took optimizer steps past warm-up, but no rank allocator was stepped."""


class TrainingCounts:
    """Optimizer steps, allocator steps and rounds seen by the SVD layers of one model."""

    def __init__(self, warmup_steps: int):
        self.warmup_steps = int(warmup_steps)
        self.optimizer_steps = 0
        self.allocator_steps = 0
        self.rounds = 0
        self.warned = False

    def after_optimizer_step(self) -> None:
        self.optimizer_steps += 1
        if not self.warned and self.allocator_steps == 0 and self.optimizer_steps > self.warmup_steps:
            self.warned = True
            warnings.warn(
                f"ElaLoRA: the optimizer has taken {self.optimizer_steps} steps, past "
                f"warmup_steps={self.warmup_steps}, but no rank allocator was stepped, so no rank "
                "will ever move (this trains a fixed-rank SVD adapter). Create "
                "`allocator = RankAllocator(model, config, total_steps)` and call "
                "`allocator.step(optimizer)` after every `optimizer.step()`; with a HF Trainer, pass "
                "`callbacks=[ElaLoRACallback(config)]` from elalora_vit.integrations.hf.",
                AllocatorNotSteppedWarning,
                stacklevel=3,
            )

    def as_metadata(self) -> dict[str, str]:
        return {"allocator_steps": str(self.allocator_steps), "allocator_rounds": str(self.rounds)}


_watched_layers: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
# optimizer -> (number of parameters when looked up, the counts its steps advance)
_counts_by_optimizer: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_hook_handle = None


def watch_layers(layers: Iterable[nn.Module], warmup_steps: int) -> TrainingCounts | None:
    """Attach one shared :class:`TrainingCounts` to ``layers`` (SVD layers) and start counting."""
    layers = list(layers)
    if not layers:
        return None
    counts = TrainingCounts(warmup_steps)
    for layer in layers:
        layer.training_counts = counts
        _watched_layers.add(layer)
    _install_hook()
    return counts


def counts_of(layers: Iterable[nn.Module]) -> list[TrainingCounts]:
    """The distinct counts attached to ``layers`` (none for layers not patched by ``patch_model``)."""
    seen: dict[int, TrainingCounts] = {}
    for layer in layers:
        counts = getattr(layer, "training_counts", None)
        if counts is not None:
            seen.setdefault(id(counts), counts)
    return list(seen.values())


def _install_hook() -> None:
    global _hook_handle
    if _hook_handle is None:
        _hook_handle = register_optimizer_step_post_hook(_after_step)


def _after_step(optimizer: torch.optim.Optimizer, args, kwargs) -> None:
    for counts in _counts_for(optimizer):
        counts.after_optimizer_step()


def _counts_for(optimizer: torch.optim.Optimizer) -> list[TrainingCounts]:
    n_params = sum(len(group["params"]) for group in optimizer.param_groups)
    cached = _counts_by_optimizer.get(optimizer)
    if cached is None or cached[0] != n_params:  # first step, or param groups were added
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        layers = [layer for layer in list(_watched_layers) if id(layer.lora_theta) in ids]
        cached = (n_params, counts_of(layers))
        _counts_by_optimizer[optimizer] = cached
    return cached[1]
