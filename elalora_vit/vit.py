"""The timm Vision Transformer backbone: creation, weight loading and ViT-specific defaults.

``create_backbone`` builds a timm model with a classifier head sized for the task
and fills it with pre-trained weights, either from timm's usual source (the
Hugging Face hub, or its cache) or from a local file: the original Google ViT
``.npz``, a ``.safetensors`` file or a ``.pth``/``.pt``/``.bin`` state dict.
Weights that cannot be had raise :class:`BackboneError`; the model never falls
back silently to random initialisation.

The remaining helpers answer questions the training code asks of a ViT: which
Linear layers to adapt by default (:func:`default_targets`), which head to train
in full (:func:`head_module_names`), how to normalise its input
(:func:`resolve_normalization`) and where an adapter sits
(:func:`block_index_and_kind`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import socket
import sys
import urllib.parse
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import timm
import torch
from torch import nn

__all__ = [
    "DEFAULT_MODEL",
    "CHECKPOINT_EXTENSIONS",
    "BackboneError",
    "create_backbone",
    "load_backbone_checkpoint",
    "default_targets",
    "head_module_names",
    "resolve_normalization",
    "block_index_and_kind",
]

_logger = logging.getLogger(__name__)

# The VTAB-1k protocol backbone: ViT-B/16 with the original Google ImageNet-21k
# weights (imagenet21k/ViT-B_16.npz); "augreg_in21k" is a different checkpoint.
DEFAULT_MODEL = "vit_base_patch16_224.orig_in21k"

CHECKPOINT_EXTENSIONS = (".npz", ".safetensors", ".pth", ".pt", ".bin")

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)

# Seconds to wait for a TCP connection to the hub before treating it as unreachable;
# without this check huggingface_hub retries for about 45 s before giving up.
_HUB_PROBE_TIMEOUT = 3.0

_ADAPTER_NAME = re.compile(r"blocks\.(\d+)\.(?:attn\.qkv\.(q|k|v)|attn\.(qkv|proj)|mlp\.(fc1|fc2))")


class BackboneError(ValueError):
    """A backbone that cannot be built, or weights that cannot be had or do not fit."""


# --------------------------------------------------------------------------- creation


def create_backbone(
    model_name: str = DEFAULT_MODEL,
    num_classes: int | None = None,
    *,
    pretrained: bool = True,
    checkpoint: str | os.PathLike | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """A timm model with a ``num_classes``-way head, filled with pre-trained weights.

    Args:
        model_name: timm model name, with an optional pretrained tag
            (``"vit_base_patch16_224.orig_in21k"``).
        num_classes: size of the classifier head; ``None`` keeps timm's default
            for the model (0, no head, for ``orig_in21k``).
        pretrained: load timm's pre-trained weights from the Hugging Face hub or its
            cache. ``False`` gives a random initialisation, for tests and demos.
        checkpoint: a local weight file to load instead of timm's weights
            (``.npz`` Google ViT checkpoint, ``.safetensors``, ``.pth``/``.pt``/``.bin``);
            it takes precedence over ``pretrained``. A head of another size in the
            file is dropped and re-initialised.
        **model_kwargs: passed to ``timm.create_model`` (``img_size``, ``drop_path_rate``, ...).

    Raises:
        BackboneError: unknown model or bad ``model_kwargs``; pre-trained weights that
            cannot be downloaded or found in the cache; a checkpoint file that is
            missing, unreadable, unsafe to unpickle or from another architecture.
    """
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 0):
        raise BackboneError(f"num_classes must be a non-negative integer, got {num_classes!r}")
    if checkpoint is not None:
        model = _build(model_name, num_classes, model_kwargs)
        load_backbone_checkpoint(model, checkpoint)
        return model
    if not pretrained:
        return _build(model_name, num_classes, model_kwargs)
    return _build_from_hub(model_name, num_classes, model_kwargs)


def _build(model_name: str, num_classes: int | None, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """The timm model with random weights."""
    kwargs = _timm_kwargs(num_classes, model_kwargs)
    try:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, KeyError, AssertionError) as e:
        raise BackboneError(
            f"cannot build timm model {model_name!r} with {kwargs}: {_first_line(e)}. "
            "Check the name and tag against timm.list_models(pretrained=True) and the keyword arguments."
        ) from e


def _timm_kwargs(num_classes: int | None, model_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    kwargs = dict(model_kwargs)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return kwargs


def _build_from_hub(model_name: str, num_classes: int | None, model_kwargs: Mapping[str, Any]) -> nn.Module:
    # Build once on the meta device (no memory, no download) so that a bad name or
    # keyword argument is reported as such, and to read where the weights live.
    with torch.device("meta"):
        probe = _build(model_name, num_classes, model_kwargs)
    cfg = dict(getattr(probe, "pretrained_cfg", None) or {})
    source = cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")
    if not source and cfg.get("state_dict") is None:
        raise BackboneError(_weights_advice(model_name, "timm knows no pre-trained weights for this model and tag"))
    offline_reason = _hub_offline_reason() if cfg.get("hf_hub_id") else None
    try:
        with _hub_offline(offline_reason is not None):
            return timm.create_model(model_name, pretrained=True, **_timm_kwargs(num_classes, model_kwargs))
    except Exception as e:  # any failure to fetch or read the weights, whatever library raised it
        cause = f"{type(e).__name__}: {_first_line(e)}"
        if offline_reason:
            cause += f" (offline: {offline_reason}, so only the local Hugging Face cache was searched)"
        raise BackboneError(_weights_advice(model_name, f"{source or 'timm'}: {cause}")) from e


def _weights_advice(model_name: str, cause: str) -> str:
    return (
        f"could not get the pre-trained weights for {model_name!r} ({cause}). Provide them in one of these ways:\n"
        f"  --checkpoint PATH (checkpoint=PATH): a local weight file: the original Google ViT .npz "
        f"(e.g. imagenet21k/ViT-B_16.npz), a .safetensors file, or a .pth/.pt/.bin state dict;\n"
        f"  the Hugging Face cache: on a machine with internet run "
        f"python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\", copy the cache "
        f"($HF_HOME/hub, by default ~/.cache/huggingface/hub) here and set HF_HUB_OFFLINE=1;\n"
        f"  --no-pretrained (pretrained=False): random initialisation, for tests and demos only."
    )


def _hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be used now, or ``None`` if it (probably) can."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{var} is set"
    try:
        from huggingface_hub import constants
    except ImportError:
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE was set when huggingface_hub was imported"
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct connection says nothing about the proxy; let the download try
    endpoint = urllib.parse.urlsplit(constants.ENDPOINT)
    host = endpoint.hostname or ""
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=_HUB_PROBE_TIMEOUT).close()
    except OSError as e:
        return f"cannot reach {host}:{port}: {e}"
    return None


@contextlib.contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    """Make huggingface_hub serve from its cache only, without network retries.

    huggingface_hub reads HF_HUB_OFFLINE once, at import; its ``is_offline_mode()``
    reads this module attribute, so setting it here also honours an environment
    variable set after the import.
    """
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


# --------------------------------------------------------------------------- checkpoint files


def load_backbone_checkpoint(model: nn.Module, path: str | os.PathLike) -> None:
    """Load a local weight file into ``model``, in place.

    ``.npz`` files in the original Google ViT layout go through timm's converter
    (``model.load_pretrained``); ``.safetensors`` and ``.pth``/``.pt``/``.bin`` state
    dicts (optionally wrapped under ``"model"`` or ``"state_dict"``) through the
    model family's ``checkpoint_filter_fn`` (position-embedding resizing and the like).
    Classifier-head weights of another shape are dropped and the head keeps its
    fresh initialisation; every other weight must fit exactly.

    Raises:
        BackboneError: naming the file, when it is missing, unreadable, unsafe to
            unpickle, or does not fit the model (with the first offending keys).
            The model may be partly loaded when this is raised.
    """
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"checkpoint file {str(path)!r} does not exist (or is not a file)")
    suffix = path.suffix.lower()
    if suffix not in CHECKPOINT_EXTENSIONS:
        raise BackboneError(
            f"checkpoint {str(path)!r} has an unknown extension {suffix or '(none)'!r}; "
            f"accepted: {', '.join(CHECKPOINT_EXTENSIONS)}"
        )
    if suffix == ".npz":
        _load_npz(model, path)
        return
    state_dict = _unwrap_state_dict(_read_state_dict(path), path)
    state_dict = _apply_timm_filter(state_dict, model, path)
    state_dict = _drop_unfit_head(state_dict, model, path)
    _check_fit(state_dict, model, path)
    model.load_state_dict(state_dict, strict=False)


def _read_state_dict(path: Path) -> Any:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own SafetensorError, OSError, ...
            raise BackboneError(
                f"cannot read the safetensors checkpoint {str(path)!r} ({_first_line(e)}); "
                "the file is truncated, corrupted or not in safetensors format"
            ) from e
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler" in line), _first_line(e))
        if "Weights only load failed" in str(e):
            raise BackboneError(
                f"refused to load {str(path)!r}: it holds pickled Python objects besides tensors ({detail}). "
                "Checkpoints are read with torch.load(weights_only=True) and pickled code is never run; "
                "re-save the weights alone, e.g. torch.save(model.state_dict(), path) or as .safetensors"
            ) from e
        raise BackboneError(f"cannot read the PyTorch checkpoint {str(path)!r}: {detail}") from e
    except Exception as e:
        raise BackboneError(
            f"cannot read the PyTorch checkpoint {str(path)!r} ({type(e).__name__}: {_first_line(e)}); "
            "the file is truncated, corrupted or not written by torch.save"
        ) from e


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for wrapper in ("model", "state_dict"):  # training checkpoints nest the weights
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not obj:
        raise BackboneError(f"{str(path)!r} holds a {type(obj).__name__}, not a state dict of parameter tensors")
    not_tensors = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if not_tensors:
        raise BackboneError(
            f"{str(path)!r} is not a state dict of parameter tensors: entries {not_tensors[:5]} are not tensors "
            "(weights nested under 'model' or 'state_dict' are found automatically)"
        )
    state_dict = dict(obj)
    if all(k.startswith("module.") for k in state_dict):  # saved from DistributedDataParallel
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict


def _apply_timm_filter(state_dict: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    """Run timm's per-family converter (resizes position embeddings, patch kernels, ...)."""
    module_name = type(model).__module__
    filter_fn = getattr(sys.modules.get(module_name), "checkpoint_filter_fn", None)
    if not module_name.startswith("timm.") or not callable(filter_fn):
        return state_dict
    try:
        return dict(filter_fn(state_dict, model))
    except Exception as e:
        raise BackboneError(
            f"checkpoint {str(path)!r} could not be converted by {module_name}.checkpoint_filter_fn "
            f"({type(e).__name__}: {_first_line(e)}); is it a checkpoint of {_describe(model)}?"
        ) from e


