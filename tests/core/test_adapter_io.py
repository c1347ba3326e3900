import pytest
import torch
from safetensors import safe_open

from elalora_vit import (
    BackboneMismatchError,
    AdapterFileError,
    ElaLoRAConfig,
    find_adapters,
    load_adapters,
    merge_adapters,
    patch_model,
    read_adapter_metadata,
    save_adapters,
    unmerge_adapters,
)
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit
from tests.core.helpers import run, setup


@pytest.fixture(scope="module")
def trained_model():
    model, opt, alloc, cfg = setup()
    run(model, opt, alloc, cfg, 0, 25)
    model.eval()
    return model, alloc, cfg


def test_saved_file_holds_only_active_ranks_and_the_pattern(tmp_path, trained_model):
    model, alloc, cfg = trained_model
    path = save_adapters(model, tmp_path / "adapter.safetensors", cfg, modules_to_save=["head"])
    meta = read_adapter_metadata(path)
    assert meta["rank_pattern"] == alloc.rank_pattern()
    with safe_open(str(path), framework="pt") as f:
        for name, r in alloc.rank_pattern().items():
            assert f.get_tensor(f"{name}.lora_A").shape[0] == r
            assert f.get_tensor(f"{name}.lora_E").shape == (r,)
            assert f.get_tensor(f"{name}.lora_B").shape[1] == r
        assert "modules_to_save.head.weight" in f.keys()


def test_load_into_a_fresh_model_reproduces_outputs(tmp_path, trained_model):
    model, alloc, cfg = trained_model
    path = save_adapters(model, tmp_path / "a.safetensors", cfg, modules_to_save=["head"])
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    fresh = make_tiny_vit(seed=0).eval()  # same base weights, head differs until loaded
    load_adapters(fresh, path)
    assert {a.name: a.rank for a in find_adapters(fresh)} == alloc.rank_pattern()
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), expected, rtol=1e-5, atol=1e-5)


def test_merge_reproduces_outputs_and_unmerge_restores(trained_model):
    model, _, _ = trained_model
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        merge_adapters(model)
        merged = model(x)
        unmerge_adapters(model)
        again = model(x)
    torch.testing.assert_close(merged, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(again, expected, rtol=1e-5, atol=1e-5)


def test_file_for_another_model_is_refused_and_changes_nothing(tmp_path, trained_model):
    model, _, cfg = trained_model
    path = save_adapters(model, tmp_path / "a.safetensors", cfg)
    import timm

    other = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                              embed_dim=96, num_heads=2, num_classes=5)
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(AdapterFileError, match=r"does not fit this model: layer 'blocks.0.attn.qkv' is 96->288"):
        load_adapters(other, path)
    assert not find_adapters(other)
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())


def test_truncated_and_foreign_files_are_clear_errors(tmp_path, trained_model):
    model, _, cfg = trained_model
    path = save_adapters(model, tmp_path / "a.safetensors", cfg)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[:100])
    with pytest.raises(AdapterFileError, match="truncated.safetensors is not a readable safetensors file"):
        load_adapters(make_tiny_vit(), truncated)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(AdapterFileError, match="not an elalora-vit adapter file"):
        load_adapters(make_tiny_vit(), foreign)
    with pytest.raises(AdapterFileError, match="not found"):
        load_adapters(make_tiny_vit(), tmp_path / "missing.safetensors")


def test_lora_adapters_round_trip(tmp_path):
    model = make_tiny_vit()
    cfg = ElaLoRAConfig(rank=2)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT, method="lora")
    with torch.no_grad():
        for a in find_adapters(model):
            a.layer.lora_B.normal_()
    path = save_adapters(model, tmp_path / "lora.safetensors", cfg)
    fresh = make_tiny_vit()
    load_adapters(fresh, path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x))


def test_adapters_on_another_backbone_of_the_same_shapes_are_refused(tmp_path):
    # Its own model: merging and unmerging (another test does) moves base weights by rounding.
    model, cfg = make_tiny_vit(seed=0), ElaLoRAConfig(rank=2)
    patch_model(model, VIT_TARGETS, cfg, split=QKV_SPLIT, exclude=["head"])
    path = save_adapters(model, tmp_path / "a.safetensors", cfg, modules_to_save=["head"], method="adalora")
    meta = read_adapter_metadata(path)
    assert meta["method"] == "adalora" and meta["layer_form"] == "elalora"
    other = make_tiny_vit(seed=1)  # same shapes, other random weights
    with pytest.raises(BackboneMismatchError, match=f"fingerprint {meta['backbone_fingerprint']}, but .* fingerprint sha256:"):
        load_adapters(other, path)
    assert not find_adapters(other)
    load_adapters(make_tiny_vit(seed=0), path)  # the backbone it was trained on: fine
    load_adapters(other, path, check_backbone=False)  # the user's call
