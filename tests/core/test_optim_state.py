"""Fresh optimizer state for a grown slot: its Adam steps must start small and stay at
about the learning rate, however late in training the slot is grown.

torch's Adam keeps one step counter per tensor, so a zeroed second moment is
bias-corrected as if it had been averaging for thousands of steps; the slot's steps
then run several times the learning rate.  These tests run real AdamW steps.
"""

from __future__ import annotations

import pytest
import torch

from elalora_vit.core import reset_optimizer_slot

LR = 1e-3
# Steady gradients: three neighbours of different sizes, and the slot that is re-grown.
GRADIENTS = torch.tensor([[0.5, -1.0, 1.5, 1.0]])
NEIGHBOURS = (0, torch.tensor([0, 1, 2]))


def _steps_after_reset(like, optimizer_class=torch.optim.AdamW, **kwargs) -> list[float]:
    """|update| / lr of slot (0, 3) for 50 steps after it is reset late in training."""
    param = torch.nn.Parameter(torch.zeros(1, 4))
    optimizer = optimizer_class([param], lr=LR, weight_decay=0.0, **kwargs)
    for _ in range(3000):
        param.grad = GRADIENTS.clone()
        optimizer.step()
    reset_optimizer_slot(optimizer, param, (0, 3), like)
    sizes = []
    for _ in range(50):
        before = param[0, 3].item()
        param.grad = GRADIENTS.clone()
        optimizer.step()
        sizes.append(abs(param[0, 3].item() - before) / LR)
    return sizes


@pytest.mark.parametrize("amsgrad", [False, True])
def test_a_grown_slot_starts_small_and_never_outruns_the_learning_rate(amsgrad):
    sizes = _steps_after_reset(NEIGHBOURS, amsgrad=amsgrad)
    assert sizes[0] < 0.15  # zero first moment: the first step is about (1 - beta1) lr
    assert max(sizes) <= 1.0  # normalised by the neighbours' second moment (rms 1.08 > |g| = 1)
    assert sizes[-1] > 0.8  # and it does learn: near lr once the first moment has built up


def test_a_zeroed_second_moment_would_outrun_the_learning_rate():
    """Why the rule exists: zeroing everything gives steps of several lr."""
    assert max(_steps_after_reset(None)) > 3.0


def test_the_reset_touches_only_the_slot():
    param = torch.nn.Parameter(torch.zeros(2, 3, 4))
    optimizer = torch.optim.Adam([param], lr=LR)
    param.grad = torch.randn(2, 3, 4)
    optimizer.step()
    before = {k: v.clone() for k, v in optimizer.state[param].items()}
    reset_optimizer_slot(optimizer, param, (1, slice(None), 2), (1, slice(None), torch.tensor([0, 3])), dim=1)
    state = optimizer.state[param]
    assert torch.equal(state["exp_avg"][1, :, 2], torch.zeros(3))
    assert torch.equal(state["exp_avg_sq"][1, :, 2], before["exp_avg_sq"][1][:, [0, 3]].mean(dim=1))
    assert torch.equal(state["step"], before["step"])
    touched = torch.zeros(2, 3, 4, dtype=torch.bool)
    touched[1, :, 2] = True
    for key in ("exp_avg", "exp_avg_sq"):
        assert torch.equal(state[key][~touched], before[key][~touched])


def test_momentum_of_sgd_is_zeroed_and_no_state_is_fine():
    param = torch.nn.Parameter(torch.zeros(1, 4))
    optimizer = torch.optim.SGD([param], lr=LR, momentum=0.9)
    reset_optimizer_slot(optimizer, param, (0, 3), NEIGHBOURS)  # no state yet: nothing to do
    param.grad = GRADIENTS.clone()
    optimizer.step()
    reset_optimizer_slot(optimizer, param, (0, 3), NEIGHBOURS)
    buffer = optimizer.state[param]["momentum_buffer"]
    assert buffer[0, 3] == 0 and torch.equal(buffer[0, :3], GRADIENTS[0, :3])
    reset_optimizer_slot(None, param, (0, 3))  # no optimizer: nothing to do
