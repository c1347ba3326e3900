"""PEFT in both directions, against the real library: a PEFT LoRA folder imported as ElaLoRA
adapters (same function, then ranks move), and GPT-2's Conv1D layers exported to PEFT."""

import copy

import pytest
import torch
import torch.nn.functional as F

from elalora_vit import ElaLoRAConfig, RankAllocator, find_adapters, orthogonal_regularization
from tests.conftest import make_tiny_vit

peft = pytest.importorskip("peft")
from elalora_vit.integrations.peft import PeftImportError, export_peft, from_peft  # noqa: E402


def _trained_peft_folder(base, folder, **lora):
    """A PEFT LoRA on ``base`` with non-zero updates and a changed head, saved by PEFT itself."""
    config = peft.LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ["qkv", "attn.proj", "fc1"],
                                "modules_to_save": ["head"], **lora})
    model = peft.get_peft_model(copy.deepcopy(base), config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(torch.randn(param.shape, generator=g) * 0.1)
    model.save_pretrained(str(folder))
    return model.eval()


def test_a_peft_conv2d_lora_imports_with_peft_s_function(tmp_path):
    """A LoRA PEFT trained on the patch embedding (a Conv2d) and an MLP layer: imported, the
    model computes what PEFT's computes."""
    base = make_tiny_vit().eval()
    reference = _trained_peft_folder(base, tmp_path / "conv", target_modules=["patch_embed.proj", "fc1"])
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = reference(x)
    model = copy.deepcopy(base)
    adapters = from_peft(model, tmp_path / "conv")
    assert "patch_embed.proj" in {a.name for a in adapters}
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("split", [None, {"attn.qkv": ["q", "k", "v"]}])
def test_an_imported_peft_lora_computes_what_peft_computes_then_moves_ranks(split, tmp_path):
    base = make_tiny_vit().eval()
    reference = _trained_peft_folder(base, tmp_path / "lora")
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, untouched = reference(x), base(x)
    model = copy.deepcopy(base)
    adapters = from_peft(model, tmp_path / "lora", split=split)
    with torch.no_grad():
        got = model.eval()(x)
    assert (expected - untouched).abs().max() > 0.1  # the adapter matters
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert all(a.rank == 4 for a in adapters)
    assert len(adapters) == 2 * (5 if split else 3)  # per block: qkv (or q, k, v), proj, fc1
    trainable = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable == {"head.weight", "head.bias"}
    for adapter in adapters:  # an SVD: orthonormal factors, descending singular values
        eye = torch.eye(adapter.rank)
        torch.testing.assert_close(adapter.Q @ adapter.Q.T, eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(adapter.P.T @ adapter.P, eye, atol=1e-5, rtol=0)
        assert bool((adapter.lam[:-1] >= adapter.lam[1:]).all())

    config = ElaLoRAConfig(rank=4, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=2, k=1)
    allocator = RankAllocator(model, config, total_steps=12)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    y = torch.randint(0, got.shape[1], (4,))
    model.train()
    for _ in range(12):
        loss = F.cross_entropy(model(x), y) + config.orth_reg_weight * orthogonal_regularization(model)
        loss.backward()
        optimizer.step()
        allocator.step(optimizer)
        optimizer.zero_grad()
    ranks = [a.rank for a in find_adapters(model)]
    assert ranks != [4] * len(ranks) and sum(ranks) == 4 * len(ranks)


def test_peft_folders_that_cannot_become_svd_adapters_are_refused_by_name(tmp_path):
    base = make_tiny_vit().eval()
    dilated = copy.deepcopy(base)
    dilated.patch_embed.proj.dilation = (2, 2)  # PEFT's Conv2d LoRA ignores a base layer's dilation
    dilated.patch_embed.proj.stride = (4, 4)
    _trained_peft_folder(dilated, tmp_path / "conv", target_modules=["patch_embed.proj", "fc1"])
    with pytest.raises(PeftImportError, match=r"'patch_embed.proj' is a Conv2d with dilation \(2, 2\)"):
        from_peft(copy.deepcopy(dilated), tmp_path / "conv")
    _trained_peft_folder(base, tmp_path / "dora", use_dora=True)
    with pytest.raises(PeftImportError, match="DoRA"):
        from_peft(copy.deepcopy(base), tmp_path / "dora")
    with pytest.raises(PeftImportError, match="no adapter_config.json"):
        from_peft(copy.deepcopy(base), tmp_path)
    _trained_peft_folder(base, tmp_path / "plain")
    with pytest.raises(PeftImportError, match="rank 4, above the adapters' capacity 2"):
        from_peft(copy.deepcopy(base), tmp_path / "plain", config=ElaLoRAConfig(rank=1))


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=40, n_positions=16,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).eval()


GPT2_TARGETS = ["*.attn.c_attn", "*.attn.c_proj", "*.mlp.c_fc", "*.mlp.c_proj"]


def test_gpt2_conv1d_layers_train_merge_round_trip_and_export_to_peft(tmp_path):
    from elalora_vit import load_adapters, merge_adapters, patch_model, save_adapters
    from elalora_vit.integrations.hf import default_targets

    base = _gpt2()
    model = copy.deepcopy(base)
    assert default_targets(model) == GPT2_TARGETS
    config = ElaLoRAConfig(rank=4, warmup_steps=2, adjust_interval=2, stabilize_steps=2, b=2, k=1)
    adapters = patch_model(model, GPT2_TARGETS, config, split={"attn.c_attn": ["q", "k", "v"]})  # 6 a block
    assert len(adapters) == 2 * 6 and {a.layer.fan_in_fan_out for a in adapters} == {True}
    ids = torch.randint(0, 40, (4, 8), generator=torch.Generator().manual_seed(0))
    allocator = RankAllocator(model, config, total_steps=12)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(12):
        loss = model(ids, labels=ids).loss + config.orth_reg_weight * orthogonal_regularization(model)
        loss.backward()
        optimizer.step()
        allocator.step(optimizer)
        optimizer.zero_grad()
    model.eval()
    assert any(r.pruned for r in allocator.history)
    with torch.no_grad():
        expected = model(ids).logits
        assert (expected - base(ids).logits).abs().max() > 1e-2
        merged = merge_adapters(copy.deepcopy(model))
        torch.testing.assert_close(merged(ids).logits, expected, rtol=0, atol=1e-5)

    save_adapters(model, tmp_path / "gpt2.safetensors", config)
    loaded = load_adapters(copy.deepcopy(base), tmp_path / "gpt2.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, expected, rtol=0, atol=0)

    export_peft(model, tmp_path / "peft")
    with torch.no_grad():
        exported = peft.PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "peft")).eval()(ids).logits
    torch.testing.assert_close(exported, expected, rtol=0, atol=1e-5)
