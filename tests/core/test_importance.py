"""Importance scores against an independent implementation: PEFT's AdaLoRA RankAllocator."""

import pytest
import torch
from torch import nn

from elalora_vit import ElaLoRAConfig, ImportanceTracker, RankAllocator, SVDLinear, patch_model

peft = pytest.importorskip("peft")


# Different on purpose: with beta1 == beta2 an EMA that uses the wrong one cannot be told apart.
BETA1, BETA2 = 0.85, 0.6
# Ranks masked off half-way in both implementations (PEFT zeroes their lambda, as its
# mask_to_budget does): from then on their EMAs only decay, each at its own beta.
INACTIVE = {"0": [1], "2": [0, 3]}
MASKED_FROM = 3


def _peft_adalora_mlp(rank: int):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 6))
    config = peft.AdaLoraConfig(
        target_modules=["0", "2"], init_r=rank, target_r=2, tinit=1, tfinal=1, deltaT=1,
        total_step=100, beta1=BETA1, beta2=BETA2, lora_alpha=8, lora_dropout=0.0,
    )
    model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_()
    return model


def _peft_param(model, layer: str, which: str) -> nn.Parameter:
    return dict(model.named_parameters())[f"base_model.model.{layer}.{which}.default"]


def _peft_triplet_scores(allocator, model, layer: str) -> torch.Tensor:
    """PEFT's own triplet score of each rank of one layer (as in its mask_to_budget)."""
    name = f"base_model.model.{layer}.%s.default"
    s_A = allocator._element_score(name % "lora_A").mean(dim=1, keepdim=True)
    s_B = allocator._element_score(name % "lora_B").mean(dim=0, keepdim=False).view(-1, 1)
    s_E = allocator._element_score(name % "lora_E")
    return allocator._combine_ipt(s_E, torch.cat([s_A, s_B], dim=1))


def _peft_stats(allocator, layer: str, which: str) -> tuple[torch.Tensor, torch.Tensor]:
    name = f"base_model.model.{layer}.{which}.default"
    return allocator.exp_avg_ipt[name], allocator.exp_avg_unc[name]


def test_scores_equal_peft_adalora_on_the_same_parameters_and_gradients():
    rank = 4
    peft_model = _peft_adalora_mlp(rank)
    allocator = peft_model.base_model.rankallocator
    assert (allocator.beta1, allocator.beta2) == (BETA1, BETA2)

    ours = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 6))
    # lambda = 20 * theta here: the score of lambda must not depend on how it is parametrised.
    config = ElaLoRAConfig(rank=rank, max_rank=rank, beta1=BETA1, beta2=BETA2, lambda_lr_multiplier=20.0,
                           warmup_steps=1, adjust_interval=1, stabilize_steps=1)
    patch_model(ours, ["0", "2"], config)
    layers = [ours[0], ours[2]]
    tracker = RankAllocator(ours, config, total_steps=100).tracker  # the betas as the allocator passes them

    for step in range(8):
        peft_model.zero_grad()
        with torch.no_grad():  # the parameters move between steps, as under an optimizer
            for n, p in peft_model.named_parameters():
                if "lora_" in n:
                    p.add_(0.1 * torch.randn_like(p))
            for layer, name in zip(layers, ["0", "2"]):
                if step >= MASKED_FROM:
                    _peft_param(peft_model, name, "lora_E")[INACTIVE[name]] = 0.0
                    layer.rank_mask[0, INACTIVE[name]] = False
        x = torch.randn(16, 10)
        peft_model(x).pow(2).mean().backward()
        allocator.update_ipt(peft_model)

        with torch.no_grad():
            for layer, name in zip(layers, ["0", "2"]):
                A, E, B = (_peft_param(peft_model, name, w) for w in ("lora_A", "lora_E", "lora_B"))
                layer.lora_A[0].copy_(A)
                layer.set_lambdas(E.view(-1), (0,))
                layer.lora_B[0].copy_(B)
                layer.lora_A.grad = A.grad.unsqueeze(0).clone()
                # dL/dtheta = lambda_scale * dL/dlambda (chain rule through lambda = s * theta)
                layer.lora_theta.grad = E.grad.view(1, -1) * layer.lambda_scale
                layer.lora_B.grad = B.grad.unsqueeze(0).clone()
        assert tracker.update()

        for index, name in enumerate(["0", "2"]):
            # every slot, the inactive ones included (their lambda is 0: only the EMAs' memory scores them)
            expected = _peft_triplet_scores(allocator, peft_model, name)
            torch.testing.assert_close(tracker.layer_scores(index)[0], expected, rtol=1e-6, atol=1e-12)
            for j, which in enumerate(("lora_A", "lora_E", "lora_B")):
                ibar, ubar = _peft_stats(allocator, name, which)
                shape = tracker.ibar[3 * index + j][0].shape
                torch.testing.assert_close(tracker.ibar[3 * index + j][0], ibar.view(shape), rtol=1e-6, atol=1e-12)
                torch.testing.assert_close(tracker.ubar[3 * index + j][0], ubar.view(shape), rtol=1e-6, atol=1e-12)
    assert tracker.scores().shape == (2, rank)
    assert (tracker.scores() > 0).all()  # the inactive slots too: their EMAs remember
    assert not layers[0].rank_mask[0, 1] and not layers[1].rank_mask[0, 3]


