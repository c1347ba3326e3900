"""Tests of the timm ViT backbone module, on tiny ViTs and without network access."""

from __future__ import annotations

import fnmatch
import logging
import os
import time

import numpy as np
import pytest
import torch
from torch import nn

from elalora_vit.vit import (
    BackboneError,
    block_index_and_kind,
    create_backbone,
    default_targets,
    head_module_names,
    resolve_data_config,
)

TINY = "vit_tiny_patch16_224"
TINY_KW = dict(img_size=32, patch_size=8, depth=2)  # embed_dim 192, 3 heads
KINDS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")


def tiny(num_classes: int = 10, seed: int = 0, **overrides) -> nn.Module:
    torch.manual_seed(seed)
    return create_backbone(TINY, num_classes, pretrained=False, **{**TINY_KW, **overrides})


def assert_body_equal(loaded: nn.Module, source: nn.Module) -> None:
    """Every weight outside the head equal; guards against a silent no-op load."""
    own, ref = loaded.state_dict(), source.state_dict()
    body = [k for k in ref if not k.startswith("head.")]
    assert len(body) > 10
    for key in body:
        torch.testing.assert_close(own[key], ref[key], rtol=0, atol=1e-6, msg=key)


# --------------------------------------------------------------------------- creation and ViT facts


def test_head_sized_for_num_classes():
    model = tiny(num_classes=7)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 7
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
    assert len(model.blocks) == 2 and model.patch_embed.patch_size == (8, 8)


def test_unknown_model_or_argument_is_a_backbone_error():
    with pytest.raises(BackboneError, match="no_such_vit"):
        create_backbone("no_such_vit", 3, pretrained=False)
    with pytest.raises(BackboneError, match="not_an_option"):
        create_backbone(TINY, 3, pretrained=False, not_an_option=1, **TINY_KW)
    with pytest.raises(BackboneError, match="num_classes"):
        create_backbone(TINY, -1, pretrained=False, **TINY_KW)


def test_default_targets_name_every_block_projection():
    model = tiny(depth=3)
    targets, split = default_targets(model)
    assert targets == ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"]
    assert split == {"attn.qkv": ["q", "k", "v"]}
    names = [n for n, _ in model.named_modules()]
    for target, kind in zip(targets, KINDS):
        assert [n for n in names if fnmatch.fnmatchcase(n, target)] == [f"blocks.{i}.{kind}" for i in range(3)]
        for i in range(3):
            assert isinstance(model.get_submodule(f"blocks.{i}.{kind}"), nn.Linear)
    qkv = model.get_submodule("blocks.0.attn.qkv")
    assert qkv.out_features == 3 * qkv.in_features == 3 * 192  # splits into equal q, k, v


def test_default_targets_feed_the_core_matcher_and_name_parser():
    from elalora_vit.core.targets import match_targets, resolve_split

    model = tiny()
    targets, split = default_targets(model)
    names = match_targets(model, targets)
    assert sorted(names) == sorted(f"blocks.{i}.{k}" for i in range(2) for k in KINDS)
    parts = resolve_split(names, split)
    assert parts == {f"blocks.{i}.attn.qkv": ("q", "k", "v") for i in range(2)}
    adapters = [f"{n}.{p}" for n in names for p in parts.get(n, ())] + [n for n in names if n not in parts]
    kinds = sorted(block_index_and_kind(a) for a in adapters)
    assert kinds == sorted((i, k) for i in range(2) for k in ("q", "k", "v", "proj", "fc1", "fc2"))


def test_block_index_and_kind_reads_every_name_the_core_gives():
    from elalora_vit.core import ElaLoRAConfig, find_adapters, patch_model

    model = tiny()
    targets, split = default_targets(model)
    patch_model(model, targets, ElaLoRAConfig(rank=2), split=split)
    refs = find_adapters(model)
    assert len(refs) == 2 * 6
    assert sorted(block_index_and_kind(ref.name) for ref in refs) == sorted(
        (i, k) for i in range(2) for k in ("q", "k", "v", "proj", "fc1", "fc2"))


