"""Allocation health checks: the ways rank reallocation fails, warned as they happen
and summarised in ``result.json``.

- non-finite steps (skipped, counted);
- non-finite adapter values right after a round;
- all rank flowing into a few adapters (concentration);
- no rank moving at all over the adjustment phase;
- training loss rising during the adjustment phase.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch

from ..core import RoundRecord, adapted_layers

# Concentration: warn when the top 10% of adapters hold more than this share of the total rank.
CONCENTRATION_SHARE = 0.5
# Loss rising: warn when the mean loss of the last adjustment window exceeds the first by this factor.
LOSS_RISE_FACTOR = 1.10
WINDOW = 20
MAX_WARNINGS = 50


class HealthMonitor:
    def __init__(self, allocator, logger: logging.Logger | None = None):
        self.allocator = allocator
        self.log = logger or logging.getLogger(__name__)
        self.skipped_steps = 0
        self.warnings: list[str] = []
        self.moved_ranks = 0
        self.nonfinite_after_round = 0
        self._adjust_losses: list[float] = []

    # ----------------------------------------------------------------- events
    def after_step(self, step: int, loss: float | None, skipped: bool) -> None:
        if skipped:
            self.skipped_steps += 1
            self._warn(f"step {step}: non-finite loss or gradient, step skipped ({self.skipped_steps} so far)")
            return
        if self.allocator is not None and self._in_adjustment(step) and loss is not None:
            self._adjust_losses.append(loss)

    @torch.no_grad()
    def after_round(self, record: RoundRecord, model) -> None:
        self.moved_ranks += len(record.expanded)
        bad = [
            name
            for name, layer in adapted_layers(model)
            if not all(bool(torch.isfinite(p).all()) for p in (layer.lora_A, layer.lora_B, getattr(layer, "lora_E", layer.lora_A)))
        ]
        if bad:
            self.nonfinite_after_round += 1
            self._warn(f"step {record.step}: non-finite adapter values after a round in {bad[:3]}")
        share = concentration(record.rank_pattern)
        if share > CONCENTRATION_SHARE:
            self._warn(
                f"step {record.step}: the top 10% of adapters hold {share:.0%} of the total rank; "
                "rank is concentrating in a few adapters (consider a smaller b or max_rank)"
            )

    # ---------------------------------------------------------------- summary
    def summary(self) -> dict[str, Any]:
        checks: dict[str, Any] = {"skipped_steps": self.skipped_steps, "warnings": list(dict.fromkeys(self.warnings))}
        if self.allocator is None:
            return checks
        pattern = self.allocator.rank_pattern()
        checks["rank_concentration_top10pct"] = round(concentration(pattern), 4)
        checks["ranks_moved"] = self.moved_ranks
        checks["rounds"] = len(self.allocator.history)
        checks["nonfinite_after_round"] = self.nonfinite_after_round
        rise = self.loss_rise()
        checks["adjustment_loss_ratio"] = None if rise is None else round(rise, 4)
        if self.allocator.history and self.moved_ranks == 0 and "expand" in _kind(self.allocator):
            self._warn("no rank moved during the adjustment phase (all adapters at capacity, or b too small)")
        if rise is not None and rise > LOSS_RISE_FACTOR:
            self._warn(f"training loss rose by {rise - 1:.0%} during the adjustment phase")
        checks["warnings"] = list(dict.fromkeys(self.warnings))
        return checks

    def loss_rise(self) -> float | None:
        losses = self._adjust_losses
        if len(losses) < 2 * WINDOW:
            return None
        first = sum(losses[:WINDOW]) / WINDOW
        last = sum(losses[-WINDOW:]) / WINDOW
        return last / first if first > 0 else None

    def state_dict(self) -> dict[str, Any]:
        return {
            "skipped_steps": self.skipped_steps,
            "warnings": list(self.warnings),
            "moved_ranks": self.moved_ranks,
            "nonfinite_after_round": self.nonfinite_after_round,
            "adjust_losses": list(self._adjust_losses),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        self.warnings = list(state["warnings"])
        self.moved_ranks = int(state["moved_ranks"])
        self.nonfinite_after_round = int(state["nonfinite_after_round"])
        self._adjust_losses = [float(x) for x in state["adjust_losses"]]

    # ---------------------------------------------------------------- helpers
    def _in_adjustment(self, step: int) -> bool:
        c = self.allocator.config
        return c.warmup_steps < step <= self.allocator.total_steps - c.stabilize_steps

    def _warn(self, message: str) -> None:
        if message in self.warnings:
            return
        self.log.warning(message)
        if len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)


def concentration(pattern: dict[str, int]) -> float:
    """Share of the total rank held by the top 10% of adapters (at least one adapter)."""
    ranks = sorted(pattern.values(), reverse=True)
    total = sum(ranks)
    if not total:
        return 0.0
    top = max(1, math.ceil(0.1 * len(ranks)))
    return sum(ranks[:top]) / total


def _kind(allocator) -> str:
    return "prune-only" if type(allocator).__name__ == "AdaLoRAAllocator" else "prune-and-expand"
