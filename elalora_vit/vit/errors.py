"""The error every part of the backbone package raises, and how it names a model."""

from __future__ import annotations

from torch import nn


class BackboneError(ValueError):
    """A backbone that cannot be built, or weights that cannot be had or do not fit."""


def describe_model(model: nn.Module) -> str:
    """``VisionTransformer 'vit_tiny_patch16_224'``: the class and, if timm knows it, the architecture."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    return f"{type(model).__name__} {arch!r}" if arch else type(model).__name__
