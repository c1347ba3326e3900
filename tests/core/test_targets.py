import pytest
import torch
from torch import nn

from elalora_vit import (
    ElaLoRAConfig,
    SVDLinear,
    TargetError,
    find_adapters,
    match_targets,
    patch_model,
    unpatch_model,
)
from tests.conftest import QKV_SPLIT, VIT_TARGETS


def test_globs_match_full_names_never_suffixes(tiny_vit):
    names = match_targets(tiny_vit, ["*.attn.proj"])
    assert names == ["blocks.0.attn.proj", "blocks.1.attn.proj"]
    assert "patch_embed.proj" not in names


def test_bare_suffix_is_an_error_with_a_hint(tiny_vit):
    with pytest.raises(TargetError, match=r"'attn.proj' matched no module.*did you mean '\*.attn.proj'"):
        match_targets(tiny_vit, ["attn.proj"])


def test_exact_regex_type_predicate_and_exclude(tiny_vit):
    assert match_targets(tiny_vit, ["blocks.1.mlp.fc2"]) == ["blocks.1.mlp.fc2"]
    assert match_targets(tiny_vit, [r"re:blocks\.0\.mlp\.fc\d"]) == ["blocks.0.mlp.fc1", "blocks.0.mlp.fc2"]
    linears = match_targets(tiny_vit, [nn.Linear], exclude=["head", "*.qkv"])
    assert "head" not in linears and not any(n.endswith("qkv") for n in linears)
    assert len(linears) == 2 * 3
    picked = match_targets(tiny_vit, [lambda name, m: isinstance(m, nn.Linear) and m.out_features == 4 * 192])
    assert picked == ["blocks.0.mlp.fc1", "blocks.1.mlp.fc1"]


def test_non_linear_match_names_the_pattern(tiny_vit):
    with pytest.raises(TargetError, match=r"'blocks\.\*\.attn' matches 'blocks.0.attn', a Attention"):
        match_targets(tiny_vit, ["blocks.*.attn"])
    assert match_targets(tiny_vit, ["patch_embed.proj"]) == ["patch_embed.proj"]  # an ungrouped Conv2d
    depthwise = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(TargetError, match=r"'0' matches '0', a Conv2d; only .* ungrouped nn.Conv2d"):
        match_targets(depthwise, ["0"])


def test_everything_excluded_and_empty_targets_are_errors(tiny_vit):
    with pytest.raises(TargetError, match="excluded"):
        match_targets(tiny_vit, ["head"], exclude=["head"])
    with pytest.raises(TargetError, match="no targets"):
        match_targets(tiny_vit, [])


def test_split_key_must_apply(tiny_vit):
    with pytest.raises(TargetError, match="split key 'attn.kv'"):
        patch_model(tiny_vit, VIT_TARGETS, split={"attn.kv": ["k", "v"]})


def test_patching_twice_is_refused(tiny_vit):
    patch_model(tiny_vit, ["blocks.0.attn.qkv"])
    with pytest.raises(TargetError, match="already adapted"):
        patch_model(tiny_vit, ["blocks.0.attn.qkv"])


def test_vit_adapter_names_follow_module_and_part(tiny_vit):
    names = [a.name for a in patch_model(tiny_vit, VIT_TARGETS, ElaLoRAConfig(rank=2), split=QKV_SPLIT)]
    assert names[:6] == [
        "blocks.0.attn.qkv.q",
        "blocks.0.attn.qkv.k",
        "blocks.0.attn.qkv.v",
        "blocks.0.attn.proj",
        "blocks.0.mlp.fc1",
        "blocks.0.mlp.fc2",
    ]
    assert len(names) == 12


def test_unpatch_restores_the_original_modules(tiny_vit):
    originals = {n: m for n, m in tiny_vit.named_modules() if isinstance(m, nn.Linear)}
    patch_model(tiny_vit, VIT_TARGETS, split=QKV_SPLIT)
    unpatch_model(tiny_vit)
    restored = {n: m for n, m in tiny_vit.named_modules() if isinstance(m, nn.Linear)}
    assert restored.keys() == originals.keys()
    assert all(restored[n] is originals[n] for n in originals)
    assert not find_adapters(tiny_vit)


def test_unpatch_with_merge_keeps_the_function(tiny_vit):
    patch_model(tiny_vit, VIT_TARGETS, ElaLoRAConfig(rank=2), split=QKV_SPLIT)
    for a in find_adapters(tiny_vit):
        with torch.no_grad():
            a.layer.lora_theta.normal_()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        adapted = tiny_vit(x)
        unpatch_model(tiny_vit, merge=True)
        merged = tiny_vit(x)
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-4)


def test_works_on_a_huggingface_bert():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        before = model(ids).last_hidden_state
    adapters = patch_model(
        model,
        ["encoder.layer.*.attention.self.query", "encoder.layer.*.attention.self.value", "re:.*intermediate\\.dense"],
        ElaLoRAConfig(rank=2),
    )
    assert [a.name for a in adapters][:3] == [
        "encoder.layer.0.attention.self.query",
        "encoder.layer.0.attention.self.value",
        "encoder.layer.0.intermediate.dense",
    ]
    assert all(isinstance(a.layer, SVDLinear) for a in adapters)
    with torch.no_grad():
        after = model(ids).last_hidden_state
    assert torch.equal(before, after)
    unpatch_model(model)
    assert type(model.encoder.layer[0].attention.self.query) is nn.Linear