@pytest.mark.parametrize("make", [
    lambda: create_backbone("resnet18", 4, pretrained=False),
    lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)),
])
def test_default_targets_refuse_a_non_vit(make):
    with pytest.raises(BackboneError, match="targets explicitly"):
        default_targets(make())


def test_default_targets_refuse_a_vit_with_a_missing_layer():
    model = tiny()
    model.blocks[1].mlp.fc2 = nn.Identity()
    with pytest.raises(BackboneError, match=r"blocks\.1\.mlp\.fc2"):
        default_targets(model)


def test_head_module_names():
    assert head_module_names(tiny()) == ["head"]
    torch.manual_seed(0)
    distilled = create_backbone("deit_tiny_distilled_patch16_224", 3, pretrained=False, **TINY_KW)
    assert head_module_names(distilled) == ["head", "head_dist"]

    class Plain(nn.Module):  # no timm config: falls back to "head"
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 4), nn.Linear(4, 2)

    assert head_module_names(Plain()) == ["head"]
    with pytest.raises(BackboneError, match="no classifier head"):
        head_module_names(nn.Sequential(nn.Linear(4, 2)))


def test_resolve_data_config():
    # The original Google in21k weights were trained on [-1, 1] inputs.
    orig = create_backbone("vit_base_patch16_224.orig_in21k", 3, pretrained=False, **TINY_KW)
    spec = resolve_data_config(orig)
    assert (spec.mean, spec.std, spec.interpolation) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert spec.image_size == 32  # the size the model was built for, not its pretrained 224
    deit = create_backbone("deit_tiny_patch16_224", 3, pretrained=False, **TINY_KW)
    spec = resolve_data_config(deit)
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406)) and spec.std == pytest.approx((0.229, 0.224, 0.225))
    assert spec.interpolation == "bicubic"
    plain = resolve_data_config(nn.Sequential(nn.Linear(2, 2)))
    assert (plain.mean, plain.std, plain.interpolation) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    assert plain.image_size == 224


def test_resolve_data_config_lets_explicit_values_win():
    from elalora_vit.config import DataConfig

    orig = create_backbone("vit_base_patch16_224.orig_in21k", 3, pretrained=False, **TINY_KW)
    assert resolve_data_config(orig, DataConfig()) == resolve_data_config(orig)  # unset: the model decides
    cfg = DataConfig(image_size=48, mean=[0.1, 0.2, 0.3], std=[1.0, 2.0, 3.0])
    cfg.interpolation = "bilinear"  # not a config key (yet): any object with the attribute works
    spec = resolve_data_config(orig, cfg)
    assert (spec.image_size, spec.interpolation, spec.mean, spec.std) == (48, "bilinear", (0.1, 0.2, 0.3), (1.0, 2.0, 3.0))


@pytest.mark.parametrize("name, expected", [
    ("blocks.3.attn.qkv.v", (3, "v")),
    ("blocks.0.attn.qkv.q", (0, "q")),
    ("blocks.0.attn.proj", (0, "proj")),
    ("blocks.11.mlp.fc1", (11, "fc1")),
    ("blocks.7.mlp.fc2", (7, "fc2")),
    ("blocks.2.attn.qkv", (2, "qkv")),
    ("patch_embed.proj", None),
    ("head", None),
    ("blocks.1.attn.qkv.x", None),
    ("blocks.x.mlp.fc1", None),
    ("stages.1.blocks.2.mlp.fc1", None),
    ("blocks.1.mlp.fc1.extra", None),
])
def test_block_index_and_kind(name, expected):
    assert block_index_and_kind(name) == expected


# --------------------------------------------------------------------------- state-dict checkpoints


def _save(state_dict, path, wrap):
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(wrap(state_dict), path)


@pytest.mark.parametrize("filename, wrap", [
    ("w.safetensors", None),
    ("w.pth", lambda sd: sd),
    ("w.pt", lambda sd: {"epoch": 3, "state_dict": sd}),
    ("w.bin", lambda sd: {"model": {f"module.{k}": v for k, v in sd.items()}}),
])
def test_state_dict_round_trip_reinitialises_the_head(tmp_path, caplog, filename, wrap):
    source = tiny(num_classes=10, seed=0)
    path = tmp_path / filename
    _save(source.state_dict(), path, wrap)
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="elalora_vit.vit"):
        loaded = create_backbone(TINY, 5, checkpoint=path, **TINY_KW)
    assert_body_equal(loaded, source)
    assert loaded.head.weight.shape == (5, 192) and loaded.head.bias.shape == (5,)
    assert "re-initialised" in caplog.text