def _drop_unfit_head(state_dict: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    heads = _head_names(model)
    own = model.state_dict()
    head_keys = [k for k in own if _under(k, heads)]
    dropped = {
        k: tuple(v.shape) for k, v in state_dict.items()
        if _under(k, heads) and (k not in own or own[k].shape != v.shape)
    }
    kept = {k: v for k, v in state_dict.items() if k not in dropped}
    missing = [k for k in head_keys if k not in kept]
    if missing or dropped:
        found = f"its head {dropped} does not fit" if dropped else "it has no head for"
        _logger.info(
            "%s: classifier head %s re-initialised (%s the model's %s)",
            path, heads, found, {k: tuple(own[k].shape) for k in head_keys},
        )
    return kept


def _check_fit(state_dict: Mapping[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    own = model.state_dict()
    heads = _head_names(model)
    missing = [k for k in own if k not in state_dict and not _under(k, heads)]
    unexpected = [k for k in state_dict if k not in own]
    mismatched = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items() if k in own and own[k].shape != v.shape
    ]
    problems = [
        f"{label} ({len(keys)}): {keys[:5]}"
        for label, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
        if keys
    ]
    if problems:
        raise BackboneError(
            f"checkpoint {str(path)!r} does not fit {_describe(model)}: " + "; ".join(problems)
            + ". Is it from another architecture or model size? Choose the matching model name and options."
        )


def _load_npz(model: nn.Module, path: Path) -> None:
    if not callable(getattr(model, "load_pretrained", None)):
        raise BackboneError(
            f"{str(path)!r}: .npz checkpoints (original Google JAX layout) load only into timm Vision "
            f"Transformers, through model.load_pretrained(); {_describe(model)} has none. "
            "Use a .safetensors or .pth state dict for this model."
        )
    depth, head_shape = _npz_layout(path)
    blocks = getattr(model, "blocks", None)
    if depth is not None and isinstance(blocks, nn.Sequential) and depth != len(blocks):
        raise BackboneError(
            f"checkpoint {str(path)!r} has {depth} transformer blocks but {_describe(model)} has {len(blocks)}; "
            "choose the model that matches the checkpoint (ViT-B/16: vit_base_patch16_224)"
        )
    try:
        model.load_pretrained(str(path))
    except Exception as e:  # timm raises KeyError, ValueError or RuntimeError on foreign layouts
        raise BackboneError(
            f"cannot load the .npz checkpoint {str(path)!r} into {_describe(model)} "
            f"({type(e).__name__}: {_first_line(e)}); expected the original Google ViT layout "
            "('Transformer/encoderblock_0/...') of the same model size"
        ) from e
    head = getattr(model, "head", None)
    if isinstance(head, nn.Linear) and head_shape != (head.out_features,):
        found = f"head with {head_shape[0]} classes" if head_shape else "no head"
        _logger.info("%s: classifier head re-initialised for %d classes (the checkpoint has %s)",
                     path, head.out_features, found)


def _npz_layout(path: Path) -> tuple[int | None, tuple[int, ...] | None]:
    """(number of transformer blocks, shape of the head bias) of a Google ViT .npz, where readable."""
    try:
        with np.load(path, allow_pickle=False) as weights:
            keys = list(weights.files)
            stacked = [k for k in keys if k.endswith("Transformer/encoderblock/LayerNorm_0/scale")]
            head_bias = [k for k in keys if k == "head/bias" or k.endswith("/head/bias")]
            head_shape = tuple(weights[head_bias[0]].shape) if head_bias else None
            if stacked:  # big_vision layout: every block parameter stacked along axis 0
                return int(weights[stacked[0]].shape[0]), head_shape
            indices = {int(m.group(1)) for k in keys if (m := re.search(r"Transformer/encoderblock_(\d+)/", k))}
            return (max(indices) + 1 if indices else None), head_shape
    except Exception:
        return None, None  # unreadable: timm's loader reports it in its own words


# --------------------------------------------------------------------------- ViT facts


def default_targets(model: nn.Module) -> tuple[list[str], dict[str, list[str]]]:
    """The default adapter targets of a timm ViT, and the split of its fused qkv.

    Returns:
        ``(targets, split)``: glob targets for q, k, v (split from the fused
        ``blocks.*.attn.qkv``), the attention output projection and both MLP layers
        of every block, and ``{"attn.qkv": ["q", "k", "v"]}``.

    Raises:
        BackboneError: when some block lacks one of these ``nn.Linear`` layers (not a
            standard timm ViT): pass the targets explicitly then.
    """
    modules = dict(model.named_modules())
    blocks = sorted({int(m.group(1)) for n in modules if (m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv", n))})
    kinds = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    absent = [
        f"blocks.{i}.{kind}" for i in blocks for kind in kinds
        if not isinstance(modules.get(f"blocks.{i}.{kind}"), nn.Linear)
    ]
    if not blocks or absent:
        what = f"lacks the Linear layers {absent[:4]}" if blocks else "has no 'blocks.N.attn.qkv' Linear layers"
        raise BackboneError(
            f"{_describe(model)} {what}, so it is not a standard timm Vision Transformer; "
            "pass the adapter targets explicitly (e.g. targets=['re:layers\\..*\\.q_proj'] or --targets)"
        )
    return [f"blocks.*.{kind}" for kind in kinds], {"attn.qkv": ["q", "k", "v"]}


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the classifier head module(s), trained in full next to the adapters.

    Read from timm's ``pretrained_cfg["classifier"]`` (``"head"`` for ViTs; a
    distilled DeiT also has ``"head_dist"``), falling back to ``"head"``.

    Raises:
        BackboneError: when the model has no module of those names.
    """
    names = _head_names(model)
    if not names:
        raise BackboneError(
            f"{_describe(model)} has no classifier head module named {_classifier_names(model)}; "
            "name the modules to train in full explicitly"
        )
    return names


def _classifier_names(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    classifier = cfg.get("classifier") or "head"
    return [classifier] if isinstance(classifier, str) else list(classifier)


def _head_names(model: nn.Module) -> list[str]:
    modules = dict(model.named_modules())
    return [n for n in _classifier_names(model) if n in modules]


def _under(key: str, module_names: list[str]) -> bool:
    return any(key.startswith(name + ".") for name in module_names)


def resolve_normalization(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``(mean, std, interpolation)`` the model's pre-trained weights expect.

    From timm's pretrained config (``timm.data.resolve_data_config``); ImageNet
    mean/std and ``"bicubic"`` for models without one. Note that the original
    Google ViT weights (``orig_in21k``) expect mean = std = (0.5, 0.5, 0.5).
    """
    if getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None):
        config = timm.data.resolve_data_config({}, model=model)
        mean, std = config.get("mean", _IMAGENET_MEAN), config.get("std", _IMAGENET_STD)
        interpolation = config.get("interpolation") or "bicubic"
    else:
        mean, std, interpolation = _IMAGENET_MEAN, _IMAGENET_STD, "bicubic"
    return tuple(float(x) for x in mean), tuple(float(x) for x in std), str(interpolation)


def block_index_and_kind(adapter_name: str) -> tuple[int, str] | None:
    """``(block, kind)`` of a ViT adapter name, or ``None`` for other names.

    ``"blocks.3.attn.qkv.v"`` -> ``(3, "v")``, ``"blocks.0.attn.proj"`` -> ``(0, "proj")``,
    ``"blocks.11.mlp.fc1"`` -> ``(11, "fc1")``; an unsplit ``"blocks.2.attn.qkv"``
    -> ``(2, "qkv")``.
    """
    match = _ADAPTER_NAME.fullmatch(adapter_name)
    if match is None:
        return None
    block, *kinds = match.groups()
    return int(block), next(k for k in kinds if k is not None)


# --------------------------------------------------------------------------- helpers


def _describe(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    return f"{type(model).__name__} {arch!r}" if arch else type(model).__name__


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
