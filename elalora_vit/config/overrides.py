"""``--set KEY=VALUE``: overrides parsed as bounded YAML and set by dotted key."""

from __future__ import annotations

from typing import Any, Mapping

import yaml

from ..core.config import ConfigError
from .reading import YamlInputError, load_yaml, yaml_error_line

def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-3"`` -> ``("optim.lr", 0.003)``; values are parsed as YAML
    (``[0.5, 0.5, 0.5]``, ``{img_size: 32}``, ``null``), numbers in any spelling
    Python's ``float()`` takes."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=3e-3")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except YamlInputError as err:
        raise ConfigError(f"override {text!r}: {err.rule}") from None
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_line(err, f"override {text!r}")) from None
    return key.strip(), value


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = values
    for i, part in enumerate(parents):
        if node.get(part) is None:  # absent, or left empty in a file (`data:`)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            section = ".".join(parents[: i + 1])
            raise ConfigError(f"cannot set {dotted!r}: {section!r} holds {node!r}, not a section of keys")
    node[last] = value


def _deep_update(base: dict, update: Mapping) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


