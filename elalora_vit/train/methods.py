"""Setting up a fine-tuning method on the backbone for the training loop.

What each method is (layer, allocator, what trains, what ``rank`` means) is its
description in :mod:`elalora_vit.core.registry`; this module applies it to a
timm ViT and a :class:`TrainConfig`.  The classifier head always trains in full.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..core import (
    ElaLoRAConfig,
    Method,
    RankAllocator,
    adapted_layers,
    adapter_param_groups,
    find_adapters,
    get_method,
    patch_model,
    trainable_parameters,
)
from ..vit import default_targets, head_module_names
from ..config import TrainConfig


@dataclass
class MethodSetup:
    """What the loop needs to know about the method."""

    param_groups: list[dict]
    allocator: RankAllocator | None
    adapter_config: ElaLoRAConfig | None  # None for full / linear
    head_names: list[str]
    method: Method | None = None  # the registry's description of cfg.method

    @property
    def uses_orth_reg(self) -> bool:
        if self.method is None:  # built by hand: as before the registry, an allocator means SVD adapters
            return self.allocator is not None and self.adapter_config.orth_reg_weight > 0
        return self.method.orth_reg and self.adapter_config.orth_reg_weight > 0


def setup_method(model: nn.Module, cfg: TrainConfig, total_steps: int) -> MethodSetup:
    """Patch ``model`` for ``cfg.method`` and return its trainable parameter groups."""
    method = get_method(cfg.method)
    heads = head_module_names(model)
    allocator, adapter_config = None, None
    model.requires_grad_(method.trains == "all")
    if method.layer is not None:
        targets, split = _targets(model, cfg)
        rank, max_rank = method.adapter_ranks(cfg.adapter.rank, cfg.adapter.max_rank, cfg.adapter.adalora_init_rank)
        adapter_config = cfg.core_config(total_steps, rank=rank, max_rank=max_rank)
        exclude = [*heads, *cfg.model.exclude]  # model.exclude may name parts too: blocks.*.attn.qkv.k
        patch_model(model, targets, adapter_config, split=split, exclude=exclude, method=method.form)
        allocator = method.build_allocator(model, adapter_config, total_steps, rank=cfg.adapter.rank)
    for name in heads:
        model.get_submodule(name).requires_grad_(True)
    return MethodSetup(_param_groups(model, cfg, adapter_config), allocator, adapter_config, heads, method)


def _targets(model: nn.Module, cfg: TrainConfig):
    if cfg.model.targets:
        return list(cfg.model.targets), cfg.model.split
    return default_targets(model)


def _param_groups(model: nn.Module, cfg: TrainConfig, adapter_config: ElaLoRAConfig | None) -> list[dict]:
    # The same groups a Python API user gets: head at lr, adapters (lambda included) at
    # lr x lr_multiplier; lambda's own speed-up lives in the adapter (lambda_scale).
    return adapter_param_groups(
        model, cfg.optim.lr, adapter_config, adapter_lr=cfg.optim.lr * cfg.adapter.lr_multiplier
    )


def trainable_parameter_count(model: nn.Module) -> int:
    """Parameters that the method trains, counting only active ranks of SVD adapters
    (:func:`elalora_vit.core.trainable_parameters`), so ElaLoRA, AdaLoRA and LoRA compare
    at their real budget."""
    return trainable_parameters(model)[0]


def trainable_state_names(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Keys of ``model.state_dict()`` a checkpoint must hold: what trains, plus the rank masks."""
    if get_method(cfg.method).trains == "all":
        return list(model.state_dict())
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    return [k for k in model.state_dict() if k in trainable or k.endswith(("rank_mask", "lambda_scale"))]


def total_rank(model: nn.Module) -> int | None:
    layers = adapted_layers(model)
    if not layers:
        return None
    return int(sum(sum(layer.ranks()) for _, layer in layers))


def final_rank_pattern(model: nn.Module) -> dict[str, int]:
    return {adapter.name: adapter.rank for adapter in find_adapters(model)}
