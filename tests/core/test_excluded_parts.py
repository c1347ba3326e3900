"""Part-level exclusion: q/v-only adapters on timm's fused qkv.

An excluded part (k) keeps its rows of the fused output, which stay the base
model's bit for bit; it is no adapter, so it starts at rank 0 and no ElaLoRA
round, AdaLoRA pruning or LoRA training gives it one, and it counts in no
rank, budget or parameter count.
"""

import copy

import pytest
import torch

from elalora_vit import (
    AdaLoRAAllocator,
    AdapterFileError,
    ElaLoRAConfig,
    RankAllocator,
    SVDLinear,
    TargetError,
    find_adapters,
    load_adapters,
    merge_adapters,
    orthogonal_regularization,
    patch_model,
    read_adapter_metadata,
    save_adapters,
    unmerge_adapters,
    unpatch_model,
)
from tests.conftest import QKV_SPLIT, make_tiny_vit
from tests.core.helpers import SMALL_SCHEDULE, TOTAL, batch, run

QKV = ["blocks.*.attn.qkv"]
NO_K = ["blocks.*.attn.qkv.k"]
QV_NAMES = ["blocks.0.attn.qkv.q", "blocks.0.attn.qkv.v", "blocks.1.attn.qkv.q", "blocks.1.attn.qkv.v"]
D = 192  # vit_tiny's width: q, k, v are rows [0, D), [D, 2D), [2D, 3D) of qkv


def qv_only(method: str = "elalora", seed: int = 0, **config):
    model = make_tiny_vit(seed=seed)
    cfg = ElaLoRAConfig(**{**SMALL_SCHEDULE, **config})
    patch_model(model, QKV, cfg, split=QKV_SPLIT, exclude=["head", *NO_K], method=method)
    return model, cfg


def qkv_layers(model):
    return [model.blocks[i].attn.qkv for i in range(len(model.blocks))]


def assert_k_is_the_base_models(model):
    """Every fused qkv's k rows equal the base Linear's, exactly, and k has no rank and zero factors."""
    x = torch.randn(4, 17, D)
    for layer in qkv_layers(model):
        with torch.no_grad():
            adapted, base = layer(x), layer.base_layer(x)
        assert torch.equal(adapted[..., D : 2 * D], base[..., D : 2 * D])
        assert layer.ranks()[1] == 0 and layer.active_slots(1).numel() == 0
        assert not layer.lora_A[1].any() and not layer.lora_B[1].any()
        if isinstance(layer, SVDLinear):
            assert not layer.rank_mask[1].any()


def train_steps(model, cfg, alloc, steps: int, weight_decay: float = 0.0):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=weight_decay)
    if alloc is None:
        for step in range(steps):
            x, y = batch(step)
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad()
        return []
    return run(model, opt, alloc, cfg, 0, steps)


def test_an_excluded_part_is_a_zero_slot_and_no_adapter():
    model, cfg = qv_only()
    assert [a.name for a in find_adapters(model)] == QV_NAMES
    layer = model.blocks[0].attn.qkv
    assert layer.part_names == ("q", "k", "v") and layer.excluded_parts == ("k",)
    assert layer.ranks() == [cfg.rank, 0, cfg.rank] and "excluded=k" in repr(layer)
    assert layer.lora_A.shape[0] == 3  # k keeps its slot of the stack
    assert_k_is_the_base_models(model)


def test_elalora_rounds_with_expansion_never_give_k_a_rank():
    model, cfg = qv_only()
    alloc = RankAllocator(model, cfg, total_steps=TOTAL)
    assert alloc.adapter_names == QV_NAMES and alloc.scores().shape == (4, cfg.max_rank)  # k is no candidate
    assert alloc.initial_total_rank == 4 * cfg.rank  # the budget of q and v only
    records = train_steps(model, cfg, alloc, TOTAL)
    assert len(records) >= 3 and sum(len(r.expanded) for r in records) > 0  # ranks did move and grow
    assert all(not any(".k" in name for name in r.expanded + r.pruned + list(r.rank_pattern)) for r in records)
    assert alloc.total_rank() == 4 * cfg.rank and sum(alloc.rank_pattern().values()) == 4 * cfg.rank
    assert_k_is_the_base_models(model)
    assert any(layer.lora_A[0].ne(0).any() for layer in qkv_layers(model))  # q did train


