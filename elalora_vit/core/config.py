"""Configuration of the adapters and of the rank allocator.

One dataclass holds everything the core needs; defaults live here and only here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping


class ConfigError(ValueError):
    """An invalid configuration value: the message names the key and what is allowed."""


@dataclass
class ElaLoRAConfig:
    """Hyper-parameters of ElaLoRA (METHOD.md sections 1-4).

    Adapter shape:
        rank: initial number of active ranks of every adapter (``r``).
        max_rank: fixed capacity of every adapter; ``None`` means ``2 * rank``.
        alpha: the update is scaled by ``alpha / rank`` (fixed when ranks change).
        dropout: dropout on the adapter input (0 disables it).
        init_std: std of the random initialisation of ``P`` and ``Q`` when
            ``init="gaussian"``.
        init: ``"orthogonal"`` (orthonormal rows of ``Q`` and columns of ``P``,
            the default) or ``"gaussian"`` (N(0, init_std^2), as AdaLoRA and the
            reference code).
        lambda_lr_multiplier: how much faster the singular values ``lambda``
            learn than the other adapter parameters.  It lives in the adapter,
            not in the optimizer: the layer stores ``lambda = s * theta`` with
            the fixed scale ``s = lambda_lr_multiplier`` (the buffer
            ``lambda_scale``) and trains ``theta``, so under Adam-type
            optimizers ``lambda`` moves ``s`` times as far per step as with
            ``s = 1``, whatever optimizer, LR schedule or trainer is built over
            ``model.parameters()``.  (Under plain SGD the speed-up is ``s^2``.)
            The function at init and the importance scores do not depend on it.

    Why these defaults (``init="orthogonal"``, ``lambda_lr_multiplier=20``): with
    ``lambda = 0`` and P, Q ~ N(0, 0.02^2), the update ``P diag(lambda) Q`` grows as
    the product of three small factors, and under Adam a directly trained ``lambda`` would move by only
    about ``lr`` per step, while LoRA's ``B`` moves by ``lr`` in every one of its
    ``d_out`` entries.  At LoRA's learning rate the old defaults (gaussian, x1)
    trailed LoRA by 8 points in ``benchmarks/transfer.py``; unit-norm directions
    and a faster ``lambda`` close the gap and keep the method's semantics (the
    function is unchanged at init, scores are computed as before).  See
    BENCHMARKS.md, "Transfer learning: ElaLoRA vs LoRA at equal budget".

    Allocation (all counted in optimizer steps):
        k: each adapter offers its ``k`` weakest active ranks as candidates.
        b: ranks moved per adjustment round at the start of the adjustment phase;
            decays cubically to 0 (``cubic_schedule=True``) or stays constant.
        beta1, beta2: EMA factors of sensitivity and uncertainty.
        warmup_steps (t_warmup), adjust_interval (t_adjust), stabilize_steps
            (t_stabilize): the three-phase schedule.
        orth_reg_weight: gamma, weight of :func:`orthogonal_regularization`.
        seed: seeds the random directions of expanded ranks.
    """

    rank: int = 8
    max_rank: int | None = None
    alpha: float = 16.0
    dropout: float = 0.0
    init: str = "orthogonal"
    init_std: float = 0.02
    lambda_lr_multiplier: float = 20.0
    k: int = 2
    b: int = 4
    beta1: float = 0.85
    beta2: float = 0.85
    warmup_steps: int = 500
    adjust_interval: int = 150
    stabilize_steps: int = 1500
    cubic_schedule: bool = True
    orth_reg_weight: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_rank is None:
            self.max_rank = 2 * self.rank
        self.validate()

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        _check(isinstance(self.rank, int) and self.rank >= 1, "rank", self.rank, "an integer >= 1")
        _check(
            isinstance(self.max_rank, int) and self.max_rank >= self.rank,
            "max_rank",
            self.max_rank,
            f"an integer >= rank ({self.rank})",
        )
        _check(self.alpha > 0, "alpha", self.alpha, "a number > 0")
        _check(0.0 <= self.dropout < 1.0, "dropout", self.dropout, "a number in [0, 1)")
        _check(self.init in ("gaussian", "orthogonal"), "init", self.init, "'gaussian' or 'orthogonal'")
        _check(self.init_std > 0, "init_std", self.init_std, "a number > 0")
        _check(self.lambda_lr_multiplier > 0, "lambda_lr_multiplier", self.lambda_lr_multiplier, "a number > 0")
        _check(isinstance(self.k, int) and self.k >= 1, "k", self.k, "an integer >= 1")
        _check(isinstance(self.b, int) and self.b >= 0, "b", self.b, "an integer >= 0")
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _check(0.0 <= value < 1.0, name, value, "a number in [0, 1)")
        for name in ("warmup_steps", "stabilize_steps"):
            value = getattr(self, name)
            _check(isinstance(value, int) and value >= 0, name, value, "an integer >= 0")
        _check(
            isinstance(self.adjust_interval, int) and self.adjust_interval >= 1,
            "adjust_interval",
            self.adjust_interval,
            "an integer >= 1",
        )
        _check(self.orth_reg_weight >= 0, "orth_reg_weight", self.orth_reg_weight, "a number >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ElaLoRAConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown ElaLoRA config key(s) {unknown}; allowed keys: {sorted(known)}"
            )
        return cls(**dict(values))


def _check(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"invalid value for '{key}': {value!r}; expected {allowed}")

