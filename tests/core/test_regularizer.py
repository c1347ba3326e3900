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
