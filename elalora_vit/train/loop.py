"""The fine-tuning loop, readable top to bottom.

    train(cfg) -> result

builds the backbone and the data, sets up the method (ElaLoRA, LoRA, AdaLoRA,
full fine-tuning or linear probing), then runs epochs of AdamW steps with a
warm-up + cosine/linear LR schedule, gradient clipping, the orthogonal
regulariser and the rank allocator, under fp32/bf16/fp16 through accelerate.
Every epoch ends with an atomic checkpoint, so ``resume=True`` continues a
stopped run and reaches what an uninterrupted run reaches.

The pieces live beside it: the run's state (state.py), its files (run_files.py),
checkpoint and resume (resume.py), outputs (outputs.py) and the accelerator,
finite checks, evaluation and progress bar (runtime.py).
"""

from __future__ import annotations

import json
import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F

from ..core import orthogonal_regularization
from ..data import load_task_data, resolve_task
from ..vit import create_backbone, resolve_data_config
from .config import TrainConfig
from .errors import TrainingError
from .health import HealthMonitor
from .methods import setup_method, total_rank
from .outputs import append_jsonl, epoch_record, run_result, start_outputs, write_outputs
from .resume import resume_from, save_run_checkpoint
from .run_files import RunFiles
from .runtime import create_accelerator, evaluate, finite_on_every_process, postfix, progress_bar
from .state import RunState
from .tracking import make_tracker

log = logging.getLogger(__name__)

__all__ = ["TrainingError", "evaluate", "lr_factor", "train"]


def train(cfg: TrainConfig, *, resume: bool = False, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Fine-tune per ``cfg``; returns the result (also written to ``result.json``).

    Args:
        resume: continue from ``checkpoint.pt`` in the output folder, if there is one.
        stop_after_epoch: end the process's work after this epoch, as if interrupted
            (for tests and time-sliced schedulers); the checkpoint is written first.
    """
    from accelerate.utils import set_seed

    cfg.validate()
    files = RunFiles(cfg.resolved_output_dir())
    if files.result.exists():
        return _finished_run(files, resume)
    accelerator = create_accelerator(cfg.precision)
    set_seed(cfg.seed)
    started = time.time()

    # ---- backbone, data, method, optimizer, schedule
    model, data = _build_model_and_data(cfg, accelerator)
    steps_per_epoch = math.ceil(len(data.train) / (cfg.optim.batch_size * accelerator.num_processes))
    state = _set_up_run(cfg, model, steps_per_epoch, accelerator, started)

    # ---- resume, first outputs
    files.root.mkdir(parents=True, exist_ok=True)
    if resume and files.checkpoint.exists():
        resume_from(files.checkpoint, cfg, state, accelerator)
        log.info("resumed %s at epoch %d (step %d)", files.root, state.epoch, state.step)
    if accelerator.is_main_process:
        start_outputs(files, cfg, state.metrics)
    state.current_rank = total_rank(state.unwrapped)  # read once here; allocation rounds update it
    state.tracker = make_tracker(cfg.log_to, files.root, str(files.root), cfg.to_dict(), accelerator.is_main_process)
    progress = progress_bar(cfg, accelerator, steps_per_epoch * cfg.optim.epochs, state.step)

    # ---- the loop: an epoch of steps, its metrics line, a checkpoint
    while state.epoch < cfg.optim.epochs:
        train_loss = _train_epoch(state, cfg, data.train, accelerator, progress, files)
        state.epoch += 1
        record = epoch_record(state, train_loss)
        if cfg.eval_every and state.epoch % cfg.eval_every == 0 and state.epoch < cfg.optim.epochs:
            state.last_eval = evaluate(state.model, data.eval, cfg, accelerator)
            record.update(eval_acc=state.last_eval, eval_split=cfg.data.eval_split)
        state.metrics.append(record)
        if accelerator.is_main_process:
            append_jsonl(files.metrics, record)
        state.tracker.log_epoch(record)
        save_run_checkpoint(files.checkpoint, cfg, state, accelerator)
        if stop_after_epoch is not None and stop_after_epoch <= state.epoch < cfg.optim.epochs:
            progress.close()
            state.tracker.close()
            return {"interrupted_after_epoch": state.epoch}
    progress.close()

    # ---- final evaluation and outputs
    accuracy = evaluate(state.model, data.eval, cfg, accelerator)
    result = run_result(cfg, files, state, accuracy)
    if accelerator.is_main_process:
        write_outputs(files, cfg, state, result)
    state.tracker.log_figures(files, state.step)
    state.tracker.close()
    accelerator.wait_for_everyone()
    return result


# ------------------------------------------------------------------------------ pieces
def _finished_run(files: RunFiles, resume: bool) -> dict[str, Any]:
    """A finished run's result, for ``resume``; without it, an error that protects the run."""
    if not resume:
        raise TrainingError(
            f"{files.root} already holds a finished run ({files.result.name}); "
            "choose another --output, delete the folder, or pass --resume to keep it"
        )
    return json.loads(files.result.read_text())


def _build_model_and_data(cfg: TrainConfig, accelerator):
    """The backbone and the task's data, normalised and sized as the backbone expects.
    The backbone comes first: missing pretrained weights fail fast, before the data is cached."""
    task = resolve_task(cfg.data.task, cfg.data.source)
    model = create_backbone(
        cfg.model.name,
        task.num_classes,
        pretrained=cfg.model.pretrained,
        checkpoint=cfg.model.checkpoint,
        **cfg.model.kwargs,
    )
    spec = resolve_data_config(model, cfg.data)
    data = load_task_data(
        task,
        source=cfg.data.source,
        data_dir=cfg.data.data_dir,
        tfds_dir=cfg.data.tfds_dir,
        train_split=cfg.data.train_split,
        eval_split=cfg.data.eval_split,
        image_size=spec.image_size,
        interpolation=spec.interpolation,
        mean=spec.mean,
        std=spec.std,
        progress=cfg.progress and accelerator.is_main_process,
    )
    return model, data


def _set_up_run(cfg: TrainConfig, model, steps_per_epoch: int, accelerator, started: float) -> RunState:
    """Set up the method on ``model``, AdamW and the LR schedule, prepared by accelerate."""
    total_steps = steps_per_epoch * cfg.optim.epochs
    method = setup_method(model, cfg, total_steps)
    optimizer = torch.optim.AdamW(method.param_groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, total_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    health = HealthMonitor(method.allocator, log)
    return RunState(model, optimizer, scheduler, method, health, started=started)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, total_steps: int):
    """LR multiplier per step: linear warm-up, then cosine / linear decay to min_lr, or constant."""
    warmup = int(round(cfg.optim.warmup_epochs * steps_per_epoch))
    floor = cfg.optim.min_lr / cfg.optim.lr
    schedule = cfg.optim.lr_schedule

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min((step - warmup) / max(1, total_steps - warmup), 1.0)
        if schedule == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return floor + (1 - floor) * (1 - progress)

    return factor


def _train_batches(dataset, cfg: TrainConfig, epoch: int, accelerator):
    """This process's batches of one epoch: a permutation fixed by (seed, epoch), so a
    resumed run sees the same order, split evenly across processes."""
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(dataset), generator=generator)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.optim.batch_size * world
    steps = math.ceil(len(order) / per_step)
    if len(order) < steps * per_step:  # pad by wrapping so every process takes the same number of steps
        order = torch.cat([order, order[: steps * per_step - len(order)]])
    for s in range(steps):
        chunk = order[s * per_step : (s + 1) * per_step][rank::world]
        items = [dataset[i] for i in chunk.tolist()]
        yield torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])



