"""The orthogonal regulariser of the SVD factors (METHOD.md section 1).

    R = sum over adapters ( ||P^T P - I||_F + ||Q Q^T - I||_F ) / (number of matrices)

Plain (not squared) Frobenius norms, as AdaLoRA and the reference code use; only
active ranks take part, so an inactive slot neither adds to R nor gets a gradient.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from .layer import SVDLinear
from .targets import adapted_layers


def orthogonal_regularization(model_or_layers: nn.Module | Iterable[SVDLinear]) -> Tensor:
    """R over every SVD adapter of a model (or of the given layers); 0 for orthonormal P and Q."""
    if isinstance(model_or_layers, nn.Module):
        layers = [m for _, m in adapted_layers(model_or_layers) if isinstance(m, SVDLinear)]
    else:
        layers = list(model_or_layers)
    if not layers:
        raise ValueError("orthogonal_regularization: the model has no SVD adapters")
    total = layers[0].lora_A.new_zeros(())
    matrices = 0
    for layer in layers:
        mask = layer.rank_mask.to(layer.lora_A.dtype)  # (n, R)
        eye = torch.diag_embed(mask)  # identity on the active slots only
        Q = layer.lora_A * mask.unsqueeze(2)  # (n, R, d_in), inactive rows zeroed
        P = layer.lora_B * mask.unsqueeze(1)  # (n, d_part, R), inactive columns zeroed
        total = total + torch.linalg.matrix_norm(Q @ Q.transpose(1, 2) - eye).sum()
        total = total + torch.linalg.matrix_norm(P.transpose(1, 2) @ P - eye).sum()
        matrices += 2 * layer.n_parts
    return total / matrices
