"""Type conversion of configuration values: every key to its dataclass type, with errors
naming the key by its full path (``adapter.rank``), the value and what is allowed."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Mapping

from ..core.config import ConfigError

def _build(cls, values: Mapping[str, Any], prefix: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"invalid value for '{prefix.rstrip('.') or 'config'}': {values!r}; expected a section (a mapping of keys to values)")
    hints = field_types(cls)
    unknown = sorted(set(values) - set(hints), key=str)
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {[prefix + str(k) for k in unknown]} in {where}; allowed: {sorted(hints)}")
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {} if value is None else value, f"{prefix}{name}.")
        else:
            kwargs[name] = _typed(prefix + name, value, hints[name])
    return cls(**kwargs)


# ----------------------------------------------------------------------------- types
LIST_LENGTHS = {"data.mean": 3, "data.std": 3}
"""List keys of a fixed length (one value per RGB channel)."""


def field_types(cls) -> dict[str, Any]:
    """The resolved type annotations of a config dataclass's fields, by field name:
    the one source of what each key accepts."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class _Mismatch(Exception):
    """A value that does not fit a type; the message, if any, says more than the type."""


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the annotated type ``hint`` of the config key ``key`` (its
    full dotted name), or a ``ConfigError`` naming the key, the value and what is allowed.
    Numbers may be spelled any way ``float()`` takes (``3e-3``, ``1e2``, ``.5``, ``1_000``);
    an integer key takes a whole float (``1e2`` -> 100); one string is a one-element list."""
    try:
        return _convert(value, hint, LIST_LENGTHS.get(key))
    except _Mismatch as why:
        reason = f" ({why})" if str(why) else ""
        raise ConfigError(f"invalid value for '{key}': {value!r}; expected {describe_type(hint, key)}{reason}") from None


def _convert(value: Any, hint: Any, length: int | None = None) -> Any:
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        return None if value is None else _convert(value, _without_none(hint), length)
    if value is None:
        raise _Mismatch("null is not allowed here")
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    if origin is list:
        if isinstance(value, str) and args[0] is str:
            value = [value]  # a single target name is a list of one
        if not isinstance(value, (list, tuple)):
            raise _Mismatch()
        if length is not None and len(value) != length:
            raise _Mismatch(f"{len(value)} value(s) given")
        return [_convert(item, args[0]) for item in value]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Mismatch()
        return {k: _convert(v, args[1]) for k, v in value.items()}
    raise TypeError(f"config type {hint!r} has no converter; add one to _convert")


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch()
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Mismatch()
    try:
        number = float(value)
    except ValueError:
        raise _Mismatch() from None
    if not math.isfinite(number):
        raise _Mismatch("it is not finite")
    return number


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    number = _to_float(value)
    if number != int(number):
        raise _Mismatch(f"{number:g} is not a whole number")
    return int(number)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Mismatch("quote it to pass it as text" if isinstance(value, (bool, int, float)) else "")
    return value


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _without_none(hint: Any) -> Any:
    rest = tuple(arg for arg in typing.get_args(hint) if arg is not type(None))
    return rest[0] if len(rest) == 1 else typing.Union[rest]


def describe_type(hint: Any, key: str | None = None) -> str:
    """What a key of type ``hint`` accepts, in words (``"a list of 3 numbers, or null"``)."""
    if type(None) in typing.get_args(hint):
        return f"{describe_type(_without_none(hint), key)}, or null"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Any: "any value"}
    if hint in words:
        return words[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        count = LIST_LENGTHS.get(key or "")
        items = {float: "numbers", int: "integers", str: "strings"}.get(args[0], describe_type(args[0]))
        if count:
            return f"a list of {count} {items}, e.g. [{', '.join(['0.5'] * count)}]"
        return f"a string or a list of {items}" if args[0] is str else f"a list of {items}"
    if typing.get_origin(hint) is dict:
        if args[1] is Any:
            return "a mapping of names to values, e.g. {img_size: 32}"
        if typing.get_args(args[1]) == (str,):
            return "a mapping of names to lists of strings, e.g. {qkv: [q, k, v]}"
        return f"a mapping of names to {args[1]}"
    return repr(hint)