def test_state_dict_round_trip_keeps_a_fitting_head(tmp_path):
    source = tiny(num_classes=10, seed=0)
    path = tmp_path / "w.safetensors"
    _save(source.state_dict(), path, None)
    loaded = create_backbone(TINY, 10, checkpoint=path, pretrained=False, **TINY_KW)
    assert_body_equal(loaded, source)
    torch.testing.assert_close(loaded.head.weight, source.head.weight)


def test_checkpoint_position_embedding_is_resized_by_timm(tmp_path):
    source = tiny(seed=0)  # 4 x 4 patch grid
    path = tmp_path / "w.safetensors"
    _save(source.state_dict(), path, None)
    loaded = create_backbone(TINY, 10, checkpoint=path, **{**TINY_KW, "img_size": 48})
    assert loaded.pos_embed.shape == (1, 1 + 36, 192)
    torch.testing.assert_close(loaded.blocks[1].mlp.fc1.weight, source.blocks[1].mlp.fc1.weight)


@pytest.mark.parametrize("filename", ["w.safetensors", "w.pth"])
def test_truncated_checkpoint_is_refused(tmp_path, filename):
    path = tmp_path / filename
    _save(tiny().state_dict(), path, lambda sd: sd)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BackboneError, match=filename):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)


def test_garbage_checkpoint_is_refused(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"this is not a checkpoint at all")
    with pytest.raises(BackboneError, match="w.pt"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)


def test_checkpoint_of_another_size_is_refused(tmp_path):
    path = tmp_path / "small.safetensors"
    _save(tiny(embed_dim=96, num_heads=3).state_dict(), path, None)
    with pytest.raises(BackboneError, match=r"small\.safetensors.*shape mismatches.*blocks\.0\.") as info:
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)
    assert "(96,)" in str(info.value) or "96" in str(info.value)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    _save(create_backbone("resnet18", 5, pretrained=False).state_dict(), path, lambda sd: sd)
    with pytest.raises(BackboneError, match=r"resnet\.pth.*missing keys.*cls_token.*unexpected keys.*conv1"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)


def test_checkpoint_with_extra_blocks_is_refused(tmp_path):
    path = tmp_path / "deep.pth"
    _save(tiny(depth=3).state_dict(), path, lambda sd: sd)
    with pytest.raises(BackboneError, match=r"deep\.pth.*unexpected keys.*blocks\.2\."):
        create_backbone(TINY, 10, checkpoint=path, **TINY_KW)


