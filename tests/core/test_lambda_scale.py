"""lambda = lambda_scale * theta: the speed of lambda lives in the adapter, not in the optimizer."""

import warnings

import pytest
import torch
from torch import nn

from elalora_vit import ElaLoRAConfig, RankAllocator, load_adapters, patch_model, save_adapters
from elalora_vit.cli import main
from elalora_vit.core.watch import AllocatorNotSteppedWarning


def _model(multiplier: float, **cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    config = ElaLoRAConfig(rank=2, lambda_lr_multiplier=multiplier, **cfg)
    patch_model(model, ["0", "2"], config)
    return model, config


def _train(model, optimizer, steps=8, allocator=None):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=g)
        loss = model(x).pow(2).mean()
        loss.backward()
        optimizer.step()
        if allocator is not None:
            allocator.step(optimizer)
        optimizer.zero_grad()


def test_function_at_init_does_not_depend_on_the_scale():
    x = torch.randn(4, 6)
    outputs = []
    for multiplier in (1.0, 20.0):
        model, _ = _model(multiplier)
        outputs.append(model(x))
        assert float(model[0].lambda_scale) == multiplier
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    torch.testing.assert_close(outputs[0], base(x))
    torch.testing.assert_close(outputs[1], base(x))


def test_plain_adam_over_model_parameters_trains_lambda_as_the_old_lr_group_did():
    # New: lambda = 20 * theta, one AdamW over model.parameters().
    new, _ = _model(20.0)
    _train(new, torch.optim.AdamW(new.parameters(), lr=1e-2, weight_decay=0.0))
    # Old recipe: lambda trained directly, its parameter group at 20 x lr.
    old, _ = _model(1.0)
    lam = [old[0].lora_theta, old[2].lora_theta]
    rest = [p for p in old.parameters() if p.requires_grad and all(p is not q for q in lam)]
    groups = [{"params": rest, "lr": 1e-2}, {"params": lam, "lr": 20 * 1e-2}]
    _train(old, torch.optim.AdamW(groups, weight_decay=0.0))
    for i in (0, 2):
        assert new[i].lambdas().abs().max() > 0.1  # lambda really moved ~ 8 steps x 0.2
        torch.testing.assert_close(new[i].lambdas(), old[i].lambdas(), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(new[i].lora_A, old[i].lora_A, rtol=1e-4, atol=1e-6)


def test_state_dict_of_format_1_is_converted_with_a_warning():
    model, _ = _model(20.0)
    with torch.no_grad():
        model[0].set_lambdas(torch.tensor([0.5, -1.0, 0.25, 2.0]), (0,))
    x = torch.randn(3, 6)
    expected = model(x)
    old_style = {}
    for key, value in model.state_dict().items():
        if key.endswith("lambda_scale"):
            continue  # format 1 had no scale buffer ...
        if key.endswith("lora_theta"):
            key, value = key.replace("lora_theta", "lora_E"), value * 20.0  # ... and stored lambda itself
        old_style[key] = value
    fresh, _ = _model(20.0)
    with pytest.warns(UserWarning, match="format 1"):
        fresh.load_state_dict(old_style)
    torch.testing.assert_close(fresh(x), expected)


def test_adapter_file_holds_lambda_and_loads_into_a_model_with_another_scale(tmp_path):
    model, config = _model(20.0)
    with torch.no_grad():
        model[0].set_lambdas(torch.tensor([0.5, -1.0]), (0, slice(0, 2)))
    path = save_adapters(model, tmp_path / "a.safetensors", config)
    other, _ = _model(1.0)
    load_adapters(other, path)
    torch.testing.assert_close(other[0].lambdas(), model[0].lambdas())
    x = torch.randn(3, 6)
    torch.testing.assert_close(other(x), model(x))


def test_warns_once_when_training_past_warmup_without_an_allocator():
    model, _ = _model(20.0, warmup_steps=3, adjust_interval=1, stabilize_steps=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _train(model, optimizer, steps=3)
        assert not [w for w in caught if w.category is AllocatorNotSteppedWarning]
        _train(model, optimizer, steps=5)
    found = [w for w in caught if w.category is AllocatorNotSteppedWarning]
    assert len(found) == 1
    assert "allocator.step(optimizer)" in str(found[0].message) and "ElaLoRACallback" in str(found[0].message)


def test_no_warning_when_the_allocator_is_stepped_and_the_file_records_its_work(tmp_path, capsys):
    model, config = _model(20.0, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=1, k=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    allocator = RankAllocator(model, config, total_steps=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AllocatorNotSteppedWarning)
        _train(model, optimizer, steps=10, allocator=allocator)
    assert len(allocator.history) >= 1
    path = save_adapters(model, tmp_path / "a.safetensors", config)
    assert main(["inspect-adapter", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"allocator: 10 steps, {len(allocator.history)} rounds" in out


def test_inspect_flags_an_adapter_whose_ranks_never_moved(tmp_path, capsys):
    model, config = _model(20.0)
    path = save_adapters(model, tmp_path / "a.safetensors", config)
    assert main(["inspect-adapter", str(path)]) == 0
    assert "allocator: 0 steps, 0 rounds (the ranks never moved" in capsys.readouterr().out
