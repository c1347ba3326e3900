"""A tiny but real training setup shared by the allocator tests."""

import torch

from elalora_vit import ElaLoRAConfig, RankAllocator, orthogonal_regularization, patch_model
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit

SMALL_SCHEDULE = dict(rank=4, max_rank=8, b=4, k=2, warmup_steps=4, adjust_interval=3, stabilize_steps=6)
TOTAL = 40


def setup(seed: int = 0, total: int = TOTAL, **overrides):
    model = make_tiny_vit(seed=seed)
    cfg = ElaLoRAConfig(**{**SMALL_SCHEDULE, **overrides})
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2)
    alloc = RankAllocator(model, cfg, total_steps=total)
    return model, opt, alloc, cfg


def batch(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, 3, 32, 32, generator=g)
    y = torch.randint(0, 5, (8,), generator=g)
    return x, y


def run(model, opt, alloc, cfg, start: int, stop: int):
    """Steps start+1 .. stop; returns the round records produced."""
    records = []
    for step in range(start, stop):
        x, y = batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss = loss + cfg.orth_reg_weight * orthogonal_regularization(model)
        loss.backward()
        opt.step()
        record = alloc.step(opt)
        if record is not None:
            records.append(record)
        opt.zero_grad()
    return records
