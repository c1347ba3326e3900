"""Several named adapters on one patched model, as PEFT users keep them: :func:`load_adapter`
adds one from an adapter folder under a name, :func:`set_adapter` makes one active,
:func:`active_adapter`, :func:`adapter_names` and :func:`delete_adapter` do what they say.

The adapter layers hold one adapter at a time (fixed shapes are what keep optimizers, DDP and
``torch.compile`` working); the others are kept as copies of their tensors (factors, lambda,
rank masks and the modules trained in full, e.g. a head) and written into the layers in place
when made active.  So every named adapter has the model's targets, parts and capacity, and a
folder made for other ones is refused by :func:`load_adapter` with the adapter file's own
message.  The adapter :func:`~elalora_vit.patch_model` built is named ``"default"``.

Switching swaps the tensors an optimizer holds: switch for inference, or between training
runs (build the optimizer after :func:`set_adapter`), not inside one.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from .adapter_io import load_adapters
from .layer import adapted_layers, unwrap_model
from .pretrained import trained_modules

DEFAULT = "default"
_STORE = "_elalora_named_adapters"  # name -> saved tensors (None for the one in the layers)


def _store(model: nn.Module) -> dict[str, dict[str, torch.Tensor] | None]:
    model = unwrap_model(model)
    if not adapted_layers(model):
        raise ValueError("the model has no adapters: patch it with patch_model (or load_adapters) first")
    store = model.__dict__.get(_STORE)
    if store is None:
        store = {DEFAULT: None}
        model.__dict__[_STORE] = store  # not a submodule or buffer: state_dict and DDP never see it
    return store


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The active adapter's tensors by state-dict name: every adapter layer's own parameters and
    buffers (its base layer excluded) and the modules trained in full."""
    model = unwrap_model(model)
    tensors: dict[str, torch.Tensor] = {}
    for name, layer in adapted_layers(model):
        for key, value in layer.state_dict(keep_vars=True).items():
            if not key.startswith("base_layer."):
                tensors[f"{name}.{key}"] = value
    for module_name in trained_modules(model):
        for key, value in model.get_submodule(module_name).state_dict(keep_vars=True).items():
            tensors[f"{module_name}.{key}"] = value
    return tensors


@torch.no_grad()
def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in _tensors(model).items()}


@torch.no_grad()
def _restore(model: nn.Module, saved: dict[str, torch.Tensor]) -> None:
    live = _tensors(model)
    if set(live) != set(saved):
        missing = sorted(set(saved) ^ set(live))[:3]
        raise ValueError(f"the model's adapters changed since the adapter was stored (differing tensors: {missing})")
    for key, value in saved.items():
        live[key].copy_(value)


def adapter_names(model: nn.Module) -> list[str]:
    """The names of the adapters the model holds, ``"default"`` first."""
    return list(_store(model))


def active_adapter(model: nn.Module) -> str:
    """The name of the adapter the layers compute with."""
    return next(name for name, saved in _store(model).items() if saved is None)


def load_adapter(model: nn.Module, folder: str | os.PathLike, adapter_name: str, *,
                 check_backbone: bool = True) -> nn.Module:
    """Add the adapter folder ``folder`` (written by :func:`~elalora_vit.save_pretrained`) under
    ``adapter_name``; the active adapter stays active.  The folder must fit the model's
    adapter layers (the same targets, parts and capacity), as for ``load_adapters``."""
    store = _store(model)
    if adapter_name in store:
        raise ValueError(f"an adapter named {adapter_name!r} exists already; delete_adapter it first")
    active = _snapshot(model)
    load_adapters(model, folder, check_backbone=check_backbone)  # checks everything before it writes
    store[adapter_name] = _snapshot(model)
    _restore(model, active)
    return model


def set_adapter(model: nn.Module, adapter_name: str) -> nn.Module:
    """Make ``adapter_name`` the adapter the model computes with (the previous one is kept)."""
    store = _store(model)
    if adapter_name not in store:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {list(store)}")
    current = active_adapter(model)
    if adapter_name == current:
        return model
    if any(layer.merged for _, layer in adapted_layers(unwrap_model(model))):
        raise RuntimeError("set_adapter: the adapters are merged; call unmerge_adapters(model) first")
    store[current] = _snapshot(model)
    _restore(model, store[adapter_name])
    store[adapter_name] = None
    return model


def delete_adapter(model: nn.Module, adapter_name: str) -> None:
    """Forget a stored adapter (the active one cannot be deleted: set another first)."""
    store = _store(model)
    if adapter_name not in store:
        raise KeyError(f"no adapter named {adapter_name!r}; the model has {list(store)}")
    if store[adapter_name] is None:
        raise ValueError(f"{adapter_name!r} is the active adapter; set_adapter another one before deleting it")
    del store[adapter_name]
