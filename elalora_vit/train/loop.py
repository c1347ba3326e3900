"""The fine-tuning loop, readable top to bottom.

    train(cfg) -> result

builds the backbone and the data, sets up the method (ElaLoRA, LoRA, AdaLoRA,
full fine-tuning or linear probing), then runs epochs of AdamW steps with a
warm-up + cosine/linear LR schedule, gradient clipping, the orthogonal
regulariser and the rank allocator, under fp32/bf16/fp16 through accelerate.
Every ``checkpoint_every`` epochs (by default as often as keeps their cost under 2% of the
run), after the last one, and when Ctrl-C or SIGTERM stops the run between two steps comes
an atomic checkpoint, so ``resume=True`` continues a stopped run from it and reaches what
an uninterrupted run reaches.

The pieces live beside it: the run's state (state.py), its files (run_files.py),
what may happen to its output folder (run_folder.py: --resume, --overwrite),
checkpoint and resume (resume.py), outputs (outputs.py), the end-of-run summary
(summary.py) and the accelerator, finite checks, evaluation and progress bar
(runtime.py); dry_run.py checks a run's inputs and prints its plan instead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from ..core import orthogonal_regularization
from ..core.errors import first_line
from ..storage.lock import FolderLock, FolderLocked, LockUnavailable
from ..stopping import StopSignals
from ..data import DataError, load_task_data, resolve_task
from ..data.cache import resolve_cache_dir
from ..data.transforms import device_batch
from ..vit import check_input_size, create_run_backbone, resolve_data_config
from .checkpoint import CheckpointError, load_checkpoint
from ..config import TrainConfig
from .dry_run import check_batch_against_split
from .errors import RunInterrupted, RunInUse, TrainingError
from .health import HealthMonitor
from .methods import setup_method, total_rank
from .outputs import append_jsonl, epoch_record, run_result, start_outputs, write_outputs
from .protocol import run_protocol
from .resume import resume_from, save_run_checkpoint
from .run_files import RunFiles
from .run_folder import FINISHED, NOTHING_TO_RESUME, OVERWRITE, RESUME, clear_run_files, run_folder_action
from .runtime import (create_accelerator, evaluate, finite_on_every_process, main_process_decides, postfix,
                      process_logger, progress_bar)
from .state import EpochProgress, RunState
from .tracking import make_tracker

CHECKPOINT_SHARE = 0.02  # checkpoint_every's default: at most this share of a run's time spent writing checkpoints
READ_EVERY = 10  # steps between reads of the losses and skip flags (and updates of the progress bar's numbers)

log = logging.getLogger(__name__)

__all__ = ["RunInUse", "RunInterrupted", "TrainingError", "evaluate", "lr_factor", "train"]


def train(
    cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, stop_after_epoch: int | None = None
) -> dict[str, Any]:
    """Fine-tune per ``cfg``; returns the result (also written to ``result.json``).

    Args:
        resume: continue from ``checkpoint.pt`` in the output folder; without one, a
            fresh run starts (and a line says so). A finished run's result is returned
            as it is, if the settings are the same (see ``run_folder.py``).
        overwrite: delete the run files in the output folder first. Without
            ``resume`` or ``overwrite``, a folder holding a run is refused.
        stop_after_epoch: end the process's work after this epoch, as if interrupted
            (for tests and time-sliced schedulers); the checkpoint is written first.

    Raises:
        RunInterrupted: Ctrl-C or SIGTERM; it says which epoch ran and what is checkpointed
            (during the steps: the step it stopped after, written then).
    """
    cfg.validate()
    files = RunFiles(cfg.resolved_output_dir())
    with run_folder_lock(files):
        action = run_folder_action(files, cfg.to_dict(), resume=resume, overwrite=overwrite)
        if action == FINISHED:
            return json.loads(files.result.read_text())
        try:
            return _run(cfg, files, action, stop_after_epoch)
        except RunInterrupted:
            raise
        except KeyboardInterrupt as stop:  # while building the model or caching the data
            raise RunInterrupted(files.root, None, None, signum=getattr(stop, "signum", None)) from None


@contextlib.contextmanager
def run_folder_lock(files: RunFiles) -> Iterator[None]:
    """Hold the run folder's lock (``storage/lock.py``) for the whole run, so a second process
    never resumes, overwrites or deletes it; a folder it created for a run that then wrote
    nothing is removed again.  In a distributed run the main process takes it for all of
    them and tells the others whether it got it, so a launch whose folder is held stops on
    every process at once.

    Raises:
        RunInUse: another live process holds the folder.
    """
    main = int(os.environ.get("RANK", "0")) == 0
    existed, lock, refusal = files.root.exists(), None, None
    if main:
        try:
            lock = FolderLock(files.root, "training").acquire()
        except FolderLocked as err:
            refusal = ("in use", f"{err}; this run was left untouched")
        except LockUnavailable as err:
            refusal = ("unavailable", f"{err}: the output folder must be writable")
    refusal = main_process_decides(refusal)
    if refusal is not None:
        kind, message = refusal
        raise (RunInUse if kind == "in use" else TrainingError)(message) from None
    try:
        yield
    finally:
        if lock is not None:
            if not existed:  # a run stopped before it wrote anything leaves no folder behind
                lock.remove_folder_if_empty()
            lock.release()


def _run(cfg: TrainConfig, files: RunFiles, action: str, stop_after_epoch: int | None) -> dict[str, Any]:
    """Build, then train and evaluate (the body of :func:`train`)."""
    from accelerate.utils import set_seed

    accelerator = create_accelerator(cfg.precision)
    set_seed(cfg.seed)
    started = time.time()

    # ---- backbone, data, method, optimizer, schedule
    check_batch_against_split(cfg, resolve_task(cfg.data.task, cfg.data.source), accelerator.num_processes)
    model, data = _build_model_and_data(cfg, accelerator)
    protocol = run_protocol(cfg, model, data.task)  # before the method patches the model
    steps_per_epoch = math.ceil(len(data.train) / (cfg.optim.batch_size * accelerator.num_processes))
    state = _set_up_run(cfg, model, steps_per_epoch, accelerator, started)

    # ---- the folder, resume, first outputs
    _start_folder(files, action, cfg, state, accelerator)
    state.current_rank = total_rank(state.unwrapped)  # read once here; allocation rounds update it
    state.tracker = make_tracker(cfg.log_to, files.root, str(files.root), cfg.to_dict(), accelerator.is_main_process)
    progress = progress_bar(cfg, accelerator, steps_per_epoch * cfg.optim.epochs, state.step)
    try:
        if not _train_epochs(state, cfg, data, accelerator, progress, files, stop_after_epoch):
            return {"interrupted_after_epoch": state.epoch}
        accuracy = _final_evaluation(state, cfg, data, accelerator, files)
    except RunInterrupted:
        raise
    except KeyboardInterrupt as stop:
        progress.close()
        final = state.epoch >= cfg.optim.epochs
        raise RunInterrupted(files.root, None if final else state.epoch + 1, _checkpoint_epoch(state, files), final,
                             signum=getattr(stop, "signum", None)) from None
    last_loss = state.metrics[-1]["train_loss"] if state.metrics else 0.0
    progress.set_postfix(postfix(last_loss, 1, accuracy, state.scheduler, state.current_rank))  # ends on the final top-1
    progress.close()

    # ---- final outputs
    if state.metrics:  # the last line of metrics.jsonl holds the final top-1 (write_outputs rewrites it)
        state.metrics[-1].update(eval_acc=accuracy, eval_split=cfg.data.eval_split)
    result = {**run_result(cfg, files, state, accuracy), "protocol": protocol}
    if accelerator.is_main_process:
        write_outputs(files, cfg, state, result)
    state.tracker.log_figures(files, state.step)
    state.tracker.close()
    accelerator.wait_for_everyone()
    return result


def _train_epochs(state: RunState, cfg: TrainConfig, data, accelerator, progress, files: RunFiles,
                  stop_after_epoch: int | None) -> bool:
    """The loop: an epoch of steps, its metrics line, a checkpoint. False when it
    stopped early at ``stop_after_epoch``. Ctrl-C or SIGTERM during the steps stops after
    the step it came in, with a checkpoint of that step (:class:`StopSignals`)."""
    with StopSignals() as signals:
        while state.epoch < cfg.optim.epochs:
            train_loss = _train_epoch(state, cfg, data.train, accelerator, progress, files, signals)
            state.epoch += 1
            record = epoch_record(state, train_loss)
            state.progress = EpochProgress()
            if cfg.eval_every and state.epoch % cfg.eval_every == 0 and state.epoch < cfg.optim.epochs:
                state.last_eval = evaluate(state.model, data.eval, cfg, accelerator)
                record.update(eval_acc=state.last_eval, eval_split=cfg.data.eval_split)
            state.metrics.append(record)
            if accelerator.is_main_process:
                append_jsonl(files.metrics, record)
            state.tracker.log_epoch(record)
            stopping = stop_after_epoch is not None and stop_after_epoch <= state.epoch < cfg.optim.epochs
            if _checkpoint_due(cfg, state) or stopping:
                _write_checkpoint(state, cfg, accelerator, files)
            if stopping:
                progress.close()
                state.tracker.close()
                return False
    return True


def _write_checkpoint(state: RunState, cfg: TrainConfig, accelerator, files: RunFiles) -> None:
    """Checkpoint the run, timing the write for the default cadence (:func:`_checkpoint_due`)."""
    begun = time.monotonic()
    save_run_checkpoint(files.checkpoint, cfg, state, accelerator)
    state.checkpoint_written_at = time.monotonic()
    state.checkpoint_seconds = state.checkpoint_written_at - begun


def _checkpoint_due(cfg: TrainConfig, state: RunState) -> bool:
    """A checkpoint after the last epoch, and before it every ``checkpoint_every`` epochs or,
    by default (``None``), whenever the time since the last one is at least
    ``1 / CHECKPOINT_SHARE - 1`` times what that one took to write, so that writing them costs
    at most ``CHECKPOINT_SHARE`` of the run: every epoch when epochs are long (a CPU run), about
    every 20th when a GPU epoch takes about as long as a fsynced checkpoint. The first
    epoch always gets one (it measures the cost). The main process times and decides for all."""
    every = cfg.checkpoint_every
    if state.epoch >= cfg.optim.epochs:
        return True
    if every is not None:
        return every > 0 and state.epoch % every == 0
    due = (state.checkpoint_seconds is None
           or time.monotonic() - state.checkpoint_written_at >= state.checkpoint_seconds * (1 / CHECKPOINT_SHARE - 1))
    return main_process_decides(due)


def _final_evaluation(state: RunState, cfg: TrainConfig, data, accelerator, files: RunFiles) -> float:
    """Top-1 at the end. Image files were checked before training, but one corrupt past
    its header is found only now: say that training is safe and how to evaluate again."""
    try:
        return evaluate(state.model, data.eval, cfg, accelerator)
    except DataError as err:
        raise DataError(
            f"{first_line(err)} Training finished and is saved ({files.checkpoint}, epoch {state.checkpoint_epoch}): "
            "fix the file, then run the same command with --resume to evaluate again"
        ) from err


def _checkpoint_epoch(state: RunState, files: RunFiles) -> int | None:
    """The epoch of the checkpoint on disk when Ctrl-C came. Read from the file only if
    Ctrl-C came while it was being written (it is the old one or the new one)."""
    if state.checkpoint_epoch == state.epoch or not files.checkpoint.exists():
        return state.checkpoint_epoch
    try:
        return int(load_checkpoint(files.checkpoint)["epoch"])
    except (CheckpointError, KeyError, TypeError, ValueError):
        return state.checkpoint_epoch


def _start_folder(files: RunFiles, action: str, cfg: TrainConfig, state: RunState, accelerator) -> None:
    """Clear (``--overwrite``) or resume the output folder, then write the first outputs."""
    if accelerator.is_main_process:
        if action == OVERWRITE:
            clear_run_files(files)
            log.info("--overwrite: deleted the earlier run's files in %s", files.root)
        files.root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    if action == RESUME:
        resume_from(files.checkpoint, cfg, state, accelerator)
        if state.progress.steps:  # stopped between two steps
            log.info("resumed %s in epoch %d at step %d", files.root, state.epoch + 1, state.step)
        else:
            log.info("resumed %s at epoch %d (step %d)", files.root, state.epoch, state.step)
    elif action == NOTHING_TO_RESUME and accelerator.is_main_process:
        log.warning("--resume: no checkpoint in %s, nothing to resume; starting a fresh run", files.root)
    if accelerator.is_main_process:
        start_outputs(files, cfg, state.metrics)


# ------------------------------------------------------------------------------ pieces
def _build_model_and_data(cfg: TrainConfig, accelerator):
    """The backbone and the task's data, normalised and sized as the backbone expects.
    The backbone comes first: missing pretrained weights fail fast, before the data is cached."""
    task = resolve_task(cfg.data.task, cfg.data.source)
    model = create_run_backbone(cfg.model, task.num_classes)
    spec = resolve_data_config(model, cfg.data)
    check_input_size(model, spec.image_size, cfg.model.name)  # before the data is cached
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
        cache_dir=resolve_cache_dir(cfg.data.cache, cfg.data.cache_dir),
    )
    return model, data


def _set_up_run(cfg: TrainConfig, model, steps_per_epoch: int, accelerator, started: float) -> RunState:
    """Set up the method on ``model``, AdamW and the LR schedule, prepared by accelerate."""
    total_steps = steps_per_epoch * cfg.optim.epochs
    method = setup_method(model, cfg, total_steps)
    # One fused kernel for the whole update (CUDA and CPU; the allocator's per-slot state resets work on
    # its state as on the for-loop implementation's), which also skips a non-finite step on the device.
    optimizer = torch.optim.AdamW(method.param_groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                  fused=accelerator.device.type in ("cuda", "cpu") or None)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, total_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    if cfg.compile:  # after prepare: DDP's hooks stay outside the compiled graph
        model = torch.compile(model)
    health = HealthMonitor(method.allocator, process_logger(log, accelerator))
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


def _train_batches(dataset, cfg: TrainConfig, epoch: int, accelerator, start: int = 0):
    """This process's batches of one epoch from its step ``start`` on: a permutation fixed by
    (seed, epoch), so a resumed run sees the same order, split evenly across processes."""
    generator = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
    order = torch.randperm(len(dataset), generator=generator)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = cfg.optim.batch_size * world
    steps = math.ceil(len(order) / per_step)
    if len(order) < steps * per_step:  # pad by wrapping so every process takes the same number of steps
        order = torch.cat([order, order[: steps * per_step - len(order)]])
    for s in range(start, steps):
        chunk = order[s * per_step : (s + 1) * per_step][rank::world]
        yield device_batch(dataset, chunk, accelerator.device)


def _train_epoch(state: RunState, cfg: TrainConfig, dataset, accelerator, progress, files: RunFiles,
                 signals: StopSignals) -> float:
    """The epoch's optimizer steps (those ``state.progress`` has not taken yet); returns its
    mean loss over the steps not skipped.

    A step leaves its loss and its skip flag on the device; every ``READ_EVERY`` steps and
    at the epoch's end they are read in one transfer and then counted, logged and judged
    in step order (:func:`_settle`), so no step waits for the device to drain. A stop
    signal is obeyed at such a read (at once in a single process), with a checkpoint."""
    state.model.train()
    done, pending = state.progress, []
    alone = accelerator.num_processes == 1
    batches = _train_batches(dataset, cfg, state.epoch, accelerator, start=done.steps)
    signals.deferring = True
    try:
        while True:
            begun = time.perf_counter()
            batch = next(batches, None)
            fetched = time.perf_counter()
            if batch is None:
                break
            loss, skipped, stop = _train_step(state, cfg, *batch, accelerator, signals.requested)
            pending.append((state.step, loss.detach(), skipped, state.scheduler.get_last_lr()[0], stop))
            done.steps += 1
            done.data_s += fetched - begun
            done.train_s += time.perf_counter() - begun
            progress.update(1)
            if state.step % READ_EVERY == 0 or (alone and signals.requested):
                _settle_or_stop(state, pending, cfg, accelerator, progress, files, signals)
        _settle_or_stop(state, pending, cfg, accelerator, progress, files, signals)
    finally:
        signals.deferring = False
    return done.loss_sum / max(done.loss_count, 1)


def _settle_or_stop(state: RunState, pending: list[tuple], cfg: TrainConfig, accelerator, progress, files: RunFiles,
                    signals: StopSignals) -> None:
    """:func:`_settle`; then, if a stop signal reached this process (or, in a multi-process
    run, any process in the steps just read: the same steps on all), checkpoint this step
    and stop."""
    settle_start = time.perf_counter()
    flagged = _settle(state, pending, cfg.max_bad_steps, files)
    state.progress.train_s += time.perf_counter() - settle_start
    if not progress.disable:
        progress.set_postfix(postfix(state.progress.loss_sum, state.progress.loss_count, state.last_eval,
                                     state.scheduler, state.current_rank), refresh=False)
    if not (flagged if accelerator.num_processes > 1 else signals.requested):
        return
    signals.deferring = False  # a signal now (while the checkpoint is written) stops at once
    _write_checkpoint(state, cfg, accelerator, files)
    progress.close()
    state.tracker.close()
    raise RunInterrupted(files.root, state.epoch + 1, state.epoch, signum=signals.signum,
                         checkpoint_step=state.step, total_steps=progress.total)


def _settle(state: RunState, pending: list[tuple], max_bad_steps: int, files: RunFiles) -> bool:
    """Read the pending steps' losses, skip flags and stop flags in one transfer, then count,
    log and judge each step in order, as if it had been read when it ran; empties
    ``pending``. True if a stop flag was set (a signal reached some process)."""
    if not pending:
        return False
    losses = torch.stack([loss.float().reshape(()) for _, loss, _, _, _ in pending])
    flags = [torch.as_tensor(skipped, device=losses.device).reshape(()) for _, _, skipped, _, _ in pending]
    flags += [stop.reshape(()) for *_, stop in pending if stop is not None]  # a multi-process run's
    values = torch.cat([losses, torch.stack(flags).to(losses.dtype)]).tolist()  # the one read of the device
    n, done = len(pending), state.progress
    for (step, _, _, lr, _), loss, skipped in zip(pending, values[:n], values[n:2 * n]):
        skipped = bool(skipped)
        _stop_after_too_many_bad_steps(state, step, skipped, max_bad_steps, files)
        if not skipped:
            done.loss_sum += loss
            done.loss_count += 1
        state.tracker.log_step(step, loss, lr, skipped)
        state.health.after_step(step, None if skipped else loss, skipped)
    pending.clear()
    return any(values[2 * n:])


def _train_step(state: RunState, cfg: TrainConfig, x, y, accelerator,
                stop_requested: bool = False) -> tuple[torch.Tensor, torch.Tensor | bool, torch.Tensor | None]:
    """Forward, backward, clip, AdamW and LR steps, then the allocator's; returns the
    loss, whether the step was skipped (non-finite on some process) and, in a
    multi-process run, whether a stop signal reached some process (a device flag).

    With a fused AdamW and no fp16 loss scaler (the default on CUDA and CPU), "skipped" stays
    a flag on the device: the fused kernel takes it as ``found_inf`` and leaves parameters,
    moments and step count as they were, and the allocator masks its scores with it. With
    fp16's scaler (which decides on the host) or a for-loop AdamW it is read here (a bool)."""
    x, y = x.to(accelerator.device), y.to(accelerator.device)
    with accelerator.autocast():
        loss = F.cross_entropy(state.model(x), y)
        if state.method.uses_orth_reg:
            loss = loss + state.method.adapter_config.orth_reg_weight * orthogonal_regularization(state.unwrapped)
    accelerator.backward(loss)
    grad_norm = None
    if cfg.optim.grad_clip > 0:
        grad_norm = accelerator.clip_grad_norm_(state.model.parameters(), cfg.optim.grad_clip)
    finite, stop = finite_on_every_process(loss, grad_norm, state.model, accelerator, stop_requested)
    optimizer = _inner_optimizer(state.optimizer)
    if accelerator.scaler is None and optimizer.defaults.get("fused"):
        skipped = ~finite
        optimizer.found_inf = skipped.float()  # the kernel skips a non-finite step on the device
        state.optimizer.step()
    else:
        finite = bool(finite)
        if finite or accelerator.scaler is not None:  # with a scaler, it decides what to skip
            state.optimizer.step()
        skipped = not finite or accelerator.optimizer_step_was_skipped
    state.scheduler.step()
    if state.allocator is not None:
        _allocation_step(state, skipped)
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    return loss, skipped, stop


def _inner_optimizer(optimizer):
    """The torch optimizer inside accelerate's ``AcceleratedOptimizer``."""
    return optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer


def _allocation_step(state: RunState, skipped) -> None:
    """The allocator's step: importance scores, and a prune/expand round when one is due."""
    optimizer = _inner_optimizer(state.optimizer)
    # finite_on_every_process checked the gradients: the scores need not check them again.
    record = state.allocator.step(optimizer, skipped=skipped, finite_checked=True)
    if record is not None:
        state.health.after_round(record, state.unwrapped)
        state.current_rank = sum(record.rank_pattern.values())
        state.tracker.log_round(record.step, record.rank_pattern)


def _stop_after_too_many_bad_steps(state: RunState, step: int, skipped: bool, max_bad_steps: int,
                                   files: RunFiles) -> None:
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
        f"(step {step}); the run stops. {saved}: lower the learning rate, use bf16 "
        "instead of fp16, or check the data"
    )
