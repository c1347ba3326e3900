"""The three-phase schedule of ElaLoRA (METHOD.md section 3).

Steps are counted from 1: step ``t`` is the ``t``-th optimizer step just taken.

1. warm-up, ``t <= t_warmup``: scores accumulate, ranks stay.
2. adjustment, ``t_warmup < t <= T - t_stabilize``: a round every ``t_adjust`` steps.
3. stabilisation, ``t > T - t_stabilize``: ranks frozen, scores no longer updated.
"""

from __future__ import annotations

import math

from .config import ConfigError, ElaLoRAConfig

WARMUP, ADJUST, STABILIZE = "warmup", "adjust", "stabilize"


def check_schedule(config: ElaLoRAConfig, total_steps: int) -> None:
    """Raise :class:`ConfigError` when the phases do not fit in ``total_steps``."""
    if not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"invalid value for 'total_steps': {total_steps!r}; expected an integer >= 1")
    if config.warmup_steps + config.stabilize_steps >= total_steps:
        raise ConfigError(
            f"warmup_steps ({config.warmup_steps}) + stabilize_steps ({config.stabilize_steps}) "
            f"must be smaller than total_steps ({total_steps}), or no adjustment round can happen"
        )


def phase(step: int, total_steps: int, config: ElaLoRAConfig) -> str:
    if step <= config.warmup_steps:
        return WARMUP
    if step > total_steps - config.stabilize_steps:
        return STABILIZE
    return ADJUST


# The share of b still moved at progress p in [0, 1] of the adjustment phase; every
# shape but constant falls from 1 at the phase's start to 0 at its end.  The names are
# config.SCHEDULE_SHAPES (a test keeps the two in step).
SHAPES = {
    "cubic": lambda p: 1.0 - p**3,  # the paper's: b_t = round(b * (1 - progress^3))
    "linear": lambda p: 1.0 - p,
    "cosine": lambda p: 0.5 * (1.0 + math.cos(math.pi * p)),
    "constant": lambda p: 1.0,
}


def ranks_to_move(step: int, total_steps: int, config: ElaLoRAConfig) -> int:
    """b_t = round(b * shape(progress)), progress through the adjustment phase in [0, 1]
    and ``shape`` the config's ``schedule`` (:data:`SHAPES`); cubic is the paper's.

    Halves round up, so the value does not depend on banker's rounding.
    """
    progress = adjustment_progress(step, total_steps, config)
    return int(math.floor(config.b * SHAPES[config.schedule](progress) + 0.5))


def adjustment_progress(step: int, total_steps: int, config: ElaLoRAConfig) -> float:
    """How far step ``step`` is through the adjustment phase: 0 up to its start, 1 from its end."""
    span = total_steps - config.stabilize_steps - config.warmup_steps
    return min(max((step - config.warmup_steps) / span, 0.0), 1.0)


def is_adjustment_step(step: int, total_steps: int, config: ElaLoRAConfig) -> bool:
    return (
        phase(step, total_steps, config) == ADJUST
        and (step - config.warmup_steps) % config.adjust_interval == 0
    )


def scores_are_updated(step: int, total_steps: int, config: ElaLoRAConfig) -> bool:
    """Importance is tracked from the first step until stabilisation begins."""
    return phase(step, total_steps, config) != STABILIZE


def adjustment_steps(total_steps: int, config: ElaLoRAConfig) -> list[int]:
    """All steps at which a round is scheduled (rounds with b_t = 0 included)."""
    return [t for t in range(1, total_steps + 1) if is_adjustment_step(t, total_steps, config)]
