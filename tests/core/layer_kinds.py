"""Shared by the tests of each kind of adapted layer (Conv2d, Embedding): perturbed factors,
a short training run through rounds, and the merge / adapter-file round trip."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from elalora_vit import (RankAllocator, adapted_layers, from_pretrained, merge_adapters, merged_inference,
                         orthogonal_regularization, save_pretrained, unmerge_adapters)


def perturb(model: nn.Module) -> None:
    """Every factor moved off its start (P = 0 / lambda = 0 would hide the update)."""
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            for p in (layer.lora_A, layer.lora_B, getattr(layer, "lora_theta", None)):
                if p is not None:
                    p.add_(0.1 * torch.randn_like(p))


def train_through_rounds(model: nn.Module, config, batch: Callable[[torch.Generator], tuple], steps: int = 12):
    """AdamW with the regulariser and a stepped allocator; asserts rounds ran and kept the budget."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    allocator = RankAllocator(model, config, total_steps=steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = batch(g)
        (F.cross_entropy(model(x), y) + config.orth_reg_weight * orthogonal_regularization(model)).backward()
        optimizer.step()
        allocator.step(optimizer)
        optimizer.zero_grad()
    assert allocator.history and allocator.total_rank() == allocator.initial_total_rank
    return allocator


def assert_merges_and_round_trips(model: nn.Module, x: torch.Tensor, fresh: Callable[[], nn.Module], folder: Path) -> None:
    """Merged inference, merge and unmerge keep the outputs; the adapter folder loads into a fresh model."""
    model.eval()
    save_pretrained(model, folder)
    with torch.no_grad():
        out = model(x)
        with merged_inference(model):
            torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)
        merge_adapters(model)
        torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)
        unmerge_adapters(model)
    torch.manual_seed(0)
    loaded = from_pretrained(fresh(), folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), out, rtol=1e-5, atol=1e-5)


def assert_peft_round_trip(model: nn.Module, x: torch.Tensor, fresh: Callable[[], nn.Module], folder: Path, config,
                           adapters: int):
    """``export_peft`` (head saved in full) loads in PEFT itself with our outputs, and
    ``from_peft`` brings it back into a fresh model with them; returns PEFT's model."""
    import copy

    from peft import PeftModel

    from elalora_vit.integrations.peft import export_peft, from_peft

    model.eval()
    with torch.no_grad():
        ours = model(x)
    export_peft(model, folder, modules_to_save=["head"])
    torch.manual_seed(0)
    base = fresh()
    base.head.load_state_dict(model.head.state_dict())
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(folder)).eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(x), ours, rtol=1e-5, atol=1e-5)
    torch.manual_seed(0)
    back = fresh()
    assert len(from_peft(back, folder, config=config)) == adapters
    with torch.no_grad():
        torch.testing.assert_close(back.eval()(x), ours, rtol=1e-4, atol=1e-5)
    return peft_model
