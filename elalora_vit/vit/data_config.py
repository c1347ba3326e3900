"""The input a model's pre-trained weights expect: one answer, read from the model
(timm's ``pretrained_cfg``, as ``timm.data.resolve_data_config`` reads it), with the
values a user set explicitly in the data config taking precedence."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import timm.data
from torch import nn


@dataclass(frozen=True)
class DataSpec:
    """How to turn an image into the model's input: resize to ``image_size`` x
    ``image_size`` with ``interpolation`` (timm's names: ``"bicubic"``, ``"bilinear"``, ...),
    then normalise each RGB channel with ``mean`` / ``std``."""

    image_size: int
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def resolve_data_config(model: nn.Module, data_cfg: Any = None) -> DataSpec:
    """The :class:`DataSpec` of ``model``, with ``data_cfg``'s explicit values winning.

    ``data_cfg`` is any object with optional attributes ``image_size``,
    ``interpolation``, ``mean`` and ``std`` (the training config's ``data`` section);
    a missing or empty one is taken from the model. The model's answer comes from
    timm's pretrained config (``timm.data.resolve_data_config``): the original Google
    ViT weights (``orig_in21k``) expect mean = std = (0.5, 0.5, 0.5), most others
    ImageNet's mean/std; models without a config get ImageNet's and bicubic. The size
    is the one the model was built for (``patch_embed.img_size``, so ``img_size=384``
    in the model's kwargs is honoured), else the pretrained config's.
    """
    explicit = {key: _explicit(data_cfg, key) for key in ("interpolation", "mean", "std")}
    timm_cfg = timm.data.resolve_data_config({k: v for k, v in explicit.items() if v is not None}, model=model)
    return DataSpec(
        image_size=int(_explicit(data_cfg, "image_size") or _input_size(model, timm_cfg)),
        interpolation=str(timm_cfg.get("interpolation") or "bicubic"),
        mean=tuple(float(x) for x in timm_cfg["mean"]),
        std=tuple(float(x) for x in timm_cfg["std"]),
    )


def _explicit(data_cfg: Any, key: str) -> Any:
    value = getattr(data_cfg, key, None)
    return value or None  # unset, None or empty: the model decides


def _input_size(model: nn.Module, timm_cfg: dict[str, Any]) -> int:
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size:
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    return int(timm_cfg.get("input_size", (3, 224, 224))[-1])


def check_input_size(model: nn.Module, image_size: int, model_name: str = "the model") -> None:
    """Refuse an input size the model cannot take, before any work: a timm ViT built for
    ``patch_embed.img_size`` (without ``dynamic_img_size``) asserts on other sizes only
    at its first forward pass, after the data is cached.

    Raises:
        ConfigError: the sizes differ; names both and the keys that set them.
    """
    from ..core.config import ConfigError

    patch_embed = getattr(model, "patch_embed", None)
    built_for = getattr(patch_embed, "img_size", None)
    if not built_for or not getattr(patch_embed, "strict_img_size", False):
        return  # not a ViT with a fixed input size, or one built to take any size
    side = built_for[0] if isinstance(built_for, (tuple, list)) else built_for
    if int(side) != int(image_size):
        raise ConfigError(
            f"data.image_size is {image_size}, but {model_name} is built for {side} x {side} inputs "
            f"(patch_embed.img_size); set data.image_size to {side} (or leave it unset to take the model's), "
            f"or build the model for {image_size} with model.kwargs.img_size: {image_size}"
        )
