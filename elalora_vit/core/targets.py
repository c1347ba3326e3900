"""Finding the modules to adapt (the injection is in :mod:`.inject`).

Targets select modules by their full dotted name (as ``model.named_modules()``
gives it) and never by suffix, so ``"*.attn.proj"`` cannot catch
``patch_embed.proj``.  A target is one of:

- an exact name: ``"blocks.0.attn.qkv"``;
- a glob over the full name (``*``, ``?``, ``[...]``): ``"blocks.*.mlp.fc1"``;
- a regular expression, prefixed ``re:`` and matched in full: ``"re:blocks\\.(0|1)\\..*"``;
- a module type: ``nn.Linear``;
- a predicate ``f(name, module) -> bool``.

A target that matches nothing, or that matches a module that is not an
``nn.Linear`` (or a transformers ``Conv1D``, GPT-2's linear), raises :class:`TargetError` naming the target.

An exclude is a target too, and a name or pattern (glob or ``re:``) may also
name a *part* of a split layer as ``<module>.<part>``: ``"blocks.*.attn.qkv.k"``
leaves k out of every fused qkv split into q, k, v (the usual q/v-only LoRA).
A string exclude must match a module of the model or such a part.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Mapping, Sequence, Union

from torch import nn

from .layer import AdaptedLinear, linear_features

Target = Union[str, type, Callable[[str, nn.Module], bool]]


class TargetError(ValueError):
    """A target specification that does not fit the model."""


def describe_target(target: Target) -> str:
    if isinstance(target, str):
        return repr(target)
    if isinstance(target, type):
        return f"type {target.__name__}"
    return f"predicate {getattr(target, '__name__', repr(target))}"


def target_matches(target: Target, name: str, module: nn.Module) -> bool:
    if isinstance(target, str):
        if target.startswith("re:"):
            return re.fullmatch(target[3:], name) is not None
        if any(ch in target for ch in "*?["):
            return fnmatch.fnmatchcase(name, target)
        return name == target
    if isinstance(target, type):
        return isinstance(module, target)
    if callable(target):
        return bool(target(name, module))
    raise TargetError(f"unsupported target {target!r}: use a name, glob, 're:' regex, module type or predicate")


def match_targets(
    model: nn.Module,
    targets: Sequence[Target],
    exclude: Sequence[Target] = (),
) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` selected by ``targets`` minus ``exclude``.

    Raises :class:`TargetError` when a target matches nothing or matches a
    module that is not an ``nn.Linear``.
    """
    if isinstance(targets, (str, type)) or callable(targets):
        targets = [targets]
    if not targets:
        raise TargetError("no targets given: name the Linear modules to adapt, e.g. ['blocks.*.attn.qkv']")
    modules = [(n, m) for n, m in model.named_modules() if n and not _inside_adapter(n, model)]
    selected: dict[str, None] = {}
    for target in targets:
        hits = [(n, m) for n, m in modules if target_matches(target, n, m)]
        if not hits:
            raise TargetError(_no_match_message(target, [n for n, _ in modules]))
        for name, module in hits:
            if isinstance(module, AdaptedLinear):
                raise TargetError(f"target {describe_target(target)} matches '{name}', which is already adapted")
            if linear_features(module) is None:
                raise TargetError(
                    f"target {describe_target(target)} matches '{name}', a {type(module).__name__}; "
                    "only nn.Linear, transformers Conv1D, ungrouped nn.Conv2d and nn.Embedding modules can be adapted "
                    "(narrow the pattern or add an exclude)"
                )
            selected[name] = None
    for pattern in exclude:
        excluded = [n for n in selected if target_matches(pattern, n, model.get_submodule(n))]
        for name in excluded:
            del selected[name]
    if not selected:
        raise TargetError("every matched module was excluded; nothing to adapt")
    return list(selected)


def _inside_adapter(name: str, model: nn.Module) -> bool:
    # Modules inside an existing adapter layer (its base_layer) are not candidates.
    return ".base_layer" in f".{name}" or name.endswith("base_layer")