def _train_epoch(state: RunState, cfg: TrainConfig, dataset, accelerator, progress, files: RunFiles) -> float:
    """One epoch of optimizer steps; returns its mean loss over the steps not skipped."""
    state.model.train()
    loss_sum, loss_count = torch.zeros(()), 0
    for x, y in _train_batches(dataset, cfg, state.epoch, accelerator):
        loss, skipped = _train_step(state, cfg, x, y, accelerator)
        _stop_after_too_many_bad_steps(state, skipped, cfg.max_bad_steps, files)
        if not skipped:
            loss_sum += loss.detach().float().cpu()
            loss_count += 1
        state.tracker.log_step(state.step, loss, state.scheduler.get_last_lr()[0], skipped)
        progress.update(1)
        progress.set_postfix(postfix(loss_sum, loss_count, state.last_eval, state.scheduler, state.current_rank),
                             refresh=False)
    return float(loss_sum / max(loss_count, 1))


def _train_step(state: RunState, cfg: TrainConfig, x, y, accelerator) -> tuple[torch.Tensor, bool]:
    """Forward, backward, clip, AdamW and LR steps, then the allocator's; returns the
    loss and whether the step was skipped (non-finite on some process)."""
    x, y = x.to(accelerator.device), y.to(accelerator.device)
    with accelerator.autocast():
        loss = F.cross_entropy(state.model(x), y)
        if state.method.uses_orth_reg:
            loss = loss + state.method.adapter_config.orth_reg_weight * orthogonal_regularization(state.unwrapped)
    accelerator.backward(loss)
    grad_norm = None
    if cfg.optim.grad_clip > 0:
        grad_norm = accelerator.clip_grad_norm_(state.model.parameters(), cfg.optim.grad_clip)
    finite = finite_on_every_process(loss, grad_norm, state.model, accelerator)
    if finite or accelerator.scaler is not None:  # with a scaler, it decides what to skip
        state.optimizer.step()
    skipped = not finite or accelerator.optimizer_step_was_skipped
    state.scheduler.step()
    if state.allocator is not None:
        _allocation_step(state, skipped)
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.health.after_step(state.step, None if skipped else float(loss.detach()), skipped)
    return loss, skipped


def _allocation_step(state: RunState, skipped: bool) -> None:
    """The allocator's step: importance scores, and a prune/expand round when one is due."""
    optimizer = state.optimizer.optimizer if hasattr(state.optimizer, "optimizer") else state.optimizer
    record = state.allocator.step(optimizer, skipped=skipped)
    if record is not None:
        state.health.after_round(record, state.unwrapped)
        state.current_rank = sum(record.rank_pattern.values())
        state.tracker.log_round(record.step, record.rank_pattern)


def _stop_after_too_many_bad_steps(state: RunState, skipped: bool, max_bad_steps: int, files: RunFiles) -> None:
    """Count non-finite steps in a row; stop the run at ``max_bad_steps`` of them, saying
    whether a checkpoint to resume from exists."""
    state.bad_in_a_row = state.bad_in_a_row + 1 if skipped else 0
    if state.bad_in_a_row < max_bad_steps:
        return
    saved = (
        f"The checkpoint of epoch {state.epoch} in {files.checkpoint} is intact (continue with --resume)"
        if files.checkpoint.exists()
        else "No checkpoint was written yet (the first epoch did not finish)"
    )
    raise TrainingError(
        f"{state.bad_in_a_row} optimizer steps in a row had a non-finite loss or gradient "
        f"(step {state.step}); the run stops. {saved}: lower the learning rate, use bf16 "
        "instead of fp16, or check the data"
    )
