"""One description per method (core/registry.py): injection, adapter files and the
training setup read it instead of comparing method names."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from elalora_vit import (
    AdaLoRAAllocator,
    AdapterFileError,
    ConfigError,
    ElaLoRAConfig,
    LoRALinear,
    RankAllocator,
    SVDLinear,
    TargetError,
    get_method,
    load_adapters,
    method_names,
    patch_model,
    read_adapter_metadata,
    save_adapters,
)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 3))


def test_the_five_methods_and_what_each_is_made_of():
    assert method_names() == ("elalora", "lora", "adalora", "full", "linear")
    described = {
        name: (m.layer, m.allocator, m.saves_adapters, m.orth_reg, m.trains)
        for name, m in ((n, get_method(n)) for n in method_names())
    }
    assert described == {
        "elalora": (SVDLinear, RankAllocator, True, True, "adapters"),
        "lora": (LoRALinear, None, True, False, "adapters"),
        "adalora": (SVDLinear, AdaLoRAAllocator, True, True, "adapters"),
        "full": (None, None, False, False, "all"),
        "linear": (None, None, False, False, "head"),
    }


def test_adalora_starts_at_one_and_a_half_times_rank_and_prunes_to_rank():
    adalora = get_method("adalora")
    assert adalora.adapter_ranks(8, None) == (12, 12)
    assert adalora.adapter_ranks(3, 99, init_rank=10) == (10, 10)
    assert get_method("elalora").adapter_ranks(8, None) == (8, None)
    model = _model()
    rank, max_rank = adalora.adapter_ranks(2, None)
    config = ElaLoRAConfig(rank=rank, max_rank=max_rank, warmup_steps=1, adjust_interval=1, stabilize_steps=1)
    patch_model(model, ["0"], config, method=adalora.form)
    allocator = adalora.build_allocator(model, config, total_steps=10, rank=2)
    assert isinstance(allocator, AdaLoRAAllocator) and allocator.target_rank == 2
    assert get_method("lora").build_allocator(model, config, 10, rank=2) is None


def test_unknown_methods_are_refused_with_the_known_names():
    with pytest.raises(ConfigError, match="'method': 'dora'; allowed: elalora, lora, adalora, full, linear"):
        get_method("dora")
    with pytest.raises(TargetError, match="unknown adapter method 'adalora'; expected 'elalora' or 'lora'"):
        patch_model(_model(), ["0"], method="adalora")


@pytest.mark.parametrize("method, layer", [("elalora", SVDLinear), ("lora", LoRALinear)])
def test_an_adapter_file_records_the_layer_form_and_rebuilds_it(method, layer, tmp_path):
    model = _model()
    patch_model(model, ["0"], ElaLoRAConfig(rank=2), method=method)
    path = save_adapters(model, tmp_path / "a.safetensors", ElaLoRAConfig(rank=2))
    assert read_adapter_metadata(path)["method"] == method
    fresh = load_adapters(_model(), path)
    assert type(fresh[0]) is layer
    other = "lora" if method == "elalora" else "elalora"
    mismatched = _model()
    patch_model(mismatched, ["0"], ElaLoRAConfig(rank=2), method=other)
    titles = {"elalora": "ElaLoRA", "lora": "LoRA"}
    with pytest.raises(AdapterFileError, match=f"holds {titles[other]} adapters but the file holds {titles[method]}"):
        load_adapters(mismatched, path)


def test_a_file_naming_an_unknown_method_is_refused(tmp_path):
    model = _model()
    patch_model(model, ["0"], ElaLoRAConfig(rank=2))
    path = save_adapters(model, tmp_path / "a.safetensors", ElaLoRAConfig(rank=2))
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    save_file(tensors, str(tmp_path / "dora.safetensors"), metadata={**meta, "layer_form": "dora"})
    assert json.loads(meta["rank_pattern"]) == {"0": 2}
    with pytest.raises(AdapterFileError, match="records adapter form 'dora'; known: elalora, lora"):
        load_adapters(_model(), tmp_path / "dora.safetensors")
