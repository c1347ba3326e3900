"""The default start of an SVD adapter (``init="lora"``, ``lambda_lr_multiplier=1``): LoRA's
start written in SVD form, for the initial ranks and for every grown one (issue 24)."""

import pytest
import torch

from elalora_vit import ElaLoRAConfig, orthogonal_regularization, patch_model
from elalora_vit.core import adapted_layers
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit
from tests.core.helpers import batch, run, setup


def _patched(method: str, **cfg):
    model = make_tiny_vit(seed=0)
    config = ElaLoRAConfig(rank=4, warmup_steps=1000, **cfg)
    patch_model(model, VIT_TARGETS, config, split=QKV_SPLIT, method=method)
    return model, config


def test_the_defaults_are_loras_start_with_lambda_at_its_own_pace():
    config = ElaLoRAConfig()
    assert (config.init, config.lambda_lr_multiplier) == ("lora", 1.0)


def test_q_is_loras_a_p_is_zero_and_lambda_one_on_the_active_slots():
    svd, _ = _patched("elalora")
    lora, _ = _patched("lora")
    x = torch.randn(2, 3, 32, 32)
    base = make_tiny_vit(seed=0)
    with torch.no_grad():
        torch.testing.assert_close(svd(x), base(x), rtol=0, atol=0)
    pairs = list(zip(adapted_layers(svd), adapted_layers(lora), strict=True))
    for (name, s), (_, l) in pairs:
        active = s.rank_mask
        assert active[:, :4].all() and not active[:, 4:].any(), name
        # the same draws as LoRA's A, from the same seed, in the same order: common random numbers
        torch.testing.assert_close(s.lora_A[:, :4], l.lora_A, rtol=0, atol=0)
        assert not s.lora_A[:, 4:].any() and not s.lora_B.any()
        torch.testing.assert_close(s.lambdas(), active.float())


def test_lambda_one_whatever_the_speed_up():
    svd, _ = _patched("elalora", lambda_lr_multiplier=20.0)
    for _, layer in adapted_layers(svd):
        torch.testing.assert_close(layer.lambdas(), layer.rank_mask.float())
        torch.testing.assert_close(layer.lora_theta, layer.rank_mask.float() / 20.0)


def _trained(method: str, steps: int, **cfg):
    """The patched tiny ViT after ``steps`` AdamW steps at 1e-3 on the same batches (the
    regulariser added for SVD adapters)."""
    model, config = _patched(method, **cfg)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for step in range(steps):
        x, y = batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        if method == "elalora":
            loss = loss + config.orth_reg_weight * orthogonal_regularization(model)
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model


def _update_norm(method: str, steps: int, **cfg) -> float:
    """||delta W||_F over every adapter after ``steps`` training steps."""
    model = _trained(method, steps, **cfg)
    with torch.no_grad():
        return sum(float(layer.delta_weight().norm() ** 2) for _, layer in adapted_layers(model)) ** 0.5


@pytest.mark.parametrize("steps", [1, 5])
def test_the_default_update_grows_at_loras_pace(steps):
    """What the defaults are for: the SVD update's size after the first steps is LoRA's (the
    previous defaults, orthonormal P, Q with lambda 20x faster, grew twice as fast and cost
    1.4 points; a gaussian start with lambda = 0 grows 50x slower)."""
    ratio = _update_norm("elalora", steps) / _update_norm("lora", steps)
    assert 0.8 < ratio < 1.25, ratio


def test_a_grown_rank_starts_as_loras_do():
    model, opt, alloc, cfg = setup()
    assert cfg.init == "lora"
    run(model, opt, alloc, cfg, 0, 5)
    masks_before = [layer.rank_mask.clone() for layer in alloc.layers]
    record = alloc.adjust(3, opt)
    assert record.expanded
    grown = 0
    for layer, was in zip(alloc.layers, masks_before):
        for part in range(layer.n_parts):
            for slot in (layer.rank_mask[part] & ~was[part]).nonzero().flatten().tolist():
                grown += 1
                others = [s for s in layer.active_slots(part).tolist() if s != slot]
                q = layer.lora_A[part, slot]
                assert not layer.lora_B[part, :, slot].any()
                assert float(layer.lambdas()[part, slot]) == pytest.approx(1.0)
                assert float(q.norm()) == pytest.approx(1.0, abs=1e-5)
                assert (layer.lora_A[part, others] @ q).abs().max() < 1e-4
    assert grown >= 1  # that the function does not jump: test_allocator's expansion test


def test_lambda_moves_at_the_optimizers_pace():
    """With ``lambda_lr_multiplier=1`` a singular value moves about ``lr`` a step under Adam,
    as every other entry does (the previous 20x moved it 20 lr: what cost the SVD form)."""
    model = _trained("elalora", 5)
    moved = max(float((layer.lambdas() - 1.0)[layer.rank_mask].abs().max()) for _, layer in adapted_layers(model))
    assert 1e-3 < moved < 5 * 1e-3 * 1.1, moved
