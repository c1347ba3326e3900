"""Shapes never change, so torch.compile traces the adapted model once, rounds and all."""

import torch

from elalora_vit import ElaLoRAConfig, RankAllocator, adapter_param_groups, patch_model
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit


def test_compiled_model_is_traced_once_across_rank_changes():
    torch._dynamo.reset()
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = make_tiny_vit(depth=1)
    cfg = ElaLoRAConfig(rank=2, warmup_steps=2, adjust_interval=2, stabilize_steps=2)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT)
    model.head.requires_grad_(True)
    opt = torch.optim.AdamW(adapter_param_groups(model, lr=1e-2, config=cfg))
    compiled = torch.compile(model, backend=counting_backend)
    alloc = RankAllocator(compiled, cfg, total_steps=12)  # looks through the compile wrapper
    generator = torch.Generator().manual_seed(0)
    for _ in range(12):
        x, y = torch.randn(4, 3, 32, 32, generator=generator), torch.randint(0, 5, (4,), generator=generator)
        torch.nn.functional.cross_entropy(compiled(x), y).backward()
        opt.step()
        alloc.step(opt)
        opt.zero_grad()
    assert len(alloc.history) >= 2 and any(r.pruned for r in alloc.history)
    assert len(graphs) == 1, "a rank change recompiled the model"
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))
