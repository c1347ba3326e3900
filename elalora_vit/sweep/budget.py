"""``--budget-match``: LoRA's rank chosen so that its trainable parameters match ElaLoRA's.

ElaLoRA keeps its total rank but moves it between layers of different widths, so
its trainable parameters are read from its run (``trainable_params`` in
result.json: active ranks and the head).  LoRA's count is linear in its rank;
it is measured on the run's own model and targets, built on PyTorch's meta device
(shapes without values), at ranks 1 and 2, and the rank whose count
is nearest ElaLoRA's is taken.
"""

from __future__ import annotations

import dataclasses

import torch

from ..data import resolve_task
from ..config import TrainConfig
from ..train.methods import setup_method, trainable_parameter_count
from ..vit import create_backbone


def lora_rank_for_budget(cfg: TrainConfig, target_params: float) -> tuple[int, int]:
    """``(rank, trainable parameters at that rank)`` of LoRA run ``cfg`` nearest ``target_params``."""
    one, two = lora_parameter_count(cfg, 1), lora_parameter_count(cfg, 2)
    per_rank, fixed = two - one, 2 * one - two  # fixed: the head (and anything else that trains in full)
    rank = max(1, round((target_params - fixed) / per_rank))
    return rank, fixed + rank * per_rank


def lora_parameter_count(cfg: TrainConfig, rank: int) -> int:
    """Trainable parameters of ``cfg``'s run as LoRA at ``rank`` (counted once per model, task and rank)."""
    model = cfg.model
    key = repr((model.name, model.kwargs, model.targets, model.split, model.exclude, cfg.data.task, rank))
    if key not in _COUNTS:
        cfg = dataclasses.replace(cfg, method="lora", adapter=dataclasses.replace(cfg.adapter, rank=rank))
        task = resolve_task(cfg.data.task, cfg.data.source)
        with torch.device("meta"):  # shapes only: no memory, no initialisation
            model = create_backbone(cfg.model.name, task.num_classes, pretrained=False, **cfg.model.kwargs)
            setup_method(model, cfg, total_steps=100)
        _COUNTS[key] = trainable_parameter_count(model)
    return _COUNTS[key]


_COUNTS: dict[str, int] = {}
