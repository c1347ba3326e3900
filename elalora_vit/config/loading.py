"""Loading a run's configuration: the defaults, a YAML file with its ``base:`` chain (read by
the bounded reader of :mod:`.reading`), then dotted overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from ..core.config import ConfigError
from .overrides import _deep_update, _set_dotted
from .reading import ConfigInputError, read_yaml_file
from .schema import TrainConfig

def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, updated by the YAML file ``path`` (if any), then by ``overrides``
    (dotted keys such as ``{"optim.lr": 3e-3}``)."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(values, dotted, value)
    return TrainConfig.from_dict(values).validate()


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in the YAML file ``path``, merged over its ``base:`` file (if any,
    relative to ``path``, recursively)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{_included_by(_chain)}")
    try:
        values = read_yaml_file(path) or {}
    except ConfigInputError as err:
        raise ConfigError(f"config file {err}{_included_by(_chain)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(values).__name__}")
    base = values.pop("base", None)
    if base is not None:  # presets build on another file, relative to this one
        merged = read_yaml(_base_path(path, base, _chain), (*_chain, path))
        _deep_update(merged, values)
        values = merged
    return values


def _base_path(path: Path, base: Any, chain: tuple[Path, ...]) -> Path:
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file {path}: 'base' must name a YAML file (relative to {path.parent}), not {base!r}")
    resolved = (path.parent / base).resolve()
    if resolved in {p.resolve() for p in (*chain, path)}:
        raise ConfigError(f"config file {path}: 'base: {base}' includes itself (through {' -> '.join(map(str, chain))})")
    return resolved


def _included_by(chain: tuple[Path, ...]) -> str:
    if not chain:
        return ""
    return f" (the 'base:' of {chain[-1]}; 'base:' paths are relative to the file that names them)"


