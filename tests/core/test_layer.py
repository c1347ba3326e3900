import pytest
import torch
from torch import nn
import torch.nn.functional as F

from elalora_vit import ElaLoRAConfig, LoRALinear, SVDLinear, find_adapters, patch_model
from tests.conftest import QKV_SPLIT, VIT_TARGETS


def test_patched_model_computes_what_the_base_computes(tiny_vit):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        before = tiny_vit(x)
        patch_model(tiny_vit, VIT_TARGETS, ElaLoRAConfig(rank=4), split=QKV_SPLIT)
        after = tiny_vit(x)
    assert torch.equal(before, after)


def test_only_adapters_are_trainable(tiny_vit):
    patch_model(tiny_vit, VIT_TARGETS, ElaLoRAConfig(rank=4), split=QKV_SPLIT)
    trainable = {n for n, p in tiny_vit.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    assert len(trainable) == 3 * 4 * 2  # A, E, B x four layers x two blocks


def _random_svd(layer: SVDLinear) -> None:
    with torch.no_grad():
        layer.lora_theta.normal_()
        layer.lora_A.normal_()
        layer.lora_B.normal_()


def test_qkv_split_equals_three_separate_adapters_on_the_fused_projection():
    torch.manual_seed(0)
    base = nn.Linear(12, 3 * 8)
    layer = SVDLinear(base, ["q", "k", "v"], rank=3, capacity=5, scaling=2.0)
    _random_svd(layer)
    with torch.no_grad():
        layer.rank_mask[1, 4] = True  # k has rank 4, others 3
    x = torch.randn(2, 7, 12)
    expected = base(x)
    for part in range(3):
        m = layer.rank_mask[part].float()
        P, lam, Q = layer.lora_B[part], layer.lambdas()[part] * m, layer.lora_A[part]
        delta = 2.0 * (x @ Q.T) * lam @ P.T
        expected[..., 8 * part : 8 * (part + 1)] += delta
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.ranks() == [3, 4, 3]


def test_inactive_slots_get_no_gradient():
    layer = SVDLinear(nn.Linear(6, 4), None, rank=2, capacity=4, scaling=1.0)
    _random_svd(layer)
    layer(torch.randn(5, 6)).pow(2).sum().backward()
    for grad in (layer.lora_A.grad[0, 2:], layer.lora_theta.grad[0, 2:], layer.lora_B.grad[0, :, 2:]):
        assert torch.count_nonzero(grad) == 0
    assert torch.count_nonzero(layer.lora_theta.grad[0, :2]) == 2


def test_adapter_ref_exposes_active_factors():
    model = nn.Sequential(nn.Linear(6, 9))
    (ref,) = patch_model(model, ["0"], ElaLoRAConfig(rank=2, max_rank=4), split={"0": ["a", "b", "c"]})[1:2]
    assert ref.name == "0.b" and ref.rank == 2
    layer = model[0]
    with torch.no_grad():
        layer.rank_mask[1] = torch.tensor([True, False, True, True])
    assert ref.rank == 3
    assert ref.active_slots.tolist() == [0, 2, 3]
    assert ref.Q.shape == (3, 6) and ref.P.shape == (3, 3) and ref.lam.shape == (3,)
    assert torch.equal(ref.Q, layer.lora_A[1, [0, 2, 3]])
    assert torch.equal(ref.P, layer.lora_B[1][:, [0, 2, 3]])


def test_merge_and_unmerge_reproduce_outputs():
    torch.manual_seed(1)
    layer = SVDLinear(nn.Linear(10, 6), ["a", "b"], rank=2, capacity=4, scaling=0.5)
    _random_svd(layer)
    original_weight = layer.base_layer.weight.detach().clone()
    x = torch.randn(4, 10)
    with torch.no_grad():
        unmerged = layer(x)
        layer.merge()
        merged = layer(x)
        plain = layer.base_layer(x)
        layer.unmerge()
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(plain, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base_layer.weight, original_weight, rtol=0, atol=1e-6)
    assert not layer.merged


def test_lora_layer_starts_as_identity_and_trains():
    base = nn.Linear(8, 8)
    layer = LoRALinear(base, None, rank=2, scaling=2.0)
    x = torch.randn(3, 8)
    assert torch.equal(layer(x), base(x))
    layer(x).sum().backward()
    assert layer.lora_B.grad.abs().sum() > 0


def test_half_precision_base_with_fp32_adapters():
    base = nn.Linear(8, 4).to(torch.bfloat16)
    layer = SVDLinear(base, None, rank=2, capacity=2, scaling=1.0)
    assert layer.lora_A.dtype == torch.float32
    out = layer(torch.randn(2, 8, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16


def test_orthogonal_init_gives_orthonormal_factors():
    layer = SVDLinear(nn.Linear(16, 12), None, rank=3, capacity=6, scaling=1.0, init="orthogonal")
    Q, P = layer.lora_A[0], layer.lora_B[0]
    torch.testing.assert_close(Q @ Q.T, torch.eye(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(P.T @ P, torch.eye(6), atol=1e-5, rtol=0)


def test_find_adapters_sees_through_ddp_style_wrapper(tiny_vit):
    patch_model(tiny_vit, VIT_TARGETS, ElaLoRAConfig(rank=2), split=QKV_SPLIT)

    class Wrapper(nn.Module):
        def __init__(self, m):
            super().__init__()
            self._orig_mod = m

    assert [a.name for a in find_adapters(Wrapper(tiny_vit))] == [a.name for a in find_adapters(tiny_vit)]


def test_uneven_split_is_a_clear_error():
    with pytest.raises(ValueError, match="3 equal parts"):
        SVDLinear(nn.Linear(4, 10), ["q", "k", "v"], rank=1, capacity=2, scaling=1.0)


def test_training_through_merged_adapters_warns_and_eval_does_not():
    import warnings as _warnings

    from elalora_vit import ElaLoRAConfig, merge_adapters, patch_model, unmerge_adapters
    from elalora_vit.core.layer import MergedTrainingWarning
    from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit

    model = make_tiny_vit(depth=1)
    patch_model(model, VIT_TARGETS, ElaLoRAConfig(rank=2), split=QKV_SPLIT)
    model.head.requires_grad_(True)
    merge_adapters(model)
    x = torch.randn(2, 3, 32, 32)
    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        model.eval()
        with torch.no_grad():
            model(x)
        assert not [w for w in caught if issubclass(w.category, MergedTrainingWarning)]
        model.train()
        model(x).sum().backward()
    assert [w for w in caught if issubclass(w.category, MergedTrainingWarning)]
    unmerge_adapters(model)
    with _warnings.catch_warnings():
        _warnings.simplefilter("error", MergedTrainingWarning)
        model(x).sum().backward()  # unmerged: no warning, gradients flow


def _reference_forward(layer, x):
    """The SVD layer's output from its definition, every factor through plain autograd."""
    scale = layer.lora_theta * layer.lambda_scale * layer.rank_mask * layer.scaling  # (n, R)
    out = []
    for part in range(layer.n_parts):
        z = F.linear(x, layer.lora_A[part]) * scale[part]
        out.append(F.linear(z, layer.lora_B[part]))
    return layer.base_layer(x) + torch.cat(out, dim=-1)


def test_the_scaled_slots_node_gives_autograds_gradients():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(6, 9), ["q", "k", "v"], rank=2, capacity=4, scaling=1.5, init="gaussian",
                      init_std=0.5, lambda_scale=7.0)
    with torch.no_grad():
        layer.lora_theta.normal_()
        layer.rank_mask[1, 1] = False  # an inactive slot between active ones
        layer.rank_mask[2, 3] = True
    x = torch.randn(2, 5, 6, requires_grad=True)
    params = [x, layer.lora_A, layer.lora_theta, layer.lora_B]
    w = torch.randn(2, 5, 9)
    got = torch.autograd.grad((layer(x) * w).sum(), params)
    want = torch.autograd.grad((_reference_forward(layer, x) * w).sum(), params)
    for g, e in zip(got, want):
        torch.testing.assert_close(g, e)
    assert got[2][1, 1] == 0  # the inactive slot's theta gets nothing


def test_under_autocast_the_update_stays_in_half_precision_and_theta_grads_in_fp32():
    torch.manual_seed(0)
    layer = SVDLinear(nn.Linear(16, 16), None, rank=4, capacity=8, scaling=2.0, init="gaussian", init_std=0.3)
    with torch.no_grad():
        layer.lora_theta.normal_()
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        z = F.linear(x, layer.lora_A.reshape(-1, 16))
        assert layer.scale_slots(z, -1).dtype == torch.bfloat16  # no promotion back to fp32
    out.float().sum().backward()
    assert layer.lora_theta.grad.dtype == torch.float32 and torch.isfinite(layer.lora_theta.grad).all()
    reference = torch.autograd.grad(_reference_forward(layer, x).sum(), layer.lora_theta)[0]
    torch.testing.assert_close(layer.lora_theta.grad, reference, rtol=0.05, atol=0.05)
