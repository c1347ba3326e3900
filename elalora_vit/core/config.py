"""Configuration of the adapters and of the rank allocator.

One dataclass holds everything the core needs; defaults live here and only here.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import InitVar, dataclass
from typing import Any, Mapping

SCHEDULE_SHAPES = ("cubic", "linear", "cosine", "constant")
"""How b_t decays over the adjustment phase (``ElaLoRAConfig.schedule``); the formulas
live in :mod:`elalora_vit.core.schedule`."""


INITS = ("lora", "orthogonal", "gaussian")
"""How an SVD adapter's factors start (``ElaLoRAConfig.init``): ``lora`` (LoRA's start: Q's
rows as LoRA's A, P = 0, lambda = 1), ``orthogonal`` (orthonormal P and Q, lambda = 0) or
``gaussian`` (P, Q ~ N(0, init_std^2), lambda = 0, as AdaLoRA)."""


class ConfigError(ValueError):
    """An invalid configuration value: the message names the key and what is allowed."""


def setting(default: Any, doc: str) -> Any:
    """A config field with its default and its one-line documentation (``field_docs``);
    ``configs/default.yaml`` shows the same line as the key's comment."""
    return dataclasses.field(default=default, metadata={"doc": doc})


def field_docs(config_class: type) -> dict[str, str]:
    """The one-line documentation of every field of a config dataclass, by name."""
    return {f.name: f.metadata.get("doc", "") for f in dataclasses.fields(config_class)}


def document_fields(config_class: type) -> type:
    """Append the field docs to the class docstring, so ``help()`` shows them."""
    lines = [f"        {f.name} (default {f.default!r}): {f.metadata.get('doc', '')}" for f in dataclasses.fields(config_class)]
    config_class.__doc__ = (config_class.__doc__ or "").rstrip() + "\n\n    Fields:\n" + "\n".join(lines) + "\n"
    return config_class


@document_fields
@dataclass
class ElaLoRAConfig:
    """Hyper-parameters of ElaLoRA (METHOD.md sections 1-4); every schedule length
    is counted in optimizer steps.  Each field's default and meaning are declared
    once, below; the training config's adapter section is derived from them.

    Why these defaults (``init="lora"``, ``lambda_lr_multiplier=1``): each adapter starts
    as LoRA starts, in SVD form: Q's active rows are LoRA's A (uniform in +-1/sqrt(d_in)),
    P = 0 as LoRA's B and lambda = 1, so the function is unchanged at init and P has a
    gradient from the first step; a grown rank starts the same way (a unit row of Q
    orthogonal to the active ones, P's column 0, lambda 1).  METHOD.md's start (lambda = 0,
    P and Q random) gives no factor a gradient until lambda moves; the previous defaults
    made up for it with a 20x faster lambda, and that speed-up was measured to be what cost
    the SVD form about 1.4 points against LoRA with no reallocation: lambda moved ~20 x lr a
    step and shook every singular value.  With LoRA's start the SVD form with no
    reallocation is level with LoRA at widths 64 and 192, and with reallocation the new
    defaults are ahead of the previous ones where they were chosen (+1.2 points, beyond
    noise).  See BENCHMARKS.md, "Where the SVD form loses" and "The defaults become LoRA's
    start".  ``init="orthogonal"`` with ``lambda_lr_multiplier=20`` are the previous
    defaults.

    ``lambda_lr_multiplier`` lives in the adapter, not in the optimizer: the layer
    stores ``lambda = s * theta`` with the fixed scale ``s = lambda_lr_multiplier``
    (the buffer ``lambda_scale``) and trains ``theta``, so under Adam-type optimizers
    ``lambda`` moves ``s`` times as far per step as with ``s = 1``, whatever
    optimizer, LR schedule or trainer is built over ``model.parameters()`` (under
    plain SGD the speed-up is ``s^2``). The function at init and the importance
    scores do not depend on it.

    ``cubic_schedule`` (deprecated, not a field) is still accepted: true is
    ``schedule="cubic"``, false ``schedule="constant"``, with a ``FutureWarning``.
    """

    rank: int = setting(8, "initial number of active ranks of every adapter (r)")
    max_rank: int | None = setting(None, "fixed capacity of every adapter; 2 x rank when unset")
    alpha: float = setting(16.0, "scaling = alpha / rank (fixed when ranks change)")
    dropout: float = setting(0.0, "dropout on the adapter input (0 disables it)")
    init: str = setting(
        "lora", "lora (Q as LoRA's A, P = 0, lambda = 1; grown ranks alike) | orthogonal (orthonormal P, Q, "
        "lambda = 0) | gaussian (std init_std, lambda = 0, as AdaLoRA)")
    init_std: float = setting(0.02, "std of the random P and Q when init is gaussian")
    lambda_lr_multiplier: float = setting(
        1.0, "lambda learns this much faster: the adapter stores lambda = this x theta (SVD adapters)")
    k: int = setting(2, "candidates offered per adapter per round")
    b: int = setting(4, "ranks moved per round at the start of the adjustment phase")
    beta1: float = setting(0.85, "EMA factor of the sensitivity")
    beta2: float = setting(0.85, "EMA factor of the uncertainty")
    warmup_steps: int = setting(500, "t_warmup, the warm-up phase (scores accumulate, ranks stay)")
    adjust_interval: int = setting(150, "t_adjust, the interval between rounds")
    stabilize_steps: int = setting(1500, "t_stabilize, the final phase (ranks frozen)")
    schedule: str = setting("cubic", "how b_t decays to 0 over the adjustment phase: cubic | linear | cosine | constant (stays b)")
    orth_reg_weight: float = setting(0.1, "gamma, weight of the orthogonal regulariser (SVD adapters)")
    seed: int = setting(0, "seeds the initialisation and the random directions of expanded ranks")
    # Deprecated boolean form of ``schedule`` (true: cubic, false: constant); not a field.
    cubic_schedule: InitVar[bool | None] = None

    def __post_init__(self, cubic_schedule: bool | None) -> None:
        if cubic_schedule is not None:
            given = {"schedule": self.schedule} if self.schedule != "cubic" else {}
            upgraded = upgrade_schedule_key({**given, "cubic_schedule": cubic_schedule}, stacklevel=4)
            self.schedule = upgraded["schedule"]
        if self.max_rank is None:
            self.max_rank = 2 * self.rank
        self.validate()

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank

    def validate(self) -> None:
        check_adapter_values(self)
        for name in ("warmup_steps", "stabilize_steps"):
            value = getattr(self, name)
            check_value(isinstance(value, int) and value >= 0, name, value, "an integer >= 0")
        check_value(
            isinstance(self.adjust_interval, int) and self.adjust_interval >= 1,
            "adjust_interval",
            self.adjust_interval,
            "an integer >= 1",
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, warn: bool = True) -> "ElaLoRAConfig":
        """The config of ``values`` (as :meth:`to_dict` writes it).  The deprecated key
        ``cubic_schedule`` is read as ``schedule``; ``warn=False`` reads it quietly, for
        files written by older versions (adapter files, checkpoints)."""
        values = upgrade_schedule_key(values, warn=warn)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown ElaLoRA config key(s) {unknown}; allowed keys: {sorted(known)}"
            )
        return cls(**dict(values))


