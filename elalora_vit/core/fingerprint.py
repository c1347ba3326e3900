"""A fingerprint of a model's frozen weights, to tell one backbone from another.

Adapters only mean something on the weights they were trained on. A random
backbone (``--no-pretrained``) or a local checkpoint gives the same shapes as
any other, so a shape check cannot catch a wrong base; this hash can. It covers
every state-dict entry except the adapters' own tensors and the modules that are
saved in full (the head), under the names of the unpatched model, so a patched
and an unpatched model of the same weights agree.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch
from torch import nn

from .layer import adapted_layers, unwrap_model

# State-dict entries that belong to the adapters, not to the backbone.
_ADAPTER_KEYS = ("lora_A", "lora_B", "lora_E", "lora_theta", "lambda_scale", "rank_mask")


def backbone_fingerprint(model: nn.Module, exclude: Sequence[str] = ()) -> str:
    """``"sha256:<16 hex digits>"`` over the weights of ``model`` outside adapters and ``exclude``.

    Args:
        model: a patched or unpatched model; merged adapters must be unmerged first
            (merging changes the base weights).
        exclude: module names whose weights are left out (e.g. the classifier head).
    """
    model = unwrap_model(model)
    merged = [name for name, layer in adapted_layers(model) if layer.merged]
    if merged:
        raise ValueError(f"backbone_fingerprint: unmerge the adapters first ({merged[0]} is merged)")
    digest = hashlib.sha256()
    state = model.state_dict()
    entries = sorted((_base_name(key), key) for key in state if not _skipped(key, exclude))
    for name, key in entries:
        tensor = state[key].detach()
        digest.update(f"{name}:{tuple(tensor.shape)}:".encode())
        if tensor.dtype == torch.bool or not tensor.is_floating_point():
            tensor = tensor.to(torch.int64)
        else:
            tensor = tensor.to(torch.float32)
        digest.update(tensor.cpu().contiguous().numpy().tobytes())
    return f"sha256:{digest.hexdigest()[:16]}"


def _base_name(key: str) -> str:
    return key.replace(".base_layer.", ".")


def _skipped(key: str, exclude: Sequence[str]) -> bool:
    if key.rsplit(".", 1)[-1] in _ADAPTER_KEYS:
        return True
    name = _base_name(key)
    return any(name == m or name.startswith(m + ".") for m in exclude)
