"""The calls a PEFT user reaches for, on our own objects: adapter folders
(:func:`save_pretrained` / :func:`from_pretrained`), :func:`disable_adapter`,
:func:`print_trainable_parameters`.

An adapter folder holds ``adapter_model.safetensors`` (the adapter file of
:mod:`.adapter_io`: active ranks, the modules trained in full, the config and the
backbone fingerprint) and, when an allocator is given, ``elalora_allocator.pt`` (its
state, so training can continue with the same rank decisions).  ``save_adapters`` and
``load_adapters`` accept such a folder in place of a file.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from torch import nn

from ..storage.files import atomic_write
from .adapter_io import ADAPTER_FILE, load_adapters, save_adapters
from .config import ElaLoRAConfig
from .layer import SVDLinear, adapted_layers, unwrap_model
from .param_groups import adapter_parameter_ids

ALLOCATOR_FILE = "elalora_allocator.pt"


def save_pretrained(
    model: nn.Module,
    folder: str | os.PathLike,
    config: ElaLoRAConfig | None = None,
    *,
    modules_to_save: Sequence[str] | None = None,
    allocator=None,
) -> Path:
    """Write the adapters of ``model`` to the folder ``folder`` (created if missing).

    Args:
        config: the config the model was patched with; default: the one
            :func:`~elalora_vit.patch_model` recorded on its layers.
        modules_to_save: modules stored in full; default: every module outside the
            adapters with a trainable parameter (the new head, typically).
        allocator: a :class:`~elalora_vit.RankAllocator` whose state is saved beside
            the adapters, for :func:`load_allocator_state`.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save_pretrained: {folder} exists and is not a folder")
    folder.mkdir(parents=True, exist_ok=True)
    config = config or patched_config(model)
    if modules_to_save is None:
        modules_to_save = trained_modules(model)
    save_adapters(model, folder / ADAPTER_FILE, config, modules_to_save)
    if allocator is not None:
        state = allocator.state_dict()
        atomic_write(folder / ALLOCATOR_FILE, lambda tmp: torch.save(state, tmp))
    return folder


def from_pretrained(model: nn.Module, folder: str | os.PathLike, *, check_backbone: bool = True) -> nn.Module:
    """Load the adapter folder ``folder`` (written by :func:`save_pretrained`) into ``model``,
    patching an unpatched model first; the adapters and the saved modules are left trainable."""
    return load_adapters(model, folder, check_backbone=check_backbone)


def load_allocator_state(folder: str | os.PathLike) -> dict | None:
    """The allocator state :func:`save_pretrained` wrote in ``folder``, or None if it wrote
    none; give it to ``RankAllocator.load_state_dict`` to continue with the same decisions."""
    path = Path(folder) / ALLOCATOR_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def patched_config(model: nn.Module) -> ElaLoRAConfig:
    """The :class:`ElaLoRAConfig` that ``patch_model`` (or a load) built the adapters of ``model`` from."""
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("the model has no adapters: patch it with patch_model first")
    config = getattr(layers[0][1], "adapter_config", None)
    if config is None:
        raise ValueError("the model's adapters were not built by patch_model; pass the config explicitly")
    return config


def trained_modules(model: nn.Module) -> list[str]:
    """The modules outside the adapters that hold a trainable parameter (e.g. ``["head"]``), by name."""
    model = unwrap_model(model)
    factors, lambdas = adapter_parameter_ids(model)
    adapter_ids = factors | lambdas
    names: dict[str, None] = {}
    for name, param in model.named_parameters():
        if param.requires_grad and id(param) not in adapter_ids:
            names[name.rpartition(".")[0]] = None
    # Keep only the outermost modules (a trainable block stands for its children).
    kept = [n for n in names if not any(n != other and n.startswith(other + ".") for other in names)]
    return kept


@contextlib.contextmanager
def disable_adapter(model: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, every adapter layer of ``model`` computes its base layer alone, so
    the model gives the base model's outputs exactly (the trained head stays in place).

    Raises:
        RuntimeError: the adapters are merged (unmerge them first: the merged weights are
            no longer the base's).
    """
    layers = [layer for _, layer in adapted_layers(model)]
    merged = [name for name, layer in adapted_layers(model) if layer.merged]
    if merged:
        raise RuntimeError(f"disable_adapter: the adapters are merged ({merged[0]}); call "
                           "unmerge_adapters(model) first")
    previous = [layer.disabled for layer in layers]
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer, was in zip(layers, previous):
            layer.disabled = was


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts, where an SVD adapter counts only its active
    ranks (``d_in + d_part + 1`` each: a row of Q, a column of P and lambda) and the
    inactive capacity counts in neither, so ElaLoRA, AdaLoRA and LoRA compare at their
    real budget."""
    model = unwrap_model(model)
    factors, lambdas = adapter_parameter_ids(model)
    adapter_ids = factors | lambdas
    trainable = 0
    for _, layer in adapted_layers(model):
        per_rank = layer.in_features + layer.part_features + (1 if isinstance(layer, SVDLinear) else 0)
        trainable += sum(layer.ranks()) * per_rank
    others = [p for p in model.parameters() if id(p) not in adapter_ids]
    trainable += sum(p.numel() for p in others if p.requires_grad)
    total = sum(p.numel() for p in others) + trainable - sum(p.numel() for p in others if p.requires_grad)
    return trainable, total


def print_trainable_parameters(model: nn.Module) -> None:
    """Print ``trainable params: N || all params: M || trainable%: P`` (PEFT's line), counting
    active ranks only (see :func:`trainable_parameters`)."""
    trainable, total = trainable_parameters(model)
    print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}")
