"""Saving, loading and merging adapters.

An adapter file is a safetensors file holding, for every adapter, only its
active ranks (``<name>.lora_A`` (r, d_in), ``<name>.lora_E`` (r,),
``<name>.lora_B`` (d_part, r)), the full parameters of any extra modules that
were trained (``modules_to_save.<module>.<param>``, e.g. a classifier head), and
JSON metadata: the adapter config, the adapted layers and their parts, and the
rank pattern, and for ElaLoRA how many allocator steps and rounds ran
(``allocator_steps``, ``allocator_rounds``: 0 steps means the ranks never moved).
Loading never executes code.

The file stores ``lambda`` itself under ``lora_E`` (PEFT's name), not the
``theta`` the layer trains (``lambda = lambda_scale * theta``): files of
format 1 mean the same whether they were written before or after that
reparametrisation, and load either way.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ElaLoRAConfig
from .layer import AdaptedLinear, LoRALinear, SVDLinear
from .targets import adapted_layers, patch_model, unwrap_model
from .watch import counts_of

FORMAT = "elalora-vit/adapter/1"


class AdapterFileError(ValueError):
    """An adapter file that is unreadable or does not fit the model."""


def save_adapters(
    model: nn.Module,
    path: str | os.PathLike,
    config: ElaLoRAConfig,
    modules_to_save: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the adapters of ``model`` (active ranks only) to ``path``, atomically."""
    model = unwrap_model(model)
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("save_adapters: the model has no adapters")
    tensors: dict[str, torch.Tensor] = {}
    layer_info: dict[str, dict] = {}
    rank_pattern: dict[str, int] = {}
    method = "elalora" if isinstance(layers[0][1], SVDLinear) else "lora"
    for name, layer in layers:
        layer_info[name] = {
            "parts": [p for p in layer.part_names] if layer.n_parts > 1 else None,
            "in_features": layer.in_features,
            "out_features": layer.out_features,
        }
        for part, part_name in enumerate(layer.part_names):
            key = name if part_name is None else f"{name}.{part_name}"
            if isinstance(layer, SVDLinear):
                active = layer.rank_mask[part].nonzero().flatten()
                tensors[f"{key}.lora_E"] = layer.lambdas()[part, active]
            else:
                active = torch.arange(layer.capacity, device=layer.lora_A.device)
            tensors[f"{key}.lora_A"] = layer.lora_A[part][active]
            tensors[f"{key}.lora_B"] = layer.lora_B[part][:, active]
            rank_pattern[key] = int(active.numel())
    for module_name in modules_to_save:
        for param_name, value in model.get_submodule(module_name).state_dict().items():
            tensors[f"modules_to_save.{module_name}.{param_name}"] = value
    header = {
        "format": FORMAT,
        "method": method,
        "config": json.dumps(config.to_dict()),
        "layers": json.dumps(layer_info),
        "rank_pattern": json.dumps(rank_pattern),
        "modules_to_save": json.dumps(list(modules_to_save)),
        **_allocator_counts(layers),
        **(metadata or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=header)
    os.replace(tmp, path)
    return path


def _allocator_counts(layers) -> dict[str, str]:
    counts = counts_of(layer for _, layer in layers if isinstance(layer, SVDLinear))
    return counts[0].as_metadata() if counts else {}


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of an adapter file (config, layers, rank pattern, ...)."""
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"adapter file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path} is not a readable safetensors file ({err})") from err
    if meta.get("format") != FORMAT:
        raise AdapterFileError(
            f"{path} is not an elalora-vit adapter file (format {meta.get('format')!r}, expected {FORMAT!r})"
        )
    decoded = dict(meta)
    for key in ("config", "layers", "rank_pattern", "modules_to_save"):
        decoded[key] = json.loads(meta[key])
    for key in ("allocator_steps", "allocator_rounds"):  # absent from files written before they were recorded
        decoded[key] = int(meta[key]) if key in meta else None
    return decoded


@torch.no_grad()
def load_adapters(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load an adapter file into ``model``.

    An unpatched model is patched first, with the layers, parts and config the
    file records.  A patched model must have exactly the file's adapter layers.
    Every shape is checked before anything is written, so a file made for
    another model raises :class:`AdapterFileError` and leaves ``model`` as it was.
    """
    meta = read_adapter_metadata(path)
    model = unwrap_model(model)
    config = ElaLoRAConfig.from_dict(meta["config"])
    layer_info: dict[str, dict] = meta["layers"]
    tensors = _read_tensors(path)
    _check_fits(model, path, layer_info, meta, tensors, config)
    if not adapted_layers(model):
        split = {name: info["parts"] for name, info in layer_info.items() if info["parts"]}
        patch_model(model, list(layer_info), config, split=split, method=meta["method"])
    for name, layer in adapted_layers(model):
        for part, part_name in enumerate(layer.part_names):
            key = name if part_name is None else f"{name}.{part_name}"
            A, B = tensors[f"{key}.lora_A"], tensors[f"{key}.lora_B"]
            r = A.shape[0]
            layer.lora_A[part, :r] = A.to(layer.lora_A)
            layer.lora_B[part, :, :r] = B.to(layer.lora_B)
            if isinstance(layer, SVDLinear):
                layer.lora_theta[part].zero_()
                layer.set_lambdas(tensors[f"{key}.lora_E"], (part, slice(0, r)))
                layer.rank_mask[part] = False
                layer.rank_mask[part, :r] = True
    for module_name in meta["modules_to_save"]:
        prefix = f"modules_to_save.{module_name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        model.get_submodule(module_name).load_state_dict(state)
    for counts in counts_of(layer for _, layer in adapted_layers(model)):
        counts.allocator_steps = meta["allocator_steps"] or 0
        counts.rounds = meta["allocator_rounds"] or 0
    return model


def _read_tensors(path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path} is truncated or corrupt ({err})") from err


def _check_fits(model, path, layer_info, meta, tensors, config) -> None:
    def fail(reason: str) -> None:
        raise AdapterFileError(f"adapter file {path} does not fit this model: {reason}")

    existing = dict(adapted_layers(model))
    if existing and set(existing) != set(layer_info):
        missing = sorted(set(layer_info) - set(existing))[:3]
        extra = sorted(set(existing) - set(layer_info))[:3]
        fail(f"adapted layers differ (in file only: {missing}, in model only: {extra})")
    for name, info in layer_info.items():
        try:
            module = existing.get(name) or model.get_submodule(name)
        except AttributeError:
            fail(f"the model has no module '{name}'")
        if not isinstance(module, (nn.Linear, AdaptedLinear)):
            fail(f"'{name}' is a {type(module).__name__}, not a Linear")
        if (module.in_features, module.out_features) != (info["in_features"], info["out_features"]):
            fail(
                f"layer '{name}' is {module.in_features}->{module.out_features} here "
                f"but {info['in_features']}->{info['out_features']} in the file"
            )
        if isinstance(module, AdaptedLinear):
            parts = [p for p in module.part_names] if module.n_parts > 1 else None
            if parts != info["parts"]:
                fail(f"layer '{name}' is split as {parts} here but {info['parts']} in the file")
            if meta["method"] == "elalora" and not isinstance(module, SVDLinear):
                fail(f"layer '{name}' holds LoRA adapters but the file holds ElaLoRA adapters")
            if meta["method"] == "lora" and not isinstance(module, LoRALinear):
                fail(f"layer '{name}' holds ElaLoRA adapters but the file holds LoRA adapters")
    capacity = config.max_rank if meta["method"] == "elalora" else config.rank
    for key, r in meta["rank_pattern"].items():
        if f"{key}.lora_A" not in tensors or r > capacity:
            fail(f"adapter '{key}' is missing or its rank {r} exceeds capacity {capacity}")
    for module_name in meta["modules_to_save"]:
        try:
            target = model.get_submodule(module_name)
        except AttributeError:
            fail(f"the model has no module '{module_name}' to load")
        prefix = f"modules_to_save.{module_name}."
        for param_name, value in target.state_dict().items():
            saved = tensors.get(prefix + param_name)
            if saved is None or saved.shape != value.shape:
                got = None if saved is None else tuple(saved.shape)
                fail(f"'{module_name}.{param_name}' has shape {tuple(value.shape)} here, {got} in the file")


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight: inference costs what the base model costs."""
    for _, layer in adapted_layers(model):
        layer.merge()
    return model


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_adapters`."""
    for _, layer in adapted_layers(model):
        layer.unmerge()
    return model
