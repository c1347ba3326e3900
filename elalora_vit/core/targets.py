"""Finding the modules to adapt, and swapping them for adapter layers.

Targets select modules by their full dotted name (as ``model.named_modules()``
gives it) and never by suffix, so ``"*.attn.proj"`` cannot catch
``patch_embed.proj``.  A target is one of:

- an exact name: ``"blocks.0.attn.qkv"``;
- a glob over the full name (``*``, ``?``, ``[...]``): ``"blocks.*.mlp.fc1"``;
- a regular expression, prefixed ``re:`` and matched in full: ``"re:blocks\\.(0|1)\\..*"``;
- a module type: ``nn.Linear``;
- a predicate ``f(name, module) -> bool``.

A target that matches nothing, or that matches a module that is not an
``nn.Linear``, raises :class:`TargetError` naming the target.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, Iterator, Mapping, Sequence, Union

import torch
from torch import nn

from .config import ElaLoRAConfig
from .layer import AdaptedLinear, AdapterRef, LoRALinear, SVDLinear
from .watch import watch_layers

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
            if not isinstance(module, nn.Linear):
                raise TargetError(
                    f"target {describe_target(target)} matches '{name}', a {type(module).__name__}; "
                    "only nn.Linear modules can be adapted (narrow the pattern or add an exclude)"
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


def patch_model(
    model: nn.Module,
    targets: Sequence[Target],
    config: ElaLoRAConfig | None = None,
    *,
    split: Mapping[str, Sequence[str]] | None = None,
    exclude: Sequence[Target] = (),
    method: str = "elalora",
    freeze_base: bool = True,
) -> list[AdapterRef]:
    """Wrap the targeted ``nn.Linear`` modules of ``model`` in adapter layers, in place.

    Args:
        model: any ``nn.Module``.
        targets: which Linear modules to adapt (see the module docstring).
        config: adapter hyper-parameters; defaults to ``ElaLoRAConfig()``.
        split: fused projections to adapt as separate equal parts, e.g.
            ``{"attn.qkv": ["q", "k", "v"]}``; each part gets its own adapter.
        exclude: targets to leave out of the selection.
        method: ``"elalora"`` (SVD form with a rank mask, for the rank allocators)
            or ``"lora"`` (fixed-rank ``B A`` form).
        freeze_base: freeze every parameter of ``model`` not created here.

    Returns:
        The adapters in model order, one per part.
    """
    config = config or ElaLoRAConfig()
    if method not in ("elalora", "lora"):
        raise TargetError(f"unknown adapter method {method!r}; expected 'elalora' or 'lora'")
    names = match_targets(model, targets, exclude)
    parts_of = resolve_split(names, split)
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    for name in names:
        base = model.get_submodule(name)
        parts = parts_of.get(name)
        if method == "elalora":
            layer: AdaptedLinear = SVDLinear(
                base,
                parts,
                rank=config.rank,
                capacity=config.max_rank,
                scaling=config.scaling,
                dropout=config.dropout,
                init=config.init,
                init_std=config.init_std,
                generator=generator,
                lambda_scale=config.lambda_lr_multiplier,
            )
        else:
            layer = LoRALinear(base, parts, config.rank, config.scaling, config.dropout, generator)
        _set_submodule(model, name, layer)
    if method == "elalora":
        watch_layers([model.get_submodule(n) for n in names], config.warmup_steps)
    return find_adapters(model)


def unpatch_model(model: nn.Module, merge: bool = False) -> nn.Module:
    """Put the original ``nn.Linear`` modules back (merging the updates first if ``merge``)."""
    for name, layer in list(_adapted_layers(model)):
        if merge:
            layer.merge()
        elif layer.merged:
            layer.unmerge()
        _set_submodule(model, name, layer.base_layer)
    return model


def find_adapters(model: nn.Module, kind: type = AdaptedLinear) -> list[AdapterRef]:
    """Every adapter of ``model``, named ``<module>`` or ``<module>.<part>``."""
    refs = []
    for name, layer in _adapted_layers(unwrap_model(model)):
        if not isinstance(layer, kind):
            continue
        for index, part in enumerate(layer.part_names):
            refs.append(AdapterRef(name if part is None else f"{name}.{part}", layer, index))
    return refs


def adapted_layers(model: nn.Module) -> list[tuple[str, AdaptedLinear]]:
    """``(module name, layer)`` for every adapter layer of ``model``."""
    return list(_adapted_layers(unwrap_model(model)))


def _adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            yield name, module


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
