"""The checks of a run's configuration, in one place: the values' bounds and rules, each a
``ConfigError`` naming the key, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import math
import re
from typing import TYPE_CHECKING, Any

from ..core.config import ConfigError, check_adapter_values, check_value
from .convert import _typed, field_types

if TYPE_CHECKING:
    from .schema import TrainConfig


def check_batch_fits(batch_size: int, images: int, processes: int, split: str) -> None:
    """``optim.batch_size`` (per process) times the processes may not exceed the training
    images: a step of more would be filled by repeating images (the loop wraps its order to
    fill every step), so the run would not be the one the settings describe."""
    bound = images // max(processes, 1)
    where = f"the {images} images of {split}" + (f" shared by {processes} processes" if processes > 1 else "")
    check_value(batch_size <= bound, "optim.batch_size", batch_size, f"at most {bound} ({where})")

def _check_adapter(cfg: TrainConfig) -> None:
    """The core's checks of the adapter values, its errors naming the config keys
    (``adapter.rank``, not the core's ``rank``)."""
    for name in ("warmup", "adjust_interval", "stabilize"):
        _check_whole_steps(getattr(cfg.adapter, name), f"adapter.{name}")
    try:
        check_adapter_values(cfg.adapter)
    except ConfigError as err:
        match = re.match(r"invalid value for '(\w+)'", str(err))
        if match is None:
            raise
        # check_adapter_values names the adapter fields, each adapter.<field> here
        raise ConfigError(str(err).replace(f"'{match[1]}'", f"'adapter.{match[1]}'", 1)) from None


def _normalise(cfg: TrainConfig) -> None:
    """Type-check and convert every key of ``cfg`` in place (a config built in Python,
    not through ``from_dict``, gets the same checks), and name the task canonically."""
    _convert_fields(cfg, "")
    if cfg.data.source in ("folder", "tfds", "digits"):  # a bad source is reported by validate()
        cfg.data.task = canonical_task(cfg.data.task, cfg.data.source)


def _convert_fields(section: Any, prefix: str) -> None:
    for name, hint in field_types(type(section)).items():
        value = getattr(section, name)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"invalid value for '{prefix}{name}': {value!r}; expected a {hint.__name__}")
            _convert_fields(value, f"{prefix}{name}.")
        else:
            setattr(section, name, _typed(prefix + name, value, hint))


def canonical_task(name: str, source: str = "folder") -> str:
    """The folder name of the task ``name`` (an alias such as ``cifar100`` -> ``cifar``), so
    output folders and results use one name per task whatever the user typed."""
    from ..data import UnknownTaskError, resolve_task  # the data layer (torch, PIL) only when needed

    try:
        return resolve_task(name, source).name
    except UnknownTaskError as err:
        raise UnknownTaskError(f"invalid value for 'data.task': {err}") from None


def _allowed(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"invalid value for '{key}': {value!r}; allowed: {', '.join(allowed)}")


MAX_EPOCHS = 100_000
"""More epochs than any run needs: a bound, so that a typo (``1e30``) is refused, not planned."""


def _positive_int(key: str, value: Any) -> None:
    check_value(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")


def steps_of(value: float, total_steps: int, key: str = "schedule length") -> int:
    """``value`` steps when >= 1, else that fraction of ``total_steps`` (rounded)."""
    if value >= 1:
        _check_whole_steps(value, key)
        return int(value)
    return int(math.floor(value * total_steps + 0.5))


def _check_whole_steps(value: float, key: str) -> None:
    # A length >= 1 counts steps, so it cannot hold a fraction of one.
    if value >= 1 and value != int(value):
        raise ConfigError(f"invalid value for '{key}': {value!r}; expected a whole number of steps (>= 1) "
                          "or a fraction of the run (< 1)")


