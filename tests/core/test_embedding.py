"""Adapters on ``nn.Embedding``: the update is a linear map of the one-hot token, so a token's
row of ``W0 + delta^T`` is looked up. Checked against ``F.embedding`` of an independently built
merged table, through training rounds, merging, adapter files and PEFT's own Embedding LoRA."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from elalora_vit import ElaLoRAConfig, patch_model
from tests.core.layer_kinds import assert_merges_and_round_trips, assert_peft_round_trip, perturb, train_through_rounds

VOCAB, DIM = 40, 12


class TinyLM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM, padding_idx=0)
        self.mix = nn.Linear(DIM, DIM)
        self.head = nn.Linear(DIM, 5)

    def forward(self, tokens):
        return self.head(F.gelu(self.mix(self.embed(tokens))).mean(dim=1))


def _patched(method="elalora", targets=("embed", "mix"), **cfg):
    torch.manual_seed(0)
    model = TinyLM()
    config = ElaLoRAConfig(rank=2, max_rank=4, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=2, k=1, **cfg)
    patch_model(model, list(targets), config, method=method)
    model.head.requires_grad_(True)
    return model, config


def _tokens(n=4, length=7, seed=0):
    return torch.randint(0, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("method", ["elalora", "lora"])
def test_the_update_is_a_lookup_in_the_merged_table(method):
    model, _ = _patched(method)
    tokens = _tokens()
    base = copy.deepcopy(model)
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), base(tokens), rtol=0, atol=0)  # the base function at init
    perturb(model)
    layer = model.embed
    assert layer.bias is None and not layer.base_layer.weight.requires_grad
    with torch.no_grad():
        # independently: delta (dim, vocab) = sum_i P_i scale_i Q_i; the table is W0 + delta^T
        scale = layer.slot_scale()
        delta = sum(layer.lora_B[0][:, i : i + 1] * scale[0, i] @ layer.lora_A[0][i : i + 1] for i in range(layer.capacity))
        expected = F.embedding(tokens, layer.base_layer.weight + delta.T, padding_idx=0)
        torch.testing.assert_close(layer(tokens), expected, rtol=1e-6, atol=1e-6)
        unmerged = layer(tokens)
        layer.merge()
        torch.testing.assert_close(layer(tokens), unmerged, rtol=1e-6, atol=1e-6)
        layer.unmerge()
        torch.testing.assert_close(layer.base_layer.weight, base.embed.base_layer.weight, rtol=0, atol=1e-6)


def test_the_padding_token_gets_no_gradient_as_in_the_base_layer():
    model, _ = _patched()
    perturb(model)  # P != 0, so Q has a gradient
    tokens = torch.tensor([[0, 0, 3, 5]])
    model(tokens).sum().backward()
    q_grad = model.embed.lora_A.grad[0]  # (capacity, vocab): one column per token
    assert not q_grad[:, 0].any() and not q_grad[:, 7].any()  # padding and an unused token
    assert q_grad[:2, 3].abs().sum() > 0 and q_grad[:2, 5].abs().sum() > 0
    assert model.embed.lora_B.grad.abs().sum() > 0


def test_an_embedding_model_trains_through_rounds_merges_and_round_trips_its_adapter_file(tmp_path):
    model, config = _patched()
    train_through_rounds(model, config, lambda g: (torch.randint(0, VOCAB, (8, 6), generator=g), torch.randint(0, 5, (8,), generator=g)))
    assert model.embed.lora_B.abs().sum() > 0  # it learned
    assert_merges_and_round_trips(model, _tokens(), TinyLM, tmp_path / "adapter")


def test_peft_loads_the_exported_embedding_adapter_and_it_imports_back(tmp_path):
    pytest.importorskip("peft")
    model, config = _patched()
    perturb(model)
    peft_model = assert_peft_round_trip(model, _tokens(), TinyLM, tmp_path / "peft", config, adapters=2)
    assert "default" in peft_model.base_model.model.embed.lora_embedding_A  # PEFT's own Embedding LoRA