def _no_match_message(target: Target, names: list[str]) -> str:
    message = f"target {describe_target(target)} matched no module"
    if isinstance(target, str) and not target.startswith("re:"):
        tail = target.split(".")[-1].strip("*?")
        similar = [n for n in names if tail and n.endswith(tail)][:3]
        if similar:
            message += f"; module names are full dotted paths such as {similar}"
            if "*" not in target:
                message += f" (did you mean '*.{target}'?)"
    return message


def resolve_split(names: Sequence[str], split: Mapping[str, Sequence[str]] | None) -> dict[str, tuple[str, ...]]:
    """Map each selected module name to the part names it is split into.

    A key of ``split`` is a glob, an exact name, or a dotted suffix of the module
    name (``"attn.qkv"`` applies to ``blocks.3.attn.qkv``, never to ``blocks.3.attn.qkv_x``).
    """
    result: dict[str, tuple[str, ...]] = {}
    for key, parts in (split or {}).items():
        parts = tuple(parts)
        if len(parts) < 2 or len(set(parts)) != len(parts) or not all(p and "." not in p for p in parts):
            raise TargetError(f"split {key!r}: give two or more distinct part names without dots, got {list(parts)}")
        hits = [n for n in names if _split_key_matches(key, n)]
        if not hits:
            raise TargetError(f"split key {key!r} applies to none of the targeted modules")
        for name in hits:
            result[name] = parts
    return result


def _split_key_matches(key: str, name: str) -> bool:
    if any(ch in key for ch in "*?["):
        return fnmatch.fnmatchcase(name, key)
    return name == key or name.endswith("." + key)


def resolve_excluded_parts(
    model: nn.Module,
    names: Sequence[str],
    parts_of: Mapping[str, tuple[str, ...]],
    exclude: Sequence[Target],
) -> dict[str, tuple[str, ...]]:
    """Map each selected split module to the parts that ``exclude`` leaves out (in part order).

    A string exclude that names ``<module>.<part>`` of a split module excludes
    that part.  Raises :class:`TargetError` when a string exclude matches neither a
    module of the model nor a part, or when it leaves out every part of a layer.
    """
    excluded: dict[str, set[str]] = {}
    for pattern in exclude:
        if not isinstance(pattern, str):
            continue  # types and predicates select modules, not parts
        hits = [(n, p) for n in names for p in parts_of.get(n, ()) if target_matches(pattern, f"{n}.{p}", None)]
        if not hits and not any(target_matches(pattern, n, m) for n, m in model.named_modules() if n):
            raise TargetError(_unmatched_exclude_message(pattern, names, parts_of))
        for name, part in hits:
            excluded.setdefault(name, set()).add(part)
    for name, parts in excluded.items():
        if set(parts) >= set(parts_of[name]):
            raise TargetError(
                f"exclude leaves out every part {list(parts_of[name])} of '{name}'; to leave the whole "
                f"layer out, exclude '{name}' itself (a module pattern) or drop it from the targets"
            )
    return {name: tuple(p for p in parts_of[name] if p in parts) for name, parts in excluded.items()}


def _unmatched_exclude_message(pattern: str, names: Sequence[str], parts_of: Mapping[str, tuple[str, ...]]) -> str:
    prefix, _, part = pattern.rpartition(".")
    layers = [n for n in names if prefix and target_matches(prefix, n, None)]
    split = [n for n in layers if n in parts_of]
    if split:
        parts = list(parts_of[split[0]])
        return (f"exclude {pattern!r} names part {part!r}, but '{split[0]}' is split into {parts}: "
                f"exclude '{prefix}.<part>' with <part> one of {parts}, or add {part!r} to the split")
    if layers:
        return (f"exclude {pattern!r} names a part of '{layers[0]}', which is not split into parts: split it too, "
                "e.g. split={'attn.qkv': ['q', 'k', 'v']} (model.split in a config), or exclude the whole module")
    example = next((f"{n}.{parts_of[n][0]}" for n in names if n in parts_of), None)
    hint = f" and no part of a split layer (named like '{example}')" if example else ""
    return (f"exclude {pattern!r} matches no module of the model{hint}; "
            f"module names are full dotted paths such as {list(names[:2])}")
