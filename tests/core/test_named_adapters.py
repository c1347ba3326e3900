"""Several named adapters on one model (PEFT's load_adapter / set_adapter habit)."""

import pytest
import torch

from elalora_vit import (ElaLoRAConfig, active_adapter, adapter_names, delete_adapter, disable_adapter, load_adapter,
                         merge_adapters, patch_model, save_pretrained, set_adapter, unmerge_adapters)
from elalora_vit.core import AdapterFileError, adapted_layers
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit


def _trained(seed: int, targets=VIT_TARGETS):
    """A patched tiny ViT whose adapters and head differ by seed (as after training)."""
    model = make_tiny_vit(seed=0)
    patch_model(model, targets, ElaLoRAConfig(rank=2, seed=seed), split=QKV_SPLIT)
    model.head.requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in adapted_layers(model):
            layer.lora_B.add_(0.1 * torch.randn(layer.lora_B.shape, generator=g))
            layer.rank_mask[:, 1] = seed % 2 == 0  # the adapters' rank patterns differ too
        model.head.weight.add_(torch.randn(model.head.weight.shape, generator=g))
    return model.eval()


def test_named_adapters_switch_exactly_and_keep_each_others_weights(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    other = _trained(seed=1)
    with torch.no_grad():
        expected_b = other(x)
    save_pretrained(other, tmp_path / "b")
    model = _trained(seed=2)
    with torch.no_grad():
        expected_a = model(x)
    assert adapter_names(model) == ["default"] and active_adapter(model) == "default"
    load_adapter(model, tmp_path / "b", "b")
    assert adapter_names(model) == ["default", "b"] and active_adapter(model) == "default"
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected_a, rtol=0, atol=0)  # loading did not disturb the active one
        set_adapter(model, "b")
        assert active_adapter(model) == "b"
        torch.testing.assert_close(model(x), expected_b, rtol=0, atol=0)  # head and rank masks came along
        set_adapter(model, "default")
        torch.testing.assert_close(model(x), expected_a, rtol=0, atol=0)
        set_adapter(model, "b")
        with disable_adapter(model):  # the usual calls act on the active adapter
            base = model(x)
        merge_adapters(model)
        with pytest.raises(RuntimeError, match="merged"):
            set_adapter(model, "default")
        unmerge_adapters(model)
        torch.testing.assert_close(model(x), expected_b, rtol=1e-5, atol=1e-4)  # merge, unmerge: rounding
    assert not torch.equal(base, expected_b)
    with pytest.raises(ValueError, match="active adapter"):
        delete_adapter(model, "b")
    delete_adapter(model, "default")
    assert adapter_names(model) == ["b"]
    with pytest.raises(KeyError, match="no adapter named 'default'"):
        set_adapter(model, "default")


def test_a_folder_for_other_adapters_is_refused_and_the_model_is_untouched(tmp_path):
    save_pretrained(_trained(seed=1, targets=VIT_TARGETS[:2]), tmp_path / "wide")  # attention layers only
    model = _trained(seed=2)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
    with pytest.raises(AdapterFileError):
        load_adapter(model, tmp_path / "wide", "wide")
    assert adapter_names(model) == ["default"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), before, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exists already"):
        load_adapter(model, tmp_path / "wide", "default")
