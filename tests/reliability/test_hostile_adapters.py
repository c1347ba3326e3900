"""Hostile adapter files: a wrong-shaped tensor, non-finite values or broken metadata JSON
each give an AdapterFileError naming the file and the tensor or key, and leave the model as
it was."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from elalora_vit.core import AdapterFileError, ElaLoRAConfig, load_adapters, patch_model, save_adapters
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit

CONFIG = ElaLoRAConfig(rank=2)


@pytest.fixture
def adapter_file(tmp_path):
    model = make_tiny_vit()
    patch_model(model, VIT_TARGETS, CONFIG, split=QKV_SPLIT)
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.requires_grad:
                p.normal_()
    return save_adapters(model, tmp_path / "adapter.safetensors", CONFIG, ["head"])


def rewrite(path, change_tensors=None, change_meta=None):
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    (change_tensors or (lambda t: None))(tensors)
    (change_meta or (lambda m: None))(meta)
    save_file(tensors, str(path), metadata=meta)


def fresh_model():
    model = make_tiny_vit()
    return model, {k: v.clone() for k, v in model.state_dict().items()}


def assert_refused(path, match):
    model, before = fresh_model()
    with pytest.raises(AdapterFileError, match=match):
        load_adapters(model, path)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


def test_wrong_shaped_tensor_names_the_tensor_and_both_shapes(adapter_file):
    def shrink(t):
        t["blocks.0.attn.proj.lora_A"] = torch.zeros(3, 3)
    rewrite(adapter_file, shrink)
    assert_refused(adapter_file, r"tensor 'blocks\.0\.attn\.proj\.lora_A' has shape \(3, 3\) in the file; "
                                 r"this model needs \(2, 192\)")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_tensors_are_refused_by_name(adapter_file, value):
    def poison(t):
        t["blocks.1.mlp.fc2.lora_B"].fill_(value)
    rewrite(adapter_file, poison)
    assert_refused(adapter_file, r"blocks\.1\.mlp\.fc2\.lora_B hold NaN or infinite values")


def test_broken_metadata_json_names_the_file_and_the_key(adapter_file):
    def break_json(m):
        m["rank_pattern"] = m["rank_pattern"][:-3]
    rewrite(adapter_file, change_meta=break_json)
    assert_refused(adapter_file, rf"{adapter_file}: metadata entry 'rank_pattern' is not valid JSON")


def test_rank_pattern_that_is_not_an_integer_is_refused(adapter_file):
    def bad_rank(m):
        pattern = json.loads(m["rank_pattern"])
        pattern["blocks.0.attn.proj"] = "two"
        m["rank_pattern"] = json.dumps(pattern)
    rewrite(adapter_file, change_meta=bad_rank)
    assert_refused(adapter_file, r"adapter 'blocks\.0\.attn\.proj' is missing or its rank 'two' is not an integer")


def test_the_untouched_file_loads(adapter_file):
    model, _ = fresh_model()
    load_adapters(model, adapter_file)