def test_adalora_prunes_to_a_budget_of_the_included_parts():
    model, cfg = qv_only(rank=6, max_rank=6)
    alloc = AdaLoRAAllocator(model, cfg, total_steps=TOTAL, target_rank=2)
    assert alloc.initial_total_rank == 4 * 6 and alloc.target_total_rank == 4 * 2
    train_steps(model, cfg, alloc, TOTAL)
    assert alloc.total_rank() == 4 * 2 == sum(sum(layer.ranks()) for layer in qkv_layers(model))
    assert_k_is_the_base_models(model)


def test_fixed_rank_lora_never_trains_k():
    model, _ = qv_only("lora")
    train_steps(model, None, None, 6, weight_decay=0.1)
    assert [a.name for a in find_adapters(model)] == QV_NAMES
    assert all(layer.lora_B[0].ne(0).any() for layer in qkv_layers(model))  # q did train
    assert_k_is_the_base_models(model)


def test_lora_k_adds_nothing_even_with_factors_loaded_into_it():
    full = make_tiny_vit()
    patch_model(full, QKV, ElaLoRAConfig(**SMALL_SCHEDULE), split=QKV_SPLIT, method="lora")
    with torch.no_grad():
        for layer in qkv_layers(full):
            layer.lora_B.normal_()  # every part, k included, now adds something
    model, _ = qv_only("lora")
    model.load_state_dict(full.state_dict())  # LoRA has no mask: k's factors load, its zero scale stays
    assert all(layer.lora_A[1].ne(0).any() for layer in qkv_layers(model))
    x = torch.randn(4, 17, D)
    for layer in qkv_layers(model):
        with torch.no_grad():
            assert torch.equal(layer(x)[..., D : 2 * D], layer.base_layer(x)[..., D : 2 * D])
            assert not torch.equal(layer(x)[..., :D], layer.base_layer(x)[..., :D])


def test_the_regulariser_averages_over_the_included_parts():
    model, _ = qv_only()
    with torch.no_grad():
        for layer in qkv_layers(model):
            layer.lora_A.add_(torch.randn_like(layer.lora_A) * 0.3)  # k's rows too: the mask must ignore them
    eye = torch.eye(SMALL_SCHEDULE["rank"])
    norms = [torch.linalg.matrix_norm(a.Q @ a.Q.T - eye) + torch.linalg.matrix_norm(a.P.T @ a.P - eye)
             for a in find_adapters(model)]
    expected = torch.stack(norms).sum() / (2 * len(norms))
    assert orthogonal_regularization(model).item() == pytest.approx(expected.item(), rel=1e-5)


def test_save_and_load_reproduce_the_exclusion(tmp_path):
    model, cfg = qv_only()
    alloc = RankAllocator(model, cfg, total_steps=TOTAL)
    train_steps(model, cfg, alloc, 12)
    model.eval()
    path = save_adapters(model, tmp_path / "qv.safetensors", cfg, modules_to_save=["head"])
    meta = read_adapter_metadata(path)
    assert list(meta["rank_pattern"]) == QV_NAMES
    assert meta["layers"]["blocks.0.attn.qkv"]["excluded_parts"] == ["k"]
    fresh = load_adapters(make_tiny_vit(), path).eval()
    assert [a.name for a in find_adapters(fresh)] == QV_NAMES
    assert fresh.blocks[1].attn.qkv.excluded_parts == ("k",)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))
    assert_k_is_the_base_models(fresh)
    everything = make_tiny_vit()
    patch_model(everything, QKV, cfg, split=QKV_SPLIT)  # adapts k: the file does not fit
    with pytest.raises(AdapterFileError, match=r"excludes parts \[\] here but \['k'\] in the file"):
        load_adapters(everything, path)


