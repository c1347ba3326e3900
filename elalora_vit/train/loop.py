"""The fine-tuning loop: one function, readable top to bottom.

    train(cfg) -> result

builds the backbone and the data, sets up the method (ElaLoRA, LoRA, AdaLoRA,
full fine-tuning or linear probing), then runs epochs of AdamW steps with a
warm-up + cosine/linear LR schedule, gradient clipping, the orthogonal
regulariser and the rank allocator, under fp32/bf16/fp16 through accelerate.
Every epoch ends with an atomic checkpoint, so ``resume=True`` continues a
stopped run and reaches what an uninterrupted run reaches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader, Subset

from ..core import orthogonal_regularization, save_adapters, unwrap_model
from ..data import load_task_data, resolve_task
from ..data.datasets import loader_workers
from ..vit import create_backbone, resolve_normalization
from .checkpoint import CheckpointError, check_same_run, load_checkpoint, save_checkpoint
from .config import ADAPTER_METHODS, TrainConfig
from .health import HealthMonitor
from .methods import (
    final_rank_pattern,
    setup_method,
    total_rank,
    trainable_parameter_count,
    trainable_state_names,
)
from .report import append_jsonl, plot_rank_heatmap, write_json

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); its last checkpoint is intact."""


@dataclass
class RunFiles:
    root: Path

    def __getattr__(self, name: str) -> Path:  # run.config, run.metrics, ...
        names = {
            "config": "config.yaml",
            "metrics": "metrics.jsonl",
            "result": "result.json",
            "history": "rank_history.json",
            "heatmap": "rank_heatmap.png",
            "adapter": "adapter.safetensors",
            "weights": "trained.safetensors",
            "checkpoint": CHECKPOINT,
        }
        if name not in names:
            raise AttributeError(name)
        return self.root / names[name]


