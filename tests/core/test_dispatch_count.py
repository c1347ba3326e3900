"""Dispatched ops per ElaLoRA training step against LoRA's at the same targets (issue 25's
goal: at most 1.25x, regulariser included), so that a change that adds launches to every
step cannot land unseen.

Counted as benchmarks/dispatch.py counts them: every aten op under a ``TorchDispatchMode``,
on a 4-block tiny ViT, rank 8 on q, k, v, proj, fc1, fc2, after a warm-up step.  The
optimizer is AdamW with ``fused=True``, what ``elalora-vit train`` builds on a GPU: one
launch for all parameters, so ElaLoRA's extra theta tensors cost no launches there (the
per-tensor loop of a CPU AdamW would count 10 ops for each)."""

from tests.test_benchmarks_smoke import _script

ops_per_step = _script("dispatch").ops_per_step  # what benchmarks/dispatch.py reports, by part


def test_elalora_dispatches_at_most_1_25x_loras_ops_regulariser_included():
    lora, plain, full = (ops_per_step(kind, rank=8) for kind in ("lora", "elalora", "elalora+orth"))
    assert plain["model"] <= 1.12 * lora["model"]  # the slot scale: one multiply per layer more than LoRA's
    assert full["model"] <= 1.25 * lora["model"]  # the measure: forward, loss, regulariser, backward
    assert full["step"] <= 1.25 * lora["step"]  # the whole step, optimizer and allocator too
