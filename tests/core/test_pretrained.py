"""The PEFT-style calls on our own objects: adapter folders, disable_adapter, parameter counts."""

import copy

import pytest
import torch
import torch.nn.functional as F

from elalora_vit import (
    AdapterFileError,
    ElaLoRAConfig,
    RankAllocator,
    disable_adapter,
    find_adapters,
    from_pretrained,
    load_adapters,
    load_allocator_state,
    merge_adapters,
    patch_model,
    print_trainable_parameters,
    save_adapters,
    save_pretrained,
    trainable_parameters,
)
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit

CONFIG = ElaLoRAConfig(rank=2, max_rank=4, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=2, k=1)


def _trained(steps: int = 8):
    base = make_tiny_vit().eval()
    model = copy.deepcopy(base)
    patch_model(model, VIT_TARGETS, CONFIG, split=QKV_SPLIT)
    model.head.requires_grad_(True)
    allocator = RankAllocator(model, CONFIG, total_steps=steps)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    x, y = torch.randn(6, 3, 32, 32), torch.randint(0, 5, (6,))
    model.train()
    for _ in range(steps):
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        allocator.step(optimizer)
        optimizer.zero_grad()
    return base, model.eval(), allocator, x


def test_an_adapter_folder_round_trips_the_model_the_head_and_the_allocator(tmp_path):
    base, model, allocator, x = _trained()
    assert any(r.pruned for r in allocator.history)
    folder = save_pretrained(model, tmp_path / "adapter", allocator=allocator)  # config read off the layers
    assert sorted(p.name for p in folder.iterdir()) == ["adapter_model.safetensors", "elalora_allocator.pt"]
    loaded = from_pretrained(copy.deepcopy(base).requires_grad_(True), folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    trainable = {n.rpartition(".")[0] for n, p in loaded.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable == {"head"}  # the head was saved (found as trained), so it trains again
    assert [a.rank for a in find_adapters(loaded)] == [a.rank for a in find_adapters(model)]

    resumed = RankAllocator(loaded, CONFIG, total_steps=8)
    resumed.load_state_dict(load_allocator_state(folder))
    assert [r.to_dict() for r in resumed.history] == [r.to_dict() for r in allocator.history]
    assert load_allocator_state(tmp_path) is None


def test_save_and_load_adapters_accept_a_folder(tmp_path):
    base, model, _, x = _trained(steps=6)
    (tmp_path / "adir").mkdir()
    path = save_adapters(model, tmp_path / "adir", CONFIG, modules_to_save=["head"])
    assert path == tmp_path / "adir" / "adapter_model.safetensors"
    loaded = load_adapters(copy.deepcopy(base), tmp_path / "adir")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x), rtol=0, atol=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterFileError, match="adapter folder .*empty holds no adapter_model.safetensors"):
        load_adapters(copy.deepcopy(base), tmp_path / "empty")


def test_disable_adapter_gives_the_base_outputs_exactly_and_restores_them_after(tmp_path):
    base, model, _, x = _trained(steps=6)
    model.head.load_state_dict(base.head.state_dict())  # the head in place: only the adapters differ
    with torch.no_grad():
        adapted, plain = model(x), base(x)
        assert (adapted - plain).abs().max() > 1e-3
        with disable_adapter(model):
            torch.testing.assert_close(model(x), plain, rtol=0, atol=0)
        torch.testing.assert_close(model(x), adapted, rtol=0, atol=0)
    merge_adapters(model)
    with pytest.raises(RuntimeError, match="unmerge_adapters"):
        with disable_adapter(model):
            pass


def test_trainable_parameters_count_active_ranks_only(capsys):
    model = make_tiny_vit()
    total_before = sum(p.numel() for p in model.parameters())
    patch_model(model, VIT_TARGETS, CONFIG, split=QKV_SPLIT)
    model.head.requires_grad_(True)
    trainable, total = trainable_parameters(model)
    # rank 2 of every adapter: a row of Q (d_in), a column of P (d_part) and a lambda per rank.
    expected = sum(2 * (a.layer.in_features + a.layer.part_features + 1) for a in find_adapters(model))
    expected += sum(p.numel() for p in model.head.parameters())
    assert trainable == expected
    assert total == total_before - sum(p.numel() for p in model.head.parameters()) + expected
    print_trainable_parameters(model)
    line = capsys.readouterr().out.strip()
    assert line == f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {100 * trainable / total:.4f}"
