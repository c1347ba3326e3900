"""Saving, loading and merging adapters.

An adapter file is a safetensors file holding, for every adapter, only its
active ranks (``<name>.lora_A`` (r, d_in), ``<name>.lora_E`` (r,),
``<name>.lora_B`` (d_part, r)), the full parameters of any extra modules that
were trained (``modules_to_save.<module>.<param>``, e.g. a classifier head), and
JSON metadata: the adapter config, the adapted layers and their parts (with
the parts left out, ``excluded_parts``, for a layer that has some: they have no
tensors and are rebuilt excluded on load), and the rank pattern, the method that trained them, and a fingerprint of the frozen
backbone they were trained on (:func:`backbone_fingerprint`); callers add what
rebuilds the model (e.g. the timm name).  Loading never executes code, and
refuses a backbone whose fingerprint differs from the recorded one.  For ElaLoRA the
file also records how many allocator steps and rounds ran (``allocator_steps``,
``allocator_rounds``: 0 steps means the ranks never moved).

The file stores ``lambda`` itself under ``lora_E`` (PEFT's name), not the
``theta`` the layer trains (``lambda = lambda_scale * theta``): files of
format 1 mean the same whether they were written before or after that
reparametrisation, and load either way.
"""

from __future__ import annotations

import contextlib

import json
import os
from pathlib import Path
from typing import Iterator, Sequence

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from .config import ElaLoRAConfig
from ..storage.files import atomic_write
from .fingerprint import backbone_fingerprint
from .inject import patch_model
from .layer import AdaptedLinear, AdapterRef, SVDLinear, adapted_layers, find_adapters, linear_features, unwrap_model
from .registry import adapter_forms, form_of, get_method, method_names
from .watch import counts_of

FORMAT = "elalora-vit/adapter/1"
ADAPTER_FILE = "adapter_model.safetensors"
"""The adapter file's name inside an adapter folder (:mod:`.pretrained`)."""


def adapter_file(path: str | os.PathLike) -> Path:
    """``path`` itself, or the adapter file inside it when ``path`` is a folder."""
    path = Path(path)
    return path / ADAPTER_FILE if path.is_dir() else path


class AdapterFileError(ValueError):
    """An adapter file that is unreadable or does not fit the model."""


class BackboneMismatchError(AdapterFileError):
    """The model's frozen weights are not the ones the adapters were trained on."""


def save_adapters(
    model: nn.Module,
    path: str | os.PathLike,
    config: ElaLoRAConfig,
    modules_to_save: Sequence[str] = (),
    metadata: dict[str, str] | None = None,
    *,
    method: str | None = None,
) -> Path:
    """Write the adapters of ``model`` (active ranks only) to ``path``, atomically
    (``path/adapter_model.safetensors`` when ``path`` is an existing folder).

    Args:
        modules_to_save: modules stored in full (e.g. the classifier head).
        metadata: extra string entries for the header (e.g. how to rebuild the backbone).
        method: the training method to record (``"adalora"`` trains SVD adapters too);
            default: the method whose layers these are, ``"elalora"`` or ``"lora"``.
    """
    model = unwrap_model(model)
    layers = adapted_layers(model)
    if not layers:
        raise ValueError("save_adapters: the model has no adapters")
    tensors: dict[str, torch.Tensor] = {}
    layer_info = {name: _layer_info(layer) for name, layer in layers}
    rank_pattern: dict[str, int] = {}
    for adapter in find_adapters(model):
        tensors.update(_adapter_tensors(adapter))
        rank_pattern[adapter.name] = adapter.rank
    for module_name in modules_to_save:
        for param_name, value in model.get_submodule(module_name).state_dict().items():
            tensors[f"modules_to_save.{module_name}.{param_name}"] = value
    header = {
        "format": FORMAT,
        "method": method or form_of(layers[0][1]).name,
        "layer_form": form_of(layers[0][1]).name,
        "backbone_fingerprint": backbone_fingerprint(model, exclude=modules_to_save),
        "config": json.dumps(config.to_dict()),
        "layers": json.dumps(layer_info),
        "rank_pattern": json.dumps(rank_pattern),
        "modules_to_save": json.dumps(list(modules_to_save)),
        **_allocator_counts(layers),
        **(metadata or {}),
    }
    path = adapter_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _layer_info(layer: AdaptedLinear) -> dict:
    info = {
        "parts": list(layer.part_names) if layer.n_parts > 1 else None,
        "in_features": layer.in_features,
        "out_features": layer.out_features,
    }
    if layer.excluded_parts:  # recorded only when there are some: older readers see what they know
        info["excluded_parts"] = list(layer.excluded_parts)
    return info


def excluded_part_names(layer_info: dict[str, dict]) -> list[str]:
    """The excluded parts recorded in an adapter file's ``layers`` metadata, as
    ``<module>.<part>``: the ``exclude`` entries that rebuild them."""
    return [f"{name}.{part}" for name, info in layer_info.items() for part in info.get("excluded_parts", [])]