class _Payload:
    """Unpickling this would create a directory: proof that pickled code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.makedirs, (self.marker,)


def test_pickled_object_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "payload-ran"
    path = tmp_path / "evil.pth"
    torch.save({"model": tiny().state_dict(), "extra": _Payload(str(marker))}, path)
    with pytest.raises(BackboneError, match=r"refused to load .*evil\.pth.*weights_only"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)
    assert not marker.exists()


def test_missing_file_and_unknown_extension(tmp_path):
    with pytest.raises(BackboneError, match=r"nowhere\.safetensors.*does not exist"):
        create_backbone(TINY, 5, checkpoint=tmp_path / "nowhere.safetensors", **TINY_KW)
    path = tmp_path / "w.ckpt"
    torch.save(tiny().state_dict(), path)
    with pytest.raises(BackboneError, match=r"\.ckpt.*\.npz, \.safetensors, \.pth, \.pt, \.bin"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)


def test_non_tensor_payload_is_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(BackboneError, match=r"w\.pth.*not a state dict"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)


# --------------------------------------------------------------------------- Google .npz checkpoints


def write_google_npz(model: nn.Module, path, with_head: bool = True) -> None:
    """Write ``model`` in the original Google ViT .npz layout.

    The inverse of the key mapping in timm's ``vision_transformer._load_weights``:
    flax kernels are (in, out), attention kernels (in, heads, head_dim) for q/k/v
    and (heads, head_dim, out) for the output, the patch kernel is HWIO.
    """
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    dim = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    head_dim = dim // heads
    w = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    if with_head:
        w["head/kernel"], w["head/bias"] = sd["head.weight"].T, sd["head.bias"]
    for i in range(len(model.blocks)):
        p, b = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        mha = b + "MultiHeadDotProductAttention_1/"
        w[b + "LayerNorm_0/scale"], w[b + "LayerNorm_0/bias"] = sd[p + "norm1.weight"], sd[p + "norm1.bias"]
        w[b + "LayerNorm_2/scale"], w[b + "LayerNorm_2/bias"] = sd[p + "norm2.weight"], sd[p + "norm2.bias"]
        for j, name in enumerate(("query", "key", "value")):
            rows = slice(j * dim, (j + 1) * dim)
            w[mha + f"{name}/kernel"] = sd[p + "attn.qkv.weight"][rows].T.reshape(dim, heads, head_dim)
            w[mha + f"{name}/bias"] = sd[p + "attn.qkv.bias"][rows].reshape(heads, head_dim)
        w[mha + "out/kernel"] = sd[p + "attn.proj.weight"].reshape(dim, heads, head_dim).transpose(1, 2, 0)
        w[mha + "out/bias"] = sd[p + "attn.proj.bias"]
        for r in range(2):
            w[b + f"MlpBlock_3/Dense_{r}/kernel"] = sd[p + f"mlp.fc{r + 1}.weight"].T
            w[b + f"MlpBlock_3/Dense_{r}/bias"] = sd[p + f"mlp.fc{r + 1}.bias"]
    np.savez(path, **{k: np.ascontiguousarray(v) for k, v in w.items()})


@pytest.mark.parametrize("with_head", [True, False])
def test_npz_round_trip_reinitialises_the_head(tmp_path, caplog, with_head):
    source = tiny(num_classes=10, seed=0)
    path = tmp_path / "ViT-tiny.npz"
    write_google_npz(source, path, with_head=with_head)
    torch.manual_seed(1)
    with caplog.at_level(logging.INFO, logger="elalora_vit.vit"):
        loaded = create_backbone(TINY, 5, checkpoint=path, **TINY_KW)
    assert_body_equal(loaded, source)
    assert loaded.head.weight.shape == (5, 192)
    assert "re-initialised" in caplog.text
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.forward_features(x), source.eval().forward_features(x))


def test_npz_round_trip_keeps_a_fitting_head(tmp_path):
    source = tiny(num_classes=10, seed=0)
    path = tmp_path / "ViT-tiny.npz"
    write_google_npz(source, path)
    loaded = create_backbone(TINY, 10, checkpoint=path, **TINY_KW)
    assert_body_equal(loaded, source)
    torch.testing.assert_close(loaded.head.weight, source.head.weight)


def test_npz_of_another_depth_is_refused(tmp_path):
    path = tmp_path / "deep.npz"
    write_google_npz(tiny(depth=3), path)
    with pytest.raises(BackboneError, match=r"deep\.npz.*3 transformer blocks.*has 2"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)


def test_npz_of_another_width_is_refused(tmp_path):
    path = tmp_path / "narrow.npz"
    write_google_npz(tiny(embed_dim=96, num_heads=3), path)
    with pytest.raises(BackboneError, match=r"narrow\.npz.*Google ViT layout"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)


def test_npz_that_is_not_a_vit_is_refused(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros((3, 3), np.float32), bias=np.zeros(3, np.float32))
    with pytest.raises(BackboneError, match=r"other\.npz"):
        create_backbone(TINY, 5, checkpoint=path, **TINY_KW)
    truncated = tmp_path / "truncated.npz"
    write_google_npz(tiny(), truncated)
    truncated.write_bytes(truncated.read_bytes()[:2000])
    with pytest.raises(BackboneError, match=r"truncated\.npz"):
        create_backbone(TINY, 5, checkpoint=truncated, **TINY_KW)


def test_npz_into_a_non_vit_is_refused(tmp_path):
    path = tmp_path / "vit.npz"
    write_google_npz(tiny(), path)
    with pytest.raises(BackboneError, match=r"vit\.npz.*only into timm Vision"):
        create_backbone("resnet18", 5, checkpoint=path)


# --------------------------------------------------------------------------- timm's pre-trained weights


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, whatever this machine has cached."""
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    return cache