def upgrade_schedule_key(
    values: Mapping[str, Any], *, warn: bool = True, where: str = "", stacklevel: int = 3
) -> dict[str, Any]:
    """``values`` with the deprecated boolean ``cubic_schedule`` replaced by ``schedule``
    (true: ``cubic``, false: ``constant``); ``where`` prefixes the key in messages
    (``"adapter."``); ``stacklevel`` points the warning at the caller.  Raises
    :class:`ConfigError` when both are given and disagree."""
    values = dict(values)
    if "cubic_schedule" not in values:
        return values
    old = values.pop("cubic_schedule")
    if not isinstance(old, bool):
        raise ConfigError(f"invalid value for '{where}cubic_schedule': {old!r}; expected true or false "
                          f"(deprecated: use {where}schedule: cubic | linear | cosine | constant)")
    shape = "cubic" if old else "constant"
    if values.get("schedule", shape) != shape:
        raise ConfigError(f"'{where}cubic_schedule: {str(old).lower()}' contradicts '{where}schedule: "
                          f"{values['schedule']}'; drop the deprecated cubic_schedule")
    if warn:
        warnings.warn(f"'{where}cubic_schedule' is deprecated; write '{where}schedule: {shape}' instead "
                      f"(one of {', '.join(SCHEDULE_SHAPES)})", FutureWarning, stacklevel=stacklevel)
    values["schedule"] = shape
    return values


def check_adapter_values(values: Any) -> None:
    """Check the adapter and allocation values of ``values`` (every
    :class:`ElaLoRAConfig` field but the schedule and the seed), an ElaLoRAConfig or
    any object with those attributes, such as the training config's adapter section.
    ``max_rank=None`` stands for ``2 * rank``.  Raises :class:`ConfigError`."""
    v = values
    check_value(isinstance(v.rank, int) and v.rank >= 1, "rank", v.rank, "an integer >= 1")
    if v.max_rank is not None:
        check_value(
            isinstance(v.max_rank, int) and v.max_rank >= v.rank,
            "max_rank",
            v.max_rank,
            f"an integer >= rank ({v.rank})",
        )
    check_value(v.alpha > 0, "alpha", v.alpha, "a number > 0")
    check_value(0.0 <= v.dropout < 1.0, "dropout", v.dropout, "a number in [0, 1)")
    check_value(v.init in INITS, "init", v.init, " | ".join(INITS))
    check_value(v.init_std > 0, "init_std", v.init_std, "a number > 0")
    check_value(v.lambda_lr_multiplier > 0, "lambda_lr_multiplier", v.lambda_lr_multiplier, "a number > 0")
    check_value(isinstance(v.k, int) and v.k >= 1, "k", v.k, "an integer >= 1")
    check_value(isinstance(v.b, int) and v.b >= 0, "b", v.b, "an integer >= 0")
    for name in ("beta1", "beta2"):
        value = getattr(v, name)
        check_value(0.0 <= value < 1.0, name, value, "a number in [0, 1)")
    check_value(v.schedule in SCHEDULE_SHAPES, "schedule", v.schedule, " | ".join(SCHEDULE_SHAPES))
    check_value(v.orth_reg_weight >= 0, "orth_reg_weight", v.orth_reg_weight, "a number >= 0")


def check_value(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` naming ``key``, ``value`` and what is ``allowed`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"invalid value for '{key}': {value!r}; expected {allowed}")