def _layer_with_grads(value: float):
    layer = SVDLinear(nn.Linear(4, 4), None, rank=2, capacity=2, scaling=1.0)
    for p in (layer.lora_A, layer.lora_theta, layer.lora_B):
        p.grad = torch.full_like(p, value)
    return layer


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_non_finite_gradients_change_nothing(bad):
    layer = _layer_with_grads(1.0)
    with torch.no_grad():
        layer.lora_theta.fill_(1.0)
    tracker = ImportanceTracker([layer])
    assert tracker.update()
    before = [t.clone() for t in tracker.ibar + tracker.ubar]
    layer.lora_B.grad[0, 1, 1] = bad
    assert not tracker.update()
    after = tracker.ibar + tracker.ubar
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("bad", [float("inf"), float("nan")])
def test_a_step_masked_by_the_loops_flag_changes_nothing_even_with_non_finite_gradients(bad):
    """``valid`` false (the loop's device-side finite flag) with the tracker's own check off:
    the NaN / inf is masked on the device, not multiplied by a zero weight (NaN * 0 = NaN)."""
    layer = _layer_with_grads(1.0)
    with torch.no_grad():
        layer.lora_theta.fill_(1.0)
    tracker = ImportanceTracker([layer])
    tracker.update()
    before = [t.clone() for t in tracker.ibar + tracker.ubar]
    layer.lora_B.grad[0, 1, 1] = bad
    assert not tracker.update(check_finite=False, valid=torch.tensor(False))
    assert all(torch.equal(a, b) for a, b in zip(before, tracker.ibar + tracker.ubar))
    layer.lora_B.grad[0, 1, 1] = 2.0
    assert tracker.update(check_finite=False, valid=torch.tensor(True))
    assert not torch.equal(before[2], tracker.ibar[2]) and not torch.equal(before[5], tracker.ubar[2])


def test_the_emas_of_a_model_on_two_dtypes_are_kept_per_dtype():
    """One flat buffer per (device, dtype): a bf16 layer beside an fp32 one keeps its dtype."""
    low, high = _layer_with_grads(1.0).to(torch.bfloat16), _layer_with_grads(1.0)
    for layer in (low, high):
        for p in (layer.lora_A, layer.lora_theta, layer.lora_B):
            p.grad = torch.ones_like(p)
    tracker, alone = ImportanceTracker([low, high]), [ImportanceTracker([low]), ImportanceTracker([high])]
    assert tracker.update() and all(t.update() for t in alone)
    assert [t.dtype for t in tracker.ibar] == [torch.bfloat16] * 3 + [torch.float32] * 3
    for index, single in enumerate(alone):  # the same scores as each layer tracked on its own
        assert torch.equal(tracker.layer_scores(index), single.layer_scores(0))
        assert tracker.layer_scores(index).abs().sum() > 0


def test_missing_gradient_counts_as_zero():
    layer = _layer_with_grads(1.0)
    layer.lora_A.grad = None
    tracker = ImportanceTracker([layer])
    assert tracker.update()
    assert torch.count_nonzero(tracker.ibar[0]) == 0


def test_reset_slot_zeroes_one_rank_only():
    layer = _layer_with_grads(1.0)
    with torch.no_grad():
        for p in (layer.lora_A, layer.lora_theta, layer.lora_B):
            p.fill_(1.0)
    tracker = ImportanceTracker([layer])
    tracker.update()
    tracker.update()
    tracker.reset_slot(0, 0, 1)
    scores = tracker.layer_scores(0)[0]
    assert scores[1] == 0 and scores[0] > 0
    assert torch.count_nonzero(tracker.ibar[2][0, :, 1]) == 0
    assert torch.count_nonzero(tracker.ibar[2][0, :, 0]) == 4
