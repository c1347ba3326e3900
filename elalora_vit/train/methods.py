"""The five fine-tuning methods, set up on the same backbone for the same loop.

- ``elalora``: SVD adapters whose ranks are pruned and expanded (:class:`RankAllocator`).
- ``lora``: fixed-rank ``B A`` adapters.
- ``adalora``: SVD adapters pruned from ``adalora_init_rank`` down to ``rank`` (:class:`AdaLoRAAllocator`).
- ``full``: every parameter trains.
- ``linear``: only the classifier head trains (linear probing).

The classifier head always trains in full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from ..core import (
    AdaLoRAAllocator,
    ElaLoRAConfig,
    LoRALinear,
    RankAllocator,
    SVDLinear,
    adapted_layers,
    adapter_param_groups,
    find_adapters,
    patch_model,
)
from ..vit import default_targets, head_module_names
from .config import TrainConfig


@dataclass
class MethodSetup:
    """What the loop needs to know about the method."""

    param_groups: list[dict]
    allocator: RankAllocator | None
    adapter_config: ElaLoRAConfig | None  # None for full / linear
    head_names: list[str]

    @property
    def uses_orth_reg(self) -> bool:
        return self.allocator is not None and self.adapter_config.orth_reg_weight > 0


def setup_method(model: nn.Module, cfg: TrainConfig, total_steps: int) -> MethodSetup:
    """Patch ``model`` for ``cfg.method`` and return its trainable parameter groups."""
    heads = head_module_names(model)
    allocator, adapter_config = None, None
    if cfg.method == "full":
        model.requires_grad_(True)
    else:
        model.requires_grad_(False)
    if cfg.method in ("elalora", "lora", "adalora"):
        targets, split = _targets(model, cfg)
        if cfg.method == "adalora":
            init_rank = cfg.adapter.adalora_init_rank or math.ceil(1.5 * cfg.adapter.rank)
            adapter_config = cfg.core_config(total_steps, rank=init_rank, max_rank=init_rank)
        else:
            adapter_config = cfg.core_config(total_steps)
        patch_model(
            model,
            targets,
            adapter_config,
            split=split,
            exclude=heads,
            method="lora" if cfg.method == "lora" else "elalora",
        )
        if cfg.method == "elalora":
            allocator = RankAllocator(model, adapter_config, total_steps)
        elif cfg.method == "adalora":
            allocator = AdaLoRAAllocator(model, adapter_config, total_steps, target_rank=cfg.adapter.rank)
    for name in heads:
        model.get_submodule(name).requires_grad_(True)
    return MethodSetup(_param_groups(model, cfg, adapter_config), allocator, adapter_config, heads)


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
    """Parameters that the method trains, counting only active ranks of SVD adapters.

    A rank of an SVD adapter costs ``d_in + d_part + 1`` (a row of Q, a column
    of P and lambda); capacity slots that are not active are not counted, so
    ElaLoRA, AdaLoRA and LoRA compare at their real budget.
    """
    layers = adapted_layers(model)
    adapter_ids = set()
    count = 0
    for _, layer in layers:
        adapter_ids.update(id(p) for p in (layer.lora_A, layer.lora_B))
        if isinstance(layer, SVDLinear):
            adapter_ids.add(id(layer.lora_theta))
            active = int(layer.rank_mask.sum())
            count += active * (layer.in_features + layer.part_features + 1)
        elif isinstance(layer, LoRALinear):
            count += layer.n_parts * layer.capacity * (layer.in_features + layer.part_features)
    count += sum(p.numel() for p in model.parameters() if p.requires_grad and id(p) not in adapter_ids)
    return count


def trainable_state_names(model: nn.Module, cfg: TrainConfig) -> list[str]:
    """Keys of ``model.state_dict()`` a checkpoint must hold: what trains, plus the rank masks."""
    if cfg.method == "full":
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
