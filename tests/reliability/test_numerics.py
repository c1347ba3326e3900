"""Numerics: a non-finite loss or gradient (a bad batch, an overflow) is skipped, counted
and logged, and poisons neither the importance scores nor the adapters; too many in a
row stop the run with a clear message and a checkpoint that loads and resumes."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from safetensors.torch import load_file

from elalora_vit.train import TrainingError, load_checkpoint, load_config, train
from elalora_vit.train import loop
from tests.reliability.conftest import assert_same_outputs, read_outputs
from tests.train.conftest import tiny_overrides

STEPS_PER_EPOCH = 4  # 30 training images, batches of 8


def poison_batches(monkeypatch, nan_steps) -> None:
    """Turn the images of the given (1-based) optimizer steps into NaN: a bad batch."""
    original, step = loop._train_batches, 0

    def batches(*args, **kwargs):
        nonlocal step
        for x, y in original(*args, **kwargs):
            step += 1
            yield (torch.full_like(x, float("nan")) if nan_steps(step) else x), y

    monkeypatch.setattr(loop, "_train_batches", batches)


def poison_gradient(monkeypatch, nan_steps) -> None:
    """Make one adapter's gradient NaN at the given steps while the loss stays finite:
    an overflow inside the backward pass."""
    original, step = loop.setup_method, 0

    def setup_method(model, cfg, total_steps):
        method = original(model, cfg, total_steps)
        lam = method.allocator.layers[0].lora_theta

        def hook(grad):
            nonlocal step
            step += 1
            return grad * float("nan") if nan_steps(step) else grad

        lam.register_hook(hook)
        return method

    monkeypatch.setattr(loop, "setup_method", setup_method)


def assert_all_finite(tensors) -> None:
    for tensor in tensors:
        assert bool(torch.isfinite(tensor).all())


def test_bad_steps_are_skipped_counted_logged_and_leave_scores_and_adapters_finite(
    task_root, tmp_path, monkeypatch, caplog
):
    out = tmp_path / "run"
    poison_batches(monkeypatch, lambda step: step == 3)  # a NaN batch: the loss is NaN
    poison_gradient(monkeypatch, lambda step: step == 7)  # a NaN gradient behind a finite loss
    caplog.set_level(logging.WARNING)
    # no clipping: the NaN gradient of step 7 is not hidden behind a NaN gradient norm
    result = train(load_config(None, tiny_overrides(task_root, out, **{"optim.grad_clip": 0})))

    assert result["skipped_steps"] == 2 and result["health"]["skipped_steps"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["skipped_steps"] for m in metrics] == [1, 2, 2]
    assert "step 3: non-finite loss or gradient, step skipped" in caplog.text  # warned once, then counted
    assert result["rounds"] >= 2 and result["health"]["nonfinite_after_round"] == 0

    state = load_checkpoint(out / "checkpoint.pt")
    assert state["allocator"]["skipped_steps"] == 2  # the scores ignored both steps
    assert_all_finite(state["allocator"]["importance"]["ibar"] + state["allocator"]["importance"]["ubar"])
    assert_all_finite(state["model"].values())
    assert_all_finite(load_file(str(out / "adapter.safetensors")).values())
    assert all(m["train_loss"] == m["train_loss"] for m in metrics)  # no NaN mean loss


def test_too_many_bad_steps_in_a_row_stop_with_a_usable_checkpoint(
    task_root, reference_run, reference_threads, tmp_path, monkeypatch
):
    out = tmp_path / "run"
    overrides = tiny_overrides(task_root, out, max_bad_steps=3)
    poison_batches(monkeypatch, lambda step: step > STEPS_PER_EPOCH)  # everything after epoch 1 is bad
    with pytest.raises(TrainingError) as stopped:
        train(load_config(None, overrides))
    message = str(stopped.value)
    assert "3 optimizer steps in a row had a non-finite loss or gradient" in message
    assert f"checkpoint of epoch 1 in {out / 'checkpoint.pt'} is intact" in message
    assert not (out / "result.json").exists()

    state = load_checkpoint(out / "checkpoint.pt")
    assert state["epoch"] == 1 and state["step"] == STEPS_PER_EPOCH
    assert_all_finite(state["model"].values())
    assert_all_finite(state["allocator"]["importance"]["ibar"] + state["allocator"]["importance"]["ubar"])

    monkeypatch.undo()  # the data is fixed: the run resumes and ends as if nothing happened
    train(load_config(None, overrides), resume=True)
    outputs, reference = read_outputs(out), read_outputs(reference_run)
    assert outputs["result"].pop("health") == reference["result"].pop("health")
    assert_same_outputs(outputs, reference)


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no step ever succeeds
def test_bad_steps_in_the_first_epoch_say_that_no_checkpoint_exists(task_root, tmp_path, monkeypatch):
    poison_batches(monkeypatch, lambda step: True)
    with pytest.raises(TrainingError, match="2 optimizer steps in a row.*No checkpoint was written yet"):
        train(load_config(None, tiny_overrides(task_root, tmp_path / "run", max_bad_steps=2)))
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
