"""Allocation health checks: the ways rank reallocation fails, warned as they happen
and summarised in ``result.json`` (``result["health"]``).

- ``skipped_steps``: steps with a non-finite loss or gradient (skipped, counted);
- ``nonfinite_after_round``: non-finite adapter values right after a round (a bad
  expansion: a NaN direction is not hidden by ``lambda = 0``, since NaN * 0 = NaN);
- ``concentration``: the rank flowing into a few adapters: the top 10% of adapters
  hold more than ``CONCENTRATION_SHARE`` of the total rank *and* more than
  ``CONCENTRATION_FACTOR`` times their share under a uniform pattern (so a model
  with one or three adapters is not flagged for holding all of its own rank);
- ``no_rank_moved``: no rank moved over the run (no round ran, every round was
  blocked by capacity, or, for ElaLoRA, every moved rank went back where it came
  from, so the final pattern is the initial one);
- ``loss_rising``: the training loss at the end of the adjustment phase exceeds the
  loss at its start by more than ``LOSS_RISE_FACTOR`` (means over windows of steps).

Each check warns once, when it first fires, through the given logger; how often it
fired is counted in the summary.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ..core import AdaLoRAAllocator, RoundRecord, adapted_layers

CONCENTRATION_SHARE = 0.5
CONCENTRATION_FACTOR = 3.0
LOSS_RISE_FACTOR = 1.10
WINDOW = 20  # steps averaged at each end of the adjustment phase (fewer in short phases)
MIN_WINDOW = 3

CHECKS = ("skipped_steps", "nonfinite_after_round", "concentration", "no_rank_moved", "loss_rising")


class HealthMonitor:
    """Watches one training run.  ``allocator`` is the run's rank allocator, or None
    (LoRA, full fine-tuning, linear probing: only skipped steps are watched)."""

    def __init__(self, allocator, logger: logging.Logger | None = None):
        self.allocator = allocator
        self.log = logger or logging.getLogger(__name__)
        self.skipped_steps = 0
        self.ranks_moved = 0  # ranks granted (ElaLoRA) or pruned (AdaLoRA) by rounds
        self.ranks_moved_net = 0  # the same, less ranks pruned and re-grown in one adapter in one round
        self.shortfall = 0
        self.nonfinite_after_round = 0
        self.fired: dict[str, int] = {}  # check -> how many times it fired
        self.warnings: list[str] = []  # the first message of every check that fired
        self.initial_pattern = allocator.rank_pattern() if allocator is not None else {}
        self._adjust_losses: list[float] = []

    # ----------------------------------------------------------------- events
    def after_step(self, step: int, loss: float | None, skipped: bool) -> None:
        """Call after every optimizer step, ``step`` counted from 1, ``loss`` None when skipped
        (the training loop calls it when it reads a batch of steps' losses from the device)."""
        if skipped:
            self.skipped_steps += 1
            self._fire("skipped_steps", f"step {step}: non-finite loss or gradient, step skipped")
            return
        if self.allocator is not None and loss is not None and self._in_adjustment(step):
            self._adjust_losses.append(float(loss))

    @torch.no_grad()
    def after_round(self, record: RoundRecord, model) -> None:
        """Call after every round the allocator ran (``allocator.step`` returned a record)."""
        self.ranks_moved += len(record.pruned) if self._prune_only else len(record.expanded)
        self.ranks_moved_net += len(record.pruned) if self._prune_only else record.net_moved()
        self.shortfall += record.shortfall
        bad = nonfinite_adapters(model)
        if bad:
            self.nonfinite_after_round += 1
            self._fire("nonfinite_after_round", f"step {record.step}: non-finite adapter values after a round in {bad[:3]}")
        if is_concentrated(record.rank_pattern):
            self._fire(
                "concentration",
                f"step {record.step}: the top 10% of adapters hold {concentration(record.rank_pattern):.0%} "
                "of the total rank; rank is flowing into a few adapters (consider a smaller b or max_rank)",
            )

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        """The health of the run so far, for ``result.json``; also warns about end-of-run checks."""
        checks: dict[str, Any] = {"skipped_steps": self.skipped_steps}
        if self.allocator is not None:
            pattern = self.allocator.rank_pattern()
            rounds = len(self.allocator.history)
            net = net_rank_change(self.initial_pattern, pattern)
            if self.ranks_moved == 0:
                why = ("no adjustment round ran (the adjustment phase is shorter than adjust_interval, or b = 0)"
                       if rounds == 0 else f"all {rounds} rounds were blocked (adapters at capacity or at rank 1)")
                self._fire("no_rank_moved", f"no rank moved during the run: {why}")
            elif net == 0 and not self._prune_only:
                self._fire("no_rank_moved", f"{self.ranks_moved} ranks moved, but every adapter ended at its "
                           "initial rank: the allocation changed nothing")
            rise = self.loss_rise()
            if rise is not None and rise > LOSS_RISE_FACTOR:
                self._fire("loss_rising", f"training loss rose by {rise - 1:.0%} during the adjustment phase")
            checks.update({
                "rounds": rounds,
                "ranks_moved": self.ranks_moved,
                "ranks_moved_net": self.ranks_moved_net,
                "net_rank_change": net,
                "shortfall": self.shortfall,
                "rank_concentration_top10pct": round(concentration(pattern), 4),
                "nonfinite_after_round": self.nonfinite_after_round,
                "adjustment_loss_ratio": None if rise is None else round(rise, 4),
            })
        checks["fired"] = dict(self.fired)
        checks["warnings"] = list(self.warnings)
        return checks

    def loss_rise(self) -> float | None:
        """Mean loss of the last window of the adjustment phase over that of its first window."""
        losses = self._adjust_losses
        window = min(WINDOW, len(losses) // 2)
        if window < MIN_WINDOW:
            return None
        first = sum(losses[:window]) / window
        last = sum(losses[-window:]) / window
        return last / first if first > 0 else None

    # ------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_steps": self.skipped_steps,
            "ranks_moved": self.ranks_moved,
            "ranks_moved_net": self.ranks_moved_net,
            "shortfall": self.shortfall,
            "nonfinite_after_round": self.nonfinite_after_round,
            "fired": dict(self.fired),
            "warnings": list(self.warnings),
            "initial_pattern": dict(self.initial_pattern),
            "adjust_losses": list(self._adjust_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # .get: checkpoints of the first version lack the newer counters.
        self.skipped_steps = int(state["skipped_steps"])
        self.ranks_moved = int(state.get("ranks_moved", state.get("moved_ranks", 0)))
        self.ranks_moved_net = int(state.get("ranks_moved_net", self.ranks_moved))
        self.shortfall = int(state.get("shortfall", 0))
        self.nonfinite_after_round = int(state["nonfinite_after_round"])
        self.fired = {k: int(v) for k, v in state.get("fired", {}).items()}
        self.warnings = list(state["warnings"])
        self.initial_pattern = {k: int(v) for k, v in state.get("initial_pattern", self.initial_pattern).items()}
        self._adjust_losses = [float(x) for x in state["adjust_losses"]]

    # ---------------------------------------------------------------- helpers
    @property
    def _prune_only(self) -> bool:
        return isinstance(self.allocator, AdaLoRAAllocator)

    def _in_adjustment(self, step: int) -> bool:
        c = self.allocator.config
        return c.warmup_steps < step <= self.allocator.total_steps - c.stabilize_steps

    def _fire(self, check: str, message: str) -> None:
        self.fired[check] = self.fired.get(check, 0) + 1
        if self.fired[check] == 1:
            self.log.warning(message)
            self.warnings.append(message)


def concentration(pattern: dict[str, int]) -> float:
    """Share of the total rank held by the top 10% of adapters (at least one adapter)."""
    ranks = sorted(pattern.values(), reverse=True)
    total = sum(ranks)
    if not total:
        return 0.0
    return sum(ranks[: _top_count(len(ranks))]) / total


def is_concentrated(pattern: dict[str, int]) -> bool:
    """Whether the top 10% hold more than CONCENTRATION_SHARE of the rank and more
    than CONCENTRATION_FACTOR times what they would hold if every adapter had the same rank."""
    if not pattern:
        return False
    uniform = _top_count(len(pattern)) / len(pattern)
    return concentration(pattern) > max(CONCENTRATION_SHARE, CONCENTRATION_FACTOR * uniform)


def net_rank_change(initial: dict[str, int], final: dict[str, int]) -> int:
    """Ranks that ended in another adapter than where they started: sum of the gains."""
    return sum(max(0, final.get(name, 0) - initial.get(name, 0)) for name in set(initial) | set(final))


@torch.no_grad()
def nonfinite_adapters(model) -> list[str]:
    """Names of the adapter layers with a NaN or infinite factor."""
    bad = []
    for name, layer in adapted_layers(model):
        tensors = [layer.lora_A, layer.lora_B] + ([layer.lora_theta] if hasattr(layer, "lora_theta") else [])
        if not all(bool(torch.isfinite(t).all()) for t in tensors):
            bad.append(name)
    return bad


def _top_count(n: int) -> int:
    return max(1, math.ceil(0.1 * n))