def test_a_state_dict_that_activates_an_excluded_part_is_refused():
    full = make_tiny_vit()
    patch_model(full, QKV, ElaLoRAConfig(**SMALL_SCHEDULE), split=QKV_SPLIT)
    model, _ = qv_only()
    with pytest.raises(RuntimeError, match=r"activates excluded parts \['k'\]"):
        model.load_state_dict(full.state_dict())


def test_merge_and_unmerge_leave_k_rows_of_the_weight_alone():
    model, cfg = qv_only()
    train_steps(model, cfg, RankAllocator(model, cfg, total_steps=TOTAL), 8)
    model.eval()
    base_weights = [layer.base_layer.weight.detach().clone() for layer in qkv_layers(model)]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(x)
        merge_adapters(model)
        merged = model(x)
    for layer, weight in zip(qkv_layers(model), base_weights):
        assert torch.equal(layer.base_layer.weight[D : 2 * D], weight[D : 2 * D])
        assert not torch.equal(layer.base_layer.weight[:D], weight[:D])  # q was merged in
    assert (merged - before).abs().max() < 1e-5
    unmerge_adapters(model)
    plain = unpatch_model(copy.deepcopy(model), merge=True)
    with torch.no_grad():
        assert (plain(x) - before).abs().max() < 1e-5


def test_a_normal_part_pruned_to_rank_0_stays_an_adapter(tmp_path):
    model = make_tiny_vit()
    cfg = ElaLoRAConfig(**SMALL_SCHEDULE)
    patch_model(model, QKV, cfg, split=QKV_SPLIT)
    layer = model.blocks[0].attn.qkv
    with torch.no_grad():
        layer.rank_mask[2] = False  # v of block 0 pruned to 0, as AdaLoRA may do
    assert [a.rank for a in find_adapters(model)][:3] == [cfg.rank, cfg.rank, 0]
    assert len(RankAllocator(model, cfg, total_steps=TOTAL).adapter_names) == 6
    path = save_adapters(model, tmp_path / "a.safetensors", cfg)
    meta = read_adapter_metadata(path)
    assert meta["rank_pattern"]["blocks.0.attn.qkv.v"] == 0 and "excluded_parts" not in meta["layers"]["blocks.0.attn.qkv"]
    fresh = load_adapters(make_tiny_vit(), path)
    assert fresh.blocks[0].attn.qkv.excluded_parts == () and fresh.blocks[0].attn.qkv.ranks() == [cfg.rank, cfg.rank, 0]


@pytest.mark.parametrize(
    "exclude, split, message",
    [
        (["blocks.*.attn.qkv.x"], QKV_SPLIT, r"names part 'x', but 'blocks.0.attn.qkv' is split into \['q', 'k', 'v'\]"),
        (["blocks.*.attn.qkv.k"], None, r"'blocks.0.attn.qkv', which is not split into parts: split it too"),
        (["blocks.*.attn.qkv.q", "blocks.*.attn.qkv.k", "blocks.*.attn.qkv.v"], QKV_SPLIT,
         r"leaves out every part \['q', 'k', 'v'\] of 'blocks.0.attn.qkv'; .* exclude 'blocks.0.attn.qkv' itself"),
        (["blocks.*.attn.qvk.k"], QKV_SPLIT, r"'blocks.\*.attn.qvk.k' matches no module of the model and no part"),
    ],
)
def test_exclusions_that_do_not_fit_say_what_to_do(exclude, split, message):
    with pytest.raises(TargetError, match=message):
        patch_model(make_tiny_vit(), QKV, split=split, exclude=exclude)


def test_a_layer_built_by_hand_checks_its_exclusion():
    with pytest.raises(ValueError, match=r"cannot exclude parts \['x'\]: the layer's parts are \['q', 'k', 'v'\]"):
        SVDLinear(torch.nn.Linear(4, 6), ["q", "k", "v"], rank=1, capacity=2, scaling=1.0, excluded=["x"])
    with pytest.raises(ValueError, match="every part"):
        SVDLinear(torch.nn.Linear(4, 6), ["a", "b"], rank=1, capacity=2, scaling=1.0, excluded=["a", "b"])