def _adapter_tensors(adapter: AdapterRef) -> dict[str, torch.Tensor]:
    """The active ranks of one adapter, keyed ``<adapter name>.lora_A|E|B``."""
    tensors = {f"{adapter.name}.lora_A": adapter.Q, f"{adapter.name}.lora_B": adapter.P}
    if isinstance(adapter.layer, SVDLinear):
        tensors[f"{adapter.name}.lora_E"] = adapter.lam
    return tensors


def _allocator_counts(layers) -> dict[str, str]:
    counts = counts_of(layer for _, layer in layers if isinstance(layer, SVDLinear))
    return counts[0].as_metadata() if counts else {}


def read_adapter_metadata(path: str | os.PathLike) -> dict:
    """The decoded metadata of an adapter file, or of an adapter folder's file (config,
    layers, rank pattern, ...)."""
    folder = Path(path) if Path(path).is_dir() else None
    path = adapter_file(path)
    if not path.is_file():
        if folder is not None:
            raise AdapterFileError(f"adapter folder {folder} holds no {ADAPTER_FILE}")
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
        if key not in meta:
            raise AdapterFileError(f"{path}: its metadata has no '{key}' entry; the file is damaged")
        try:
            decoded[key] = json.loads(meta[key])
        except ValueError as err:
            raise AdapterFileError(f"{path}: metadata entry '{key}' is not valid JSON ({err})") from None
    # Files written before "layer_form" existed named the layer form in "method".
    decoded.setdefault("layer_form", meta.get("method"))
    for key in ("allocator_steps", "allocator_rounds"):  # absent from files written before they were recorded
        decoded[key] = int(meta[key]) if key in meta else None
    return decoded


@torch.no_grad()
def load_adapters(model: nn.Module, path: str | os.PathLike, *, check_backbone: bool = True) -> nn.Module:
    """Load an adapter file (or an adapter folder) into ``model``.

    An unpatched model is patched first, with the layers, parts and config the
    file records; it is then trainable as it was saved: the adapters and the saved
    modules (e.g. the head), nothing else.  A patched model must have exactly the file's adapter layers.
    Every shape, and the backbone fingerprint the file records (unless
    ``check_backbone=False``), is checked before anything is written, so a file
    made for another model raises :class:`AdapterFileError` (a
    :class:`BackboneMismatchError` for other frozen weights of the same shapes)
    and leaves ``model`` as it was.
    """
    meta = read_adapter_metadata(path)
    path = adapter_file(path)
    model = unwrap_model(model)
    config = ElaLoRAConfig.from_dict(meta["config"], warn=False)  # files of older versions too
    layer_info: dict[str, dict] = meta["layers"]
    tensors = _read_tensors(path)
    _check_fits(model, path, layer_info, meta, tensors, config)
    if check_backbone:
        check_backbone_fingerprint(model, meta.get("backbone_fingerprint"), path, meta["modules_to_save"])
    patched_here = not adapted_layers(model)
    if patched_here:
        split = {name: info["parts"] for name, info in layer_info.items() if info["parts"]}
        patch_model(model, list(layer_info), config, split=split, exclude=excluded_part_names(layer_info),
                    method=meta["layer_form"])
    for adapter in find_adapters(model):
        _load_adapter(adapter, tensors)
    for module_name in meta["modules_to_save"]:
        prefix = f"modules_to_save.{module_name}."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        module = model.get_submodule(module_name)
        module.load_state_dict(state)
        if patched_here:  # patch_model froze it; it trained in full when it was saved
            module.requires_grad_(True)
    for counts in counts_of(layer for _, layer in adapted_layers(model)):
        counts.allocator_steps = meta["allocator_steps"] or 0
        counts.rounds = meta["allocator_rounds"] or 0
    return model


def _load_adapter(adapter: AdapterRef, tensors: dict[str, torch.Tensor]) -> None:
    """Write the saved ranks of ``adapter`` into its first slots and make only those active."""
    layer, part = adapter.layer, adapter.part
    A, B = tensors[f"{adapter.name}.lora_A"], tensors[f"{adapter.name}.lora_B"]
    r = A.shape[0]
    layer.lora_A[part, :r] = A.to(layer.lora_A)
    layer.lora_B[part, :, :r] = B.to(layer.lora_B)
    if isinstance(layer, SVDLinear):
        layer.lora_theta[part].zero_()
        layer.set_lambdas(tensors[f"{adapter.name}.lora_E"], (part, slice(0, r)))  # the file holds lambda itself
        layer.rank_mask[part] = False
        layer.rank_mask[part, :r] = True


