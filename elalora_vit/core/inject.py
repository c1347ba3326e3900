"""Putting adapter layers into a model and taking them out again (PEFT's
``model.py``): the targets are matched by :mod:`.targets`, the layer class comes
from the method's description in :mod:`.registry`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from .config import ConfigError, ElaLoRAConfig
from .layer import AdaptedLinear, AdapterRef, SVDLinear, find_adapters, linear_features
from .registry import adapter_forms, get_method
from .targets import Target, TargetError, match_targets, resolve_excluded_parts, resolve_split
from .watch import watch_layers


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
    """Wrap the targeted ``nn.Linear`` (or transformers ``Conv1D``) modules of ``model`` in
    adapter layers, in place.

    Args:
        model: any ``nn.Module``.
        targets: which Linear modules to adapt (see :mod:`.targets`).
        config: adapter hyper-parameters; defaults to ``ElaLoRAConfig()``.
        split: fused projections to adapt as separate equal parts, e.g.
            ``{"attn.qkv": ["q", "k", "v"]}``; each part gets its own adapter.
        exclude: targets to leave out of the selection; a name or pattern may also
            name a part of a split layer, ``<module>.<part>`` (e.g.
            ``"blocks.*.attn.qkv.k"`` for q/v-only adapters): that part keeps its
            rows of the output unchanged and never gets a rank.
        method: the adapter form, a method of :mod:`.registry` with its own layer:
            ``"elalora"`` (SVD form with a rank mask, for the rank allocators)
            or ``"lora"`` (fixed-rank ``B A`` form).
        freeze_base: freeze every parameter of ``model`` not created here.

    Returns:
        The adapters in model order, one per part (excluded parts are not adapters).
    """
    config = config or ElaLoRAConfig()
    if method not in adapter_forms():
        expected = " or ".join(repr(m) for m in adapter_forms())
        raise TargetError(f"unknown adapter method {method!r}; expected {expected}")
    layer_class = get_method(method).layer
    names = match_targets(model, targets, exclude)
    parts_of = resolve_split(names, split)
    excluded_of = resolve_excluded_parts(model, names, parts_of, exclude)
    _check_rank(model, names, parts_of, config)
    if freeze_base:
        for p in model.parameters():
            p.requires_grad_(False)
    generator = torch.Generator().manual_seed(config.seed)
    for name in names:
        base = model.get_submodule(name)
        layer = layer_class.from_config(base, parts_of.get(name), config, generator, excluded_of.get(name, ()))
        layer.adapter_config = config  # save_pretrained reads it back
        _set_submodule(model, name, layer)
    if issubclass(layer_class, SVDLinear):  # its ranks move only if an allocator is stepped: watch that
        watch_layers([model.get_submodule(n) for n in names], config.warmup_steps)
    return find_adapters(model)


def unpatch_model(model: nn.Module, merge: bool = False) -> nn.Module:
    """Put the original ``nn.Linear`` modules back (merging the updates first if ``merge``)."""
    # Names as the given model (wrapper included) spells them, for _set_submodule.
    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, AdaptedLinear)]
    for name, layer in layers:
        if merge:
            layer.merge()
        elif layer.merged:
            layer.unmerge()
        _set_submodule(model, name, layer.base_layer)
    return model


def _check_rank(model: nn.Module, names, parts_of, config: ElaLoRAConfig) -> None:
    """Refuse, before any layer is touched, a rank above a target's smaller dimension: such
    ranks cannot be independent (and a rank of 100,000 would take minutes to initialise)."""
    for name in names:
        base = model.get_submodule(name)
        parts = len(parts_of.get(name) or ()) or 1
        features = linear_features(base)
        if features is None:
            continue  # not a Linear: the layer class says so
        d_in, d_out = features
        bound = min(d_in, d_out // parts)
        if config.rank > bound:
            raise ConfigError(
                f"invalid value for 'rank': {config.rank!r}; expected at most {bound}, the smaller dimension of "
                f"{name}{' (per part)' if parts > 1 else ''}: {d_in} inputs, {d_out // parts} outputs")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)