def _assert_weights_advice(message: str) -> None:
    for advice in ("could not get the pre-trained weights", "--checkpoint PATH", ".npz", ".safetensors",
                   ".pth", "HF_HUB_OFFLINE=1", "--no-pretrained"):
        assert advice in message


def test_pretrained_offline_fails_fast_with_advice(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # after huggingface_hub was imported: must still count
    start = time.monotonic()
    with pytest.raises(BackboneError) as info:
        create_backbone(TINY, 5, **TINY_KW)
    assert time.monotonic() - start < 5
    _assert_weights_advice(str(info.value))
    assert "HF_HUB_OFFLINE is set" in str(info.value)
    assert constants.HF_HUB_OFFLINE is False  # the temporary switch is undone


def test_pretrained_with_unreachable_hub_fails_fast(empty_hub_cache, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    start = time.monotonic()
    with pytest.raises(BackboneError, match="cannot reach 127.0.0.1:9") as info:
        create_backbone(TINY, 5, **TINY_KW)
    assert time.monotonic() - start < 8
    _assert_weights_advice(str(info.value))


def test_pretrained_offline_loads_from_a_prepopulated_cache(empty_hub_cache, monkeypatch):
    from safetensors.torch import save_file

    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    torch.manual_seed(0)
    source = create_backbone(name, 1000, pretrained=False, **TINY_KW)
    repo = empty_hub_cache / f"models--timm--{name}"
    revision = "0" * 40
    (repo / "snapshots" / revision).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    save_file(source.state_dict(), str(repo / "snapshots" / revision / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(1)
    start = time.monotonic()
    loaded = create_backbone(name, 5, **TINY_KW)
    assert time.monotonic() - start < 5  # served from the cache, without network retries
    assert_body_equal(loaded, source)
    assert loaded.head.out_features == 5


def test_pretrained_without_known_weights_is_refused(empty_hub_cache):
    with pytest.raises(BackboneError, match="knows no pre-trained weights") as info:
        create_backbone(TINY, 5, pretrained_cfg_overlay={"hf_hub_id": None, "url": ""}, **TINY_KW)
    _assert_weights_advice(str(info.value))


@pytest.mark.parametrize("conv_mlp", [False, True])
def test_the_convnext_preset_adapts_mlps_and_downsampling_trains_a_round_merges_and_round_trips(tmp_path, conv_mlp):
    """timm ConvNeXt: the pointwise MLPs (Linear, or 1 x 1 convolutions with conv_mlp) and the
    2 x 2 downsampling convolutions; the depthwise convolutions stay frozen."""
    import timm

    from elalora_vit import ElaLoRAConfig, find_adapters, patch_model
    from tests.core.layer_kinds import assert_merges_and_round_trips, perturb, train_through_rounds

    def make():
        torch.manual_seed(0)
        return timm.create_model("convnext_atto", pretrained=False, depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                 num_classes=5, conv_mlp=conv_mlp)

    model = make()
    targets, split = default_targets(model)
    assert split == {} and head_module_names(model) == ["head.fc"]
    config = ElaLoRAConfig(rank=2, max_rank=4, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=2, k=1)
    patch_model(model, targets, config)
    model.get_submodule("head.fc").requires_grad_(True)
    names = [a.name for a in find_adapters(model)]
    assert names == [f"stages.{s}.{kind}" for s in range(4) for kind in
                     (["downsample.1"] if s else []) + ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]]
    assert not any("conv_dw" in n for n in names)
    train_through_rounds(model, config, lambda g: (torch.randn(4, 3, 32, 32, generator=g),
                                                   torch.randint(0, 5, (4,), generator=g)))
    perturb(model)
    assert_merges_and_round_trips(model, torch.randn(2, 3, 32, 32), make, tmp_path / "adapter")
