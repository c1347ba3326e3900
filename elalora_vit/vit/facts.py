"""What the training code asks of a timm ViT: which Linear layers to adapt by
default, which head to train in full, and where an adapter sits."""

from __future__ import annotations

import re

from torch import nn

from ..core.layer import linear_features
from .errors import BackboneError, describe_model

# The Linear layers of a timm ViT block that get adapters by default, and the parts
# the fused qkv projection is split into. Adapters are named as the core names them
# (``find_adapters``): ``<module>`` or ``<module>.<part>``, e.g. ``blocks.3.attn.qkv.v``.
BLOCK_LINEARS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
QKV_SPLIT = {"attn.qkv": ("q", "k", "v")}
# A timm ConvNeXt: each block's pointwise MLP (Linear, or 1 x 1 Conv2d with conv_mlp) and each
# stage's downsampling convolution (2 x 2, stride 2: a patch merge); the depthwise 7 x 7
# convolutions are grouped, so not one linear map, and are left frozen.
CONVNEXT_TARGETS = ("stages.*.blocks.*.mlp.fc1", "stages.*.blocks.*.mlp.fc2", "stages.*.downsample.1")


def default_targets(model: nn.Module) -> tuple[list[str], dict[str, list[str]]]:
    """The default adapter targets of a timm ViT (or ConvNeXt), and the split of its fused qkv.

    Returns:
        ``(targets, split)``: for a ViT, glob targets for q, k, v (split from the fused
        ``blocks.*.attn.qkv``), the attention output projection and both MLP layers
        of every block, and ``{"attn.qkv": ["q", "k", "v"]}``; for a timm ConvNeXt,
        :data:`CONVNEXT_TARGETS` and no split.

    Raises:
        BackboneError: when some block lacks one of these ``nn.Linear`` layers (not a
            standard timm ViT): name the targets in the config then.
    """
    modules = dict(model.named_modules())
    if any(re.fullmatch(r"stages\.\d+\.blocks\.\d+\.mlp\.fc1", n) and linear_features(m) for n, m in modules.items()):
        return list(CONVNEXT_TARGETS), {}
    blocks = sorted({int(m.group(1)) for n in modules if (m := re.fullmatch(r"blocks\.(\d+)\.attn\.qkv", n))})
    absent = [
        f"blocks.{i}.{kind}" for i in blocks for kind in BLOCK_LINEARS
        if not isinstance(modules.get(f"blocks.{i}.{kind}"), nn.Linear)
    ]
    if not blocks or absent:
        what = f"lacks the Linear layers {absent[:4]}" if blocks else "has no 'blocks.N.attn.qkv' Linear layers"
        raise BackboneError(
            f"{describe_model(model)} {what}, so it is not a standard timm Vision Transformer; "
            "name the adapter targets explicitly: model.targets in a config file "
            "(e.g. targets: ['re:layers\\..*\\.q_proj']), --set model.targets=[...] on the command line, "
            "or targets=[...] in Python"
        )
    return [f"blocks.*.{kind}" for kind in BLOCK_LINEARS], {kind: list(parts) for kind, parts in QKV_SPLIT.items()}


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the classifier head module(s), trained in full next to the adapters.

    Read from timm's ``pretrained_cfg["classifier"]`` (``"head"`` for ViTs; a
    distilled DeiT also has ``"head_dist"``), falling back to ``"head"``.

    Raises:
        BackboneError: when the model has no module of those names.
    """
    names = head_names_present(model)
    if not names:
        raise BackboneError(
            f"{describe_model(model)} has no classifier head module named {_classifier_names(model)}; "
            "name the modules to train in full explicitly"
        )
    return names


def _classifier_names(model: nn.Module) -> list[str]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    classifier = cfg.get("classifier") or "head"
    return [classifier] if isinstance(classifier, str) else list(classifier)


def head_names_present(model: nn.Module) -> list[str]:
    """The classifier head names of ``model`` that are modules of it (possibly none)."""
    modules = dict(model.named_modules())
    return [n for n in _classifier_names(model) if n in modules]


def under(key: str, module_names: list[str]) -> bool:
    """Whether the state-dict ``key`` belongs to one of ``module_names``."""
    return any(key.startswith(name + ".") for name in module_names)


def _adapter_name_pattern() -> re.Pattern[str]:
    """``blocks.<i>.<linear>`` or ``blocks.<i>.<linear>.<part>``, built from the layout above."""
    alternatives = []
    for linear in BLOCK_LINEARS:
        parts = QKV_SPLIT.get(linear, ())
        suffix = f"(?:\\.(?P<part_{len(alternatives)}>{'|'.join(parts)}))?" if parts else ""
        alternatives.append(f"(?P<linear_{len(alternatives)}>{re.escape(linear)}){suffix}")
    return re.compile(r"blocks\.(?P<block>\d+)\.(?:" + "|".join(alternatives) + ")")


_ADAPTER_NAME = _adapter_name_pattern()


def block_index_and_kind(adapter_name: str) -> tuple[int, str] | None:
    """``(block, kind)`` of a ViT adapter name, or ``None`` for other names.

    ``"blocks.3.attn.qkv.v"`` -> ``(3, "v")``, ``"blocks.0.attn.proj"`` -> ``(0, "proj")``,
    ``"blocks.11.mlp.fc1"`` -> ``(11, "fc1")``; an unsplit ``"blocks.2.attn.qkv"``
    -> ``(2, "qkv")``. The kind is the part for a split layer, else the layer's last name.
    """
    match = _ADAPTER_NAME.fullmatch(adapter_name)
    if match is None:
        return None
    groups = {k: v for k, v in match.groupdict().items() if v is not None}
    part = next((v for k, v in groups.items() if k.startswith("part_")), None)
    linear = next(v for k, v in groups.items() if k.startswith("linear_"))
    return int(groups["block"]), part or linear.rpartition(".")[2]
