"""Dispatched ops per ElaLoRA training step against LoRA's at the same targets (issue 25's
goal: at most 1.25x, regulariser included), so that a change that adds launches to every
step cannot land unseen.

Counted as benchmarks/dispatch.py counts them: every aten op under a ``TorchDispatchMode``,
on a 4-block tiny ViT, rank 8 on q, k, v, proj, fc1, fc2, after a warm-up step.  The
optimizer is AdamW with ``fused=True``, what ``elalora-vit train`` builds on a GPU: one
launch for all parameters, so ElaLoRA's extra theta tensors cost no launches there (the
per-tensor loop of a CPU AdamW would count 10 ops for each)."""

import torch
import torch.nn.functional as F

from elalora_vit import ElaLoRAConfig, RankAllocator, orthogonal_regularization, patch_model
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit
from tests.test_benchmarks_smoke import _script

CountOps = _script("dispatch")._CountOps  # the counter benchmarks/dispatch.py reports with


def ops_of_a_step(method: str, regularizer: bool) -> dict[str, int]:
    """Ops of one step by phase: ``model`` (forward, loss, regulariser, backward) and ``rest``
    (the optimizer and the allocator)."""
    model = make_tiny_vit(depth=4)
    cfg = ElaLoRAConfig(rank=8, warmup_steps=50, stabilize_steps=0, adjust_interval=50)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT, method=method)
    model.head.requires_grad_(True)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    alloc = RankAllocator(model, cfg, total_steps=100) if method == "elalora" else None
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))

    def step(counted: bool) -> dict[str, int]:
        counts = {}
        with CountOps() as counter:
            loss = F.cross_entropy(model(x), y)
            if regularizer:
                loss = loss + cfg.orth_reg_weight * orthogonal_regularization(model)
            loss.backward()
        counts["model"] = sum(counter.ops.values())
        with CountOps() as counter:
            opt.step()
            if alloc is not None:
                alloc.step(opt)
        counts["rest"] = sum(counter.ops.values())
        opt.zero_grad(set_to_none=True)
        return counts

    step(False)  # optimizer state and cached masks exist from here on
    return step(True)


def test_elalora_dispatches_at_most_1_25x_loras_ops_regulariser_included():
    lora = ops_of_a_step("lora", regularizer=False)
    plain = ops_of_a_step("elalora", regularizer=False)
    full = ops_of_a_step("elalora", regularizer=True)
    assert plain["model"] <= 1.12 * lora["model"]  # the slot scale: one node per layer
    assert full["model"] <= 1.25 * lora["model"]  # the measure: forward, loss, regulariser, backward
    assert sum(full.values()) <= 1.25 * sum(lora.values())  # the whole step, optimizer and allocator too
