"""The allocator inside ``accelerator.accumulate(...)``: one allocator step per optimizer
step, not per micro-batch, with real accelerate."""

import torch
import torch.nn.functional as F

from elalora_vit import ElaLoRAConfig, RankAllocator, adapter_param_groups, patch_model
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit


def test_allocator_counts_optimizer_steps_under_gradient_accumulation():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()
    accelerator = Accelerator(gradient_accumulation_steps=2, cpu=True)
    model = make_tiny_vit(depth=1)
    cfg = ElaLoRAConfig(rank=2, warmup_steps=2, adjust_interval=1, stabilize_steps=1)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT)
    model.head.requires_grad_(True)
    opt = torch.optim.AdamW(adapter_param_groups(model, lr=1e-2, config=cfg))
    model, opt = accelerator.prepare(model, opt)
    alloc = RankAllocator(model, cfg, total_steps=5)
    generator = torch.Generator().manual_seed(0)
    for _ in range(10):  # 10 micro-batches, 5 optimizer steps
        with accelerator.accumulate(model):
            x, y = torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 5, (4,), generator=generator)
            accelerator.backward(F.cross_entropy(model(x), y))
            opt.step()
            alloc.step(opt)
            opt.zero_grad()
    assert alloc.step_count == 5
    assert alloc.history  # the schedule of 5 steps ran its rounds
    AcceleratorState._reset_state()
