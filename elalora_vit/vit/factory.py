"""The timm factory: ``create_backbone`` and the probing of the Hugging Face hub.

``create_backbone`` builds a timm model with a classifier head sized for the task
and fills it with pre-trained weights, either from timm's usual source (the
Hugging Face hub, or its cache) or from a local file (see :mod:`.weights`).
Weights that cannot be had raise :class:`BackboneError`; the model never falls
back silently to random initialisation.
"""

from __future__ import annotations

import contextlib
import os
import socket
import urllib.parse
from typing import Any, Iterator, Mapping

import timm
import torch
from torch import nn

from ..core.errors import first_line
from .errors import BackboneError
from .weights import load_backbone_checkpoint

# The VTAB-1k protocol backbone: ViT-B/16 with the original Google ImageNet-21k
# weights (imagenet21k/ViT-B_16.npz); "augreg_in21k" is a different checkpoint.
DEFAULT_MODEL = "vit_base_patch16_224.orig_in21k"

# Seconds to wait for a TCP connection to the hub before treating it as unreachable;
# without this check huggingface_hub retries for about 45 s before giving up.
_HUB_PROBE_TIMEOUT = 3.0


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


def create_run_backbone(model_cfg: Any, num_classes: int | None) -> nn.Module:
    """:func:`create_backbone` for a run's ``model`` settings (any object with ``name``,
    ``pretrained``, ``checkpoint`` and ``kwargs``, such as the training config's section)."""
    return create_backbone(model_cfg.name, num_classes, pretrained=model_cfg.pretrained,
                           checkpoint=model_cfg.checkpoint, **model_cfg.kwargs)


def _build(model_name: str, num_classes: int | None, model_kwargs: Mapping[str, Any]) -> nn.Module:
    """The timm model with random weights."""
    kwargs = _timm_kwargs(num_classes, model_kwargs)
    try:
        return timm.create_model(model_name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError, ValueError, KeyError, AssertionError) as e:
        raise BackboneError(
            f"cannot build timm model {model_name!r} with {kwargs}: {first_line(e)}. "
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
        cause = f"{type(e).__name__}: {first_line(e)}"
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
