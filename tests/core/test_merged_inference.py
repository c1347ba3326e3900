"""``merged_inference``: the adapters compute as merged layers from a separate merged weight,
with no parameter changed, so training after it goes on bit for bit as without it."""

from __future__ import annotations

import copy

import pytest
import torch

from elalora_vit import ElaLoRAConfig, adapted_layers, merge_adapters, merged_inference, patch_model
from elalora_vit.core.layer import AdaptedLinear
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit


def _trained_vit(method="elalora"):
    model = make_tiny_vit()
    patch_model(model, VIT_TARGETS, ElaLoRAConfig(rank=2, max_rank=4), split=QKV_SPLIT, method=method)
    with torch.no_grad():  # a non-zero update, as after training, and an inactive slot
        for _, layer in adapted_layers(model):
            for p in (layer.lora_A, layer.lora_B, getattr(layer, "lora_theta", None)):
                if p is not None:
                    p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("method", ["elalora", "lora"])
def test_outputs_equal_the_merged_model_and_no_parameter_changes(method):
    model = _trained_vit(method).eval()
    x = torch.randn(3, 3, 32, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        unmerged = model(x)
        with merged_inference(model):
            inside = model(x)
        merged = merge_adapters(copy.deepcopy(model))(x)
    torch.testing.assert_close(inside, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inside, merged, rtol=0, atol=0)  # the same weights, the same matmuls
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(layer._inference_weight is None for _, layer in adapted_layers(model))


def test_inside_it_the_adapter_path_is_not_computed(monkeypatch):
    model = _trained_vit().eval()

    def no_adapter_path(self, *args):
        raise AssertionError("the adapter's own path ran inside merged_inference")

    with merged_inference(model):
        monkeypatch.setattr(type(next(layer for _, layer in adapted_layers(model))), "scale_slots", no_adapter_path)
        with torch.no_grad():
            model(torch.randn(2, 3, 32, 32))


def test_training_after_it_is_bit_identical_to_training_without_it():
    def steps(evaluate_between: bool):
        torch.manual_seed(1)
        model = _trained_vit().train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        for step in range(3):
            x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 5, (4,))
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
            if evaluate_between:
                model.eval()
                with merged_inference(model), torch.no_grad():
                    model(x)
                model.train()
        return model.state_dict()

    a, b = steps(False), steps(True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_conv1d_layers_merge_in_their_transposed_layout():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2Model(transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=50, n_positions=8))
    patch_model(model, ["*.attn.c_attn", "*.mlp.c_fc"], ElaLoRAConfig(rank=2), split={"attn.c_attn": ["q", "k", "v"]})
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            layer.lora_theta.add_(0.1)
    model.eval()
    ids = torch.randint(0, 50, (2, 8))
    with torch.no_grad():
        unmerged = model(ids).last_hidden_state
        with merged_inference(model):
            inside = model(ids).last_hidden_state
    torch.testing.assert_close(inside, unmerged, rtol=1e-5, atol=1e-5)


def test_a_disabled_or_merged_layer_is_left_as_it_is():
    from elalora_vit import disable_adapter

    model = _trained_vit().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(), disable_adapter(model):
        base = model(x)
        with merged_inference(model):
            torch.testing.assert_close(model(x), base, rtol=0, atol=0)
    merge_adapters(model)
    with torch.no_grad():
        merged = model(x)
        with merged_inference(model):
            torch.testing.assert_close(model(x), merged, rtol=0, atol=0)
    assert isinstance(next(layer for _, layer in adapted_layers(model)), AdaptedLinear)


def test_evaluation_during_training_runs_merged(tmp_path, monkeypatch):
    import elalora_vit.core as core
    from elalora_vit.train import load_config, train
    from tests.train.conftest import tiny_overrides, write_folder_task

    entered, real = [], core.merged_inference

    def spy(model):
        entered.append(len(list(adapted_layers(model))))
        return real(model)

    monkeypatch.setattr(core, "merged_inference", spy)
    data = write_folder_task(tmp_path / "data", train=16, test=8)
    train(load_config(None, tiny_overrides(data, tmp_path / "run", **{"optim.epochs": 2, "eval_every": 1})))
    assert len(entered) == 2 and all(n > 0 for n in entered)  # every evaluation, over every adapter
