"""Grids of settings in a sweep: the paper's studies (k, b, the schedule, the EMA
factors, gamma ...) as variants of a method.

``--grid adapter.b=2,4 --grid adapter.k=1,2`` (or, in a ``--config`` file,
``grid: {adapter.b: [2, 4], adapter.k: [1, 2]}``) expands every selected method
into one variant per combination, named by its values:
``elalora[adapter.b=2,adapter.k=1]``.  A variant is a method of its own for the
sweep and the report: its own folder ``<output>/<task>/<variant>/seed<N>`` (so
it resumes and shards like every run) and its own column.  The method without
the grid (the default setting) is always planned too: every variant is compared
with it, task by task.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from ..core.config import ConfigError
from ..config import ADAPTER_METHODS, parse_override

GRID_KEY = "grid"
"""The key of a --config file that holds a grid (it is not a setting of the runs)."""


@dataclass(frozen=True)
class Variant:
    """One combination of a grid's values: ``settings`` are (dotted key, value) pairs,
    sorted by key; the default setting has none."""

    settings: tuple[tuple[str, Any], ...] = ()

    @property
    def suffix(self) -> str:
        """``[adapter.b=2,adapter.k=1]``, or ``""`` for the default setting."""
        if not self.settings:
            return ""
        return "[" + ",".join(f"{key}={format_value(value)}" for key, value in self.settings) + "]"

    def label(self, method: str) -> str:
        """The variant's name as a method: ``elalora[adapter.b=2,adapter.k=1]``."""
        return method + self.suffix

    def overrides(self) -> dict[str, Any]:
        return dict(self.settings)

    def applies_to(self, method: str) -> bool:
        """Adapter settings vary only the methods that have adapters (not full, linear)."""
        return all(not key.startswith("adapter.") for key, _ in self.settings) or method in ADAPTER_METHODS


def format_value(value: Any) -> str:
    """A value as the variant's name shows it (YAML spelling: true, 0.001, cosine);
    '/' (a path separator) becomes '_' so that the name is one folder."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = format(value, "g")
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        text = json.dumps(value, separators=(",", ":"))
    return text.replace("/", "_")


def base_method(label: str) -> str:
    """The method of a variant's name: ``elalora[adapter.b=2]`` -> ``elalora``."""
    return label.split("[", 1)[0]


def is_variant(label: str) -> bool:
    return "[" in label and label.endswith("]")


def parse_grid(options: Iterable[str]) -> dict[str, list[Any]]:
    """``["adapter.b=2,4", "adapter.schedule=cubic,linear"]`` -> ``{"adapter.b": [2, 4], ...}``;
    each value is read as YAML, like --set's (and 1e-3 as a number)."""
    grid: dict[str, list[Any]] = {}
    for text in options:
        key, sep, raw = text.partition("=")
        if not sep or not key.strip() or not raw.strip():
            raise ConfigError(f"--grid {text!r} must look like KEY=V1,V2[,...], e.g. --grid adapter.b=2,4")
        key = key.strip()
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice; give all its values in one --grid {key}=V1,V2")
        grid[key] = [_value(key, word) for word in raw.split(",")]
    return grid


def _value(key: str, word: str) -> Any:
    value = parse_override(f"{key}={word.strip()}")[1]
    if isinstance(value, str):  # YAML 1.1 reads 1e-3 as text; in a grid of numbers it is a number
        try:
            return float(value)
        except ValueError:
            pass
    return value


def grid_from_config(values: Any) -> dict[str, list[Any]]:
    """The ``grid:`` mapping of a config file, with dotted keys (``adapter.b: [2, 4]``) or
    sections (``adapter: {b: [2, 4]}``); a single value counts as a list of one."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"'grid' must map settings to lists of values, e.g. grid: {{adapter.b: [2, 4]}}; got {values!r}")
    grid: dict[str, list[Any]] = {}
    for key, value in values.items():
        if isinstance(value, Mapping):
            grid.update({f"{key}.{k}": v for k, v in grid_from_config(value).items()})
        else:
            grid[str(key)] = list(value) if isinstance(value, (list, tuple)) else [value]
    return grid


def expand_grid(grid: Mapping[str, Sequence[Any]], reserved: Mapping[str, str] | None = None) -> list[Variant]:
    """The default setting, then one :class:`Variant` per combination of ``grid``'s values
    (keys sorted, values in the order given).  ``reserved``: keys the sweep sets per run,
    with the option to use instead."""
    for key, values in grid.items():
        if reserved and key in reserved:
            raise ConfigError(f"the sweep sets {key!r} for each run; choose it with {reserved[key]}, not a grid")
        if not values:
            raise ConfigError(f"grid key {key!r} has no values; give one or more, e.g. {key}=V1,V2")
    keys = sorted(grid)
    variants = [Variant()]
    if not keys:
        return variants
    for combination in itertools.product(*(list(dict.fromkeys(map(_hashable, grid[k]))) for k in keys)):
        variants.append(Variant(tuple(zip(keys, (_unhashable(v) for v in combination)))))
    return variants


def _hashable(value: Any) -> Any:
    # Repeated values are dropped (dict.fromkeys); lists and mappings are compared as JSON.
    return value if isinstance(value, (str, int, float, bool, type(None))) else ("json", json.dumps(value, sort_keys=True))


def _unhashable(value: Any) -> Any:
    return json.loads(value[1]) if isinstance(value, tuple) and value[:1] == ("json",) else value