def check_backbone_fingerprint(
    model: nn.Module, expected: str | None, path: str | os.PathLike, exclude: Sequence[str] = ()
) -> None:
    """Raise :class:`BackboneMismatchError` if ``model``'s frozen weights are not those
    ``path`` was made on (``expected``: its recorded fingerprint; ``None`` skips the check)."""
    if not expected:
        return
    found = backbone_fingerprint(model, exclude=exclude)
    if found != expected:
        raise BackboneMismatchError(
            f"{path} was trained on a backbone with fingerprint {expected}, but this model's frozen weights "
            f"have fingerprint {found}: the adapters would not reproduce the trained model. Build the backbone "
            "the run used (same weights, checkpoint, or seed for a random --no-pretrained backbone), "
            "or pass check_backbone=False to load anyway"
        )


def _read_tensors(path) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise AdapterFileError(f"{path} is truncated or corrupt ({err})") from err


def _check_fits(model, path, layer_info, meta, tensors, config) -> None:
    def fail(reason: str) -> None:
        raise AdapterFileError(f"adapter file {path} does not fit this model: {reason}")

    if meta["layer_form"] not in adapter_forms():
        fail(f"it records adapter form {meta['layer_form']!r}; known: {', '.join(adapter_forms())}")
    if meta["method"] not in method_names():
        fail(f"it records training method {meta['method']!r}; known: {', '.join(method_names())}")
    saved = get_method(meta["layer_form"])
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
        features = (module.in_features, module.out_features) if isinstance(module, AdaptedLinear) \
            else linear_features(module)
        if features is None:
            fail(f"'{name}' is a {type(module).__name__}, not a Linear")
        if features != (info["in_features"], info["out_features"]):
            fail(
                f"layer '{name}' is {features[0]}->{features[1]} here "
                f"but {info['in_features']}->{info['out_features']} in the file"
            )
        if isinstance(module, AdaptedLinear):
            parts = [p for p in module.part_names] if module.n_parts > 1 else None
            if parts != info["parts"]:
                fail(f"layer '{name}' is split as {parts} here but {info['parts']} in the file")
            if list(module.excluded_parts) != info.get("excluded_parts", []):
                fail(f"layer '{name}' excludes parts {list(module.excluded_parts)} here but "
                     f"{info.get('excluded_parts', [])} in the file")
            if not isinstance(module, saved.layer):
                fail(f"layer '{name}' holds {form_of(module).title} adapters but the file holds {saved.title} adapters")
    capacity = saved.layer.capacity_for(config)
    for key, r in meta["rank_pattern"].items():
        if f"{key}.lora_A" not in tensors or not isinstance(r, int) or r > capacity:
            fail(f"adapter '{key}' is missing or its rank {r!r} is not an integer up to its capacity {capacity}")
        for name, shape in _expected_shapes(key, r, layer_info, issubclass(saved.layer, SVDLinear)).items():
            got = tensors.get(name)
            if got is None or tuple(got.shape) != shape:
                fail(f"tensor '{name}' has shape {None if got is None else tuple(got.shape)} in the file; "
                     f"this model needs {shape} (rank {r})")
    not_finite = [name for name, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if not_finite:
        fail(f"tensor(s) {', '.join(not_finite[:5])}{' ...' if len(not_finite) > 5 else ''} hold NaN or infinite "
             "values (a diverged run?); such adapters cannot give meaningful predictions")
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


def _expected_shapes(key: str, rank: int, layer_info: dict[str, dict], svd: bool) -> dict[str, tuple[int, ...]]:
    """The shapes the file must hold for adapter ``key`` (``<layer>`` or ``<layer>.<part>``) at ``rank``."""
    layer = key if key in layer_info else key.rpartition(".")[0]
    info = layer_info.get(layer, {})
    parts = len(info.get("parts") or ()) or 1
    d_in, d_part = info.get("in_features", 0), info.get("out_features", 0) // parts
    shapes = {f"{key}.lora_A": (rank, d_in), f"{key}.lora_B": (d_part, rank)}
    if svd:
        shapes[f"{key}.lora_E"] = (rank,)
    return shapes


def merge_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight: inference costs what the base model costs."""
    for _, layer in adapted_layers(model):
        layer.merge()
    return model


@contextlib.contextmanager
def merged_inference(model: nn.Module) -> Iterator[nn.Module]:
    """A context in which every adapter layer computes as a merged one (the base model's
    cost) from a merged copy of its weight, made on entry and dropped on exit. Unlike
    :func:`merge_adapters` it changes no parameter, so training goes on after it bit for bit
    as without it (what evaluation during training needs); the outputs equal the unmerged
    ones to float rounding. It costs one extra weight per adapted layer while it lasts; no
    gradient reaches the adapters through it."""
    layers = [layer for _, layer in adapted_layers(model)]
    try:
        for layer in layers:
            layer.begin_merged_inference()
        yield model
    finally:
        for layer in layers:
            layer.end_merged_inference()


def unmerge_adapters(model: nn.Module) -> nn.Module:
    """Undo :func:`merge_adapters`."""
    for _, layer in adapted_layers(model):
        layer.unmerge()
    return model
