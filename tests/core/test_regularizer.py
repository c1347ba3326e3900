import torch
from torch import nn

from elalora_vit import ElaLoRAConfig, SVDLinear, orthogonal_regularization, patch_model


def _layer(init="orthogonal", rank=3, capacity=5):
    torch.manual_seed(0)
    return SVDLinear(nn.Linear(16, 12), None, rank=rank, capacity=capacity, scaling=1.0, init=init)


def test_zero_for_orthonormal_factors_with_finite_gradient():
    layer = _layer()
    value = orthogonal_regularization([layer])
    assert value.item() < 1e-5
    value.backward()
    assert torch.isfinite(layer.lora_A.grad).all() and torch.isfinite(layer.lora_B.grad).all()


def test_matches_the_formula_on_active_ranks_only():
    layer = _layer(init="gaussian")
    with torch.no_grad():
        layer.rank_mask[0] = torch.tensor([True, False, True, True, False])
        layer.lora_A[0, 1].fill_(100.0)  # inactive: must not count
    active = [0, 2, 3]
    Q = layer.lora_A[0, active]
    P = layer.lora_B[0][:, active]
    expected = (torch.linalg.norm(P.T @ P - torch.eye(3)) + torch.linalg.norm(Q @ Q.T - torch.eye(3))) / 2
    torch.testing.assert_close(orthogonal_regularization([layer]), expected)
    orthogonal_regularization([layer]).backward()
    assert torch.count_nonzero(layer.lora_A.grad[0, 1]) == 0


def test_averages_over_all_matrices_of_a_model():
    model = nn.Sequential(nn.Linear(8, 6), nn.Linear(6, 6))
    patch_model(model, ["0", "1"], ElaLoRAConfig(rank=2), split={"1": ["a", "b"]})
    layers = [model[0], model[1]]
    total = 0.0
    for layer in layers:
        for part in range(layer.n_parts):
            m = layer.rank_mask[part]
            Q, P = layer.lora_A[part, m], layer.lora_B[part][:, m]
            total += torch.linalg.norm(Q @ Q.T - torch.eye(2)) + torch.linalg.norm(P.T @ P - torch.eye(2))
    torch.testing.assert_close(orthogonal_regularization(model), total / 6)


def _reference(layers):
    """R from its definition, one adapter at a time, differentiated by autograd."""
    total, count = 0.0, 0
    for layer in layers:
        for part in range(layer.n_parts):
            if layer.is_excluded(part):
                continue
            m = layer.rank_mask[part]
            Q, P = layer.lora_A[part, m], layer.lora_B[part][:, m]
            eye = torch.eye(int(m.sum()), dtype=Q.dtype)
            total = total + torch.linalg.norm(Q @ Q.T - eye) + torch.linalg.norm(P.T @ P - eye)
            count += 2
    return total / count


def _mixed_model():
    # Three shapes, a split layer with an excluded part beside an unsplit layer of the same
    # part shape (one group holding 3 + 1 parts), and uneven random masks.
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(8, 18), nn.Linear(8, 6), nn.Linear(6, 10), nn.Linear(10, 6))
    patch_model(model, ["0", "1", "2", "3"], ElaLoRAConfig(rank=3, max_rank=5, init="gaussian", init_std=0.3),
                split={"0": ["q", "k", "v"]}, exclude=["0.k"])
    with torch.no_grad():
        for layer in model:
            layer.rank_mask.copy_(torch.rand(layer.rank_mask.shape) < 0.6)
            layer.rank_mask[:, 0] = True
            layer.rank_mask &= layer.part_inclusion().unsqueeze(1)
    return list(model)


def test_gradient_matches_autograd_of_the_definition():
    layers = _mixed_model()
    params = [t for layer in layers for t in (layer.lora_A, layer.lora_B)]
    value = orthogonal_regularization(layers)
    torch.testing.assert_close(value, _reference(layers))
    mine = torch.autograd.grad(3.0 * value, params)
    expected = torch.autograd.grad(3.0 * _reference(layers), params)
    for got, want in zip(mine, expected):
        torch.testing.assert_close(got, want)
    assert torch.count_nonzero(mine[0][1]) == 0 and torch.count_nonzero(mine[1][1]) == 0  # part k of layer 0


def test_float64_and_autocast_keep_the_factors_precision():
    layers = _mixed_model()
    for layer in layers:
        layer.double()
    value = orthogonal_regularization(layers)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value, _reference(layers))
    fp32 = _mixed_model()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = orthogonal_regularization(fp32)
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, _reference(fp32))
