"""Local weight files: the original Google ViT ``.npz``, ``.safetensors`` and
``.pth``/``.pt``/``.bin`` state dicts, loaded through timm's own converters."""

from __future__ import annotations

import logging
import os
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..core.errors import first_line
from .errors import BackboneError, describe_model
from .facts import head_names_present, under

_logger = logging.getLogger(__name__)

CHECKPOINT_EXTENSIONS = (".npz", ".safetensors", ".pth", ".pt", ".bin")


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
                f"cannot read the safetensors checkpoint {str(path)!r} ({first_line(e)}); "
                "the file is truncated, corrupted or not in safetensors format"
            ) from e
    try:
        # weights_only: tensors and plain containers only, never arbitrary pickled code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "WeightsUnpickler" in line), first_line(e))
        if "Weights only load failed" in str(e):
            raise BackboneError(
                f"refused to load {str(path)!r}: it holds pickled Python objects besides tensors ({detail}). "
                "Checkpoints are read with torch.load(weights_only=True) and pickled code is never run; "
                "re-save the weights alone, e.g. torch.save(model.state_dict(), path) or as .safetensors"
            ) from e
        raise BackboneError(f"cannot read the PyTorch checkpoint {str(path)!r}: {detail}") from e
    except Exception as e:
        raise BackboneError(
            f"cannot read the PyTorch checkpoint {str(path)!r} ({type(e).__name__}: {first_line(e)}); "
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
            f"({type(e).__name__}: {first_line(e)}); is it a checkpoint of {describe_model(model)}?"
        ) from e


def _drop_unfit_head(state_dict: dict[str, torch.Tensor], model: nn.Module, path: Path) -> dict[str, torch.Tensor]:
    heads = head_names_present(model)
    own = model.state_dict()
    head_keys = [k for k in own if under(k, heads)]
    dropped = {
        k: tuple(v.shape) for k, v in state_dict.items()
        if under(k, heads) and (k not in own or own[k].shape != v.shape)
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
    heads = head_names_present(model)
    missing = [k for k in own if k not in state_dict and not under(k, heads)]
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
            f"checkpoint {str(path)!r} does not fit {describe_model(model)}: " + "; ".join(problems)
            + ". Is it from another architecture or model size? Choose the matching model name and options."
        )


def _load_npz(model: nn.Module, path: Path) -> None:
    if not callable(getattr(model, "load_pretrained", None)):
        raise BackboneError(
            f"{str(path)!r}: .npz checkpoints (original Google JAX layout) load only into timm Vision "
            f"Transformers, through model.load_pretrained(); {describe_model(model)} has none. "
            "Use a .safetensors or .pth state dict for this model."
        )
    depth, head_shape = _npz_layout(path)
    blocks = getattr(model, "blocks", None)
    if depth is not None and isinstance(blocks, nn.Sequential) and depth != len(blocks):
        raise BackboneError(
            f"checkpoint {str(path)!r} has {depth} transformer blocks but {describe_model(model)} has {len(blocks)}; "
            "choose the model that matches the checkpoint (ViT-B/16: vit_base_patch16_224)"
        )
    try:
        model.load_pretrained(str(path))
    except Exception as e:  # timm raises KeyError, ValueError or RuntimeError on foreign layouts
        raise BackboneError(
            f"cannot load the .npz checkpoint {str(path)!r} into {describe_model(model)} "
            f"({type(e).__name__}: {first_line(e)}); expected the original Google ViT layout "
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