def train(cfg: TrainConfig, *, resume: bool = False, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Fine-tune per ``cfg``; returns the result (also written to ``result.json``).

    Args:
        resume: continue from ``checkpoint.pt`` in the output folder, if there is one.
        stop_after_epoch: end the process's work after this epoch, as if interrupted
            (for tests and time-sliced schedulers); the checkpoint is written first.
    """
    from accelerate.utils import set_seed

    cfg.validate()
    run = RunFiles(cfg.resolved_output_dir())
    if run.result.exists() and not resume:
        raise TrainingError(
            f"{run.root} already holds a finished run ({run.result.name}); "
            "choose another --output, delete the folder, or pass --resume to keep it"
        )
    if run.result.exists():
        return json.loads(run.result.read_text())
    accelerator = _accelerator(cfg.precision)
    set_seed(cfg.seed)
    started = time.time()

    # ---- backbone and data -------------------------------------------------
    # The backbone first: missing pretrained weights fail fast, before the data is cached.
    task = resolve_task(cfg.data.task, cfg.data.source)
    model = create_backbone(
        cfg.model.name,
        task.num_classes,
        pretrained=cfg.model.pretrained,
        checkpoint=cfg.model.checkpoint,
        **cfg.model.kwargs,
    )
    mean, std, _ = resolve_normalization(model)
    data = load_task_data(
        cfg.data.task,
        source=cfg.data.source,
        data_dir=cfg.data.data_dir,
        tfds_dir=cfg.data.tfds_dir,
        train_split=cfg.data.train_split,
        eval_split=cfg.data.eval_split,
        image_size=cfg.data.image_size or _input_size(model),
        mean=cfg.data.mean or mean,
        std=cfg.data.std or std,
        progress=cfg.progress and accelerator.is_main_process,
    )

    # ---- method, optimizer, schedule ---------------------------------------
    world = accelerator.num_processes
    steps_per_epoch = math.ceil(len(data.train) / (cfg.optim.batch_size * world))
    total_steps = steps_per_epoch * cfg.optim.epochs
    method = setup_method(model, cfg, total_steps)
    optimizer = torch.optim.AdamW(method.param_groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, total_steps))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    allocator = method.allocator
    health = HealthMonitor(allocator, log)

    # ---- resume -------------------------------------------------------------
    run.root.mkdir(parents=True, exist_ok=True)
    epoch, step, metrics_so_far = 0, 0, []
    if resume and run.checkpoint.exists():
        state = load_checkpoint(run.checkpoint)
        check_same_run(state.get("config"), cfg.to_dict(), run.checkpoint)
        try:  # plain data of the right format, yet not what this run wrote (edited, truncated by hand)
            epoch, step = _restore(state, accelerator, model, optimizer, scheduler, allocator, health)
            metrics_so_far = list(state["metrics"])
            started -= float(state["wall_time"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise CheckpointError(
                f"checkpoint {run.checkpoint} does not fit this run ({detail}); delete it to start the run afresh"
            ) from err
        if accelerator.is_main_process:  # drop lines of an epoch that ended after the last checkpoint
            run.metrics.write_text("".join(json.dumps(m) + "\n" for m in metrics_so_far))
        log.info("resumed %s at epoch %d (step %d)", run.root, epoch, step)
    elif accelerator.is_main_process:
        run.metrics.write_text("")
    if accelerator.is_main_process:
        run.config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    progress = _progress_bar(cfg, accelerator, total_steps, step)
    last_eval: float | None = metrics_so_far[-1].get("eval_acc") if metrics_so_far else None
    bad_in_a_row = 0
    unwrapped = unwrap_model(model)
    current_rank = total_rank(unwrapped)  # changes only in a round: not re-read every step

    # ---- the loop -------------------------------------------------------------
    while epoch < cfg.optim.epochs:
        model.train()
        loss_sum, loss_count = torch.zeros(()), 0
        for x, y in _train_batches(data.train, cfg, epoch, accelerator):
            x, y = x.to(accelerator.device), y.to(accelerator.device)
            with accelerator.autocast():
                loss = F.cross_entropy(model(x), y)
                if method.uses_orth_reg:
                    loss = loss + method.adapter_config.orth_reg_weight * orthogonal_regularization(unwrapped)
            accelerator.backward(loss)
            grad_norm = None
            if cfg.optim.grad_clip > 0:
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
            finite = _finite_on_every_process(loss, grad_norm, model, accelerator)
            if finite or accelerator.scaler is not None:  # with a scaler, it decides what to skip
                optimizer.step()
            skipped = not finite or accelerator.optimizer_step_was_skipped
            scheduler.step()
            if allocator is not None:
                record = allocator.step(
                    optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer, skipped=skipped
                )
                if record is not None:
                    health.after_round(record, unwrapped)
                    current_rank = sum(record.rank_pattern.values())
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bad_in_a_row = bad_in_a_row + 1 if skipped else 0
            health.after_step(step, None if skipped else float(loss.detach()), skipped)
            if bad_in_a_row >= cfg.max_bad_steps:
                saved = (
                    f"The checkpoint of epoch {epoch} in {run.checkpoint} is intact (continue with --resume)"
                    if run.checkpoint.exists()
                    else "No checkpoint was written yet (the first epoch did not finish)"
                )
                raise TrainingError(
                    f"{bad_in_a_row} optimizer steps in a row had a non-finite loss or gradient "
                    f"(step {step}); the run stops. {saved}: lower the learning rate, use bf16 "
                    "instead of fp16, or check the data"
                )
            if not skipped:
                loss_sum += loss.detach().float().cpu()
                loss_count += 1
            progress.update(1)
            progress.set_postfix(_postfix(loss_sum, loss_count, last_eval, scheduler, current_rank), refresh=False)
        epoch += 1

        record = {
            "epoch": epoch,
            "step": step,
            "train_loss": float(loss_sum / max(loss_count, 1)),
            "lr": scheduler.get_last_lr()[0],
            "total_rank": current_rank,
            "skipped_steps": health.skipped_steps,
            "time_s": round(time.time() - started, 2),
        }
        if cfg.eval_every and epoch % cfg.eval_every == 0 and epoch < cfg.optim.epochs:
            last_eval = evaluate(model, data.eval, cfg, accelerator)
            record["eval_acc"] = last_eval
            record["eval_split"] = cfg.data.eval_split
        metrics_so_far.append(record)
        if accelerator.is_main_process:
            append_jsonl(run.metrics, record)
        _checkpoint(run, cfg, accelerator, model, optimizer, scheduler, allocator, health, epoch, step,
                    metrics_so_far, time.time() - started)
        if stop_after_epoch is not None and epoch >= stop_after_epoch and epoch < cfg.optim.epochs:
            progress.close()
            return {"interrupted_after_epoch": epoch}
    progress.close()

    # ---- final evaluation and outputs --------------------------------------------
    accuracy = evaluate(model, data.eval, cfg, accelerator)
    result = _result(cfg, run, unwrapped, method, allocator, health, accuracy, step, time.time() - started)
    if accelerator.is_main_process:
        metrics_so_far[-1]["eval_acc"] = accuracy
        _write_outputs(run, cfg, unwrapped, method, allocator, result)
    accelerator.wait_for_everyone()
    return result


# ------------------------------------------------------------------------------ pieces
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


@torch.no_grad()
def evaluate(model, dataset, cfg: TrainConfig, accelerator) -> float:
    """Top-1 accuracy (%) on ``dataset``, each process scoring its share."""
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    share = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(
        share,
        batch_size=max(64, cfg.optim.batch_size),
        **loader_workers(dataset, cfg.data.num_workers),
        persistent_workers=False,
    )
    counts = torch.zeros(2, device=accelerator.device)
    for x, y in loader:
        x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            logits = model(x)
        counts[0] += (logits.argmax(dim=-1) == y).sum()
        counts[1] += y.numel()
    counts = accelerator.reduce(counts, reduction="sum")
    model.train()
    return round(100.0 * float(counts[0]) / max(float(counts[1]), 1.0), 4)


def _finite_on_every_process(loss, grad_norm, model, accelerator) -> bool:
    """Whether this step's loss and gradients are finite on every process.

    Processes see different batches: a bad batch gives one process a NaN loss while
    the others see a finite loss and the NaN gradients DDP averaged in. All must skip
    the step together, or their weights and rank decisions drift apart. Without
    clipping there is no gradient norm yet; it is computed here, so that a non-finite
    gradient behind a finite loss is caught too.
    """
    if grad_norm is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    ok = bool(torch.isfinite(loss.detach())) and bool(torch.isfinite(grad_norm))
    failed = accelerator.reduce(torch.tensor(float(not ok), device=accelerator.device), reduction="sum")
    return float(failed) == 0


def _checkpoint(run, cfg, accelerator, model, optimizer, scheduler, allocator, health, epoch, step, metrics, wall):
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return
    unwrapped = unwrap_model(model)
    full_state = unwrapped.state_dict()
    state = {
        "config": cfg.to_dict(),
        "epoch": epoch,
        "step": step,
        "model": {k: full_state[k] for k in trainable_state_names(unwrapped, cfg)},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else None,
        "allocator": allocator.state_dict() if allocator is not None else None,
        "health": health.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "metrics": metrics,
        "wall_time": wall,
    }
    save_checkpoint(run.checkpoint, state)
    accelerator.wait_for_everyone()


def _restore(state, accelerator, model, optimizer, scheduler, allocator, health) -> tuple[int, int]:
    unwrapped = unwrap_model(model)
    missing = set(state["model"]) - set(unwrapped.state_dict())
    if missing:
        raise TrainingError(f"checkpoint holds weights this model lacks: {sorted(missing)[:4]}")
    unwrapped.load_state_dict(state["model"], strict=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if accelerator.scaler is not None and state["scaler"] is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    if allocator is not None:
        allocator.load_state_dict(state["allocator"])
    health.load_state_dict(state["health"])
    torch.set_rng_state(state["torch_rng"])
    return int(state["epoch"]), int(state["step"])


def _result(cfg, run, model, method, allocator, health, accuracy, steps, wall) -> dict[str, Any]:
    pattern = final_rank_pattern(model)
    return {
        "task": cfg.data.task,
        "method": cfg.method,
        "seed": cfg.seed,
        "eval_split": cfg.data.eval_split,
        "accuracy": accuracy,
        "trainable_params": trainable_parameter_count(model),
        "total_rank": sum(pattern.values()) if pattern else None,
        "rank_pattern": pattern,
        "rounds": len(allocator.history) if allocator is not None else 0,
        "steps": steps,
        "epochs": cfg.optim.epochs,
        "skipped_steps": health.skipped_steps,
        "health": health.summary(),
        "model": cfg.model.name,
        "pretrained": bool(cfg.model.pretrained or cfg.model.checkpoint),
        "wall_time_s": round(wall, 2),
        "output_dir": str(run.root),
    }


def _write_outputs(run, cfg, model, method, allocator, result) -> None:
    if cfg.method in ADAPTER_METHODS:
        save_adapters(model, run.adapter, method.adapter_config, modules_to_save=method.head_names)
    else:
        from safetensors.torch import save_file

        trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
        save_file(trainable, str(run.weights))
    if result["rank_pattern"]:  # the adapter methods
        write_json(run.history, [r.to_dict() for r in allocator.history] if allocator is not None else [])
        plot_rank_heatmap(
            result["rank_pattern"],
            run.heatmap,
            title=f"{cfg.data.task} / {cfg.method}: rank per adapter",
            initial_rank=method.adapter_config.rank if allocator is not None else None,
        )
    write_json(run.result, result)


def _postfix(loss_sum, loss_count, last_eval, scheduler, rank: int | None) -> dict[str, str]:
    postfix = {"loss": f"{float(loss_sum) / max(loss_count, 1):.3f}", "lr": f"{scheduler.get_last_lr()[0]:.2e}"}
    if last_eval is not None:
        postfix["acc"] = f"{last_eval:.1f}"
    if rank is not None:
        postfix["rank"] = str(rank)
    return postfix


def _progress_bar(cfg, accelerator, total, initial):
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"{cfg.data.task}/{cfg.method}",
        unit="step",
        disable=not (cfg.progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )


def _input_size(model) -> int:
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size:
        return int(size[0] if isinstance(size, (tuple, list)) else size)
    return int(model.pretrained_cfg.get("input_size", (3, 224, 224))[-1])


def _accelerator(precision: str):
    """A fresh Accelerator for this run: accelerate keeps its settings in a process-wide
    singleton, so a second run in the same process (a sweep, a test) must reset them."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    cpu = _cpu_only(precision)
    AcceleratorState._reset_state()  # keeps the distributed (process group) state
    return Accelerator(mixed_precision=_mixed_precision(precision), cpu=cpu)


def _mixed_precision(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def _cpu_only(precision: str) -> bool:
    if precision == "fp16" and not torch.cuda.is_available():
        raise TrainingError("precision fp16 needs a CUDA GPU; use --precision bf16 (or fp32) on CPU")
    return not torch.cuda.is_available()
