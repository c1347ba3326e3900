"""What a run leaves for people and tools to read: config.yaml and metrics.jsonl while
it trains, then result.json, rank_history.json, the rank figures and the trained
adapters (or weights). Every file but the appended metrics is written atomically."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..core import find_adapters, save_adapters
from ..storage.files import atomic_write, atomic_write_json, atomic_write_text
from ..config import ADAPTER_METHODS, TrainConfig
from .heatmap import plot_rank_heatmap, rank_matrix
from .methods import final_rank_pattern, trainable_parameter_count
from .provenance import model_record, save_trained_weights
from .run_figures import write_run_figures
from .run_files import RunFiles
from .state import RunState


def start_outputs(files: RunFiles, cfg: TrainConfig, metrics: list[dict[str, Any]]) -> None:
    """Write the settings, and the metrics lines of the epochs the checkpoint holds: a
    resumed run drops lines of an epoch that ended after its last checkpoint."""
    write_metrics(files, metrics)
    atomic_write_text(files.config, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def write_metrics(files: RunFiles, metrics: list[dict[str, Any]]) -> None:
    atomic_write_text(files.metrics, "".join(json.dumps(m) + "\n" for m in metrics))


def append_jsonl(path: str | Path, record: Mapping[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def epoch_record(state: RunState, train_loss: float) -> dict[str, Any]:
    """The metrics line of the epoch ``state`` just finished (evaluation fields are added by the loop)."""
    return {
        "epoch": state.epoch,
        "step": state.step,
        "train_loss": train_loss,
        "lr": state.scheduler.get_last_lr()[0],
        "total_rank": state.current_rank,
        "skipped_steps": state.health.skipped_steps,
        "time_s": round(time.time() - state.started, 2),
        "steps_s": round(state.progress.train_s, 3),  # the epoch's steps, getting their batches included
        "data_s": round(state.progress.data_s, 3),  # getting the batches (reading, pinning, copying)
    }


def run_result(cfg: TrainConfig, files: RunFiles, state: RunState, accuracy: float) -> dict[str, Any]:
    """The run's summary, as ``train`` returns it and result.json holds it."""
    pattern = final_rank_pattern(state.unwrapped)
    health = state.health.summary()
    return {
        "task": cfg.data.task,
        "method": cfg.method,
        "seed": cfg.seed,
        "eval_split": cfg.data.eval_split,
        "accuracy": accuracy,
        "trainable_params": trainable_parameter_count(state.unwrapped),
        "total_rank": sum(pattern.values()) if pattern else None,
        "rank_pattern": pattern,
        "rounds": len(state.allocator.history) if state.allocator is not None else 0,
        "ranks_moved": health.get("ranks_moved_net", 0),  # net: a rank pruned and re-grown in one round is no move
        "ranks_moved_gross": health.get("ranks_moved", 0),
        "best_epoch": best_epoch(state.metrics),
        "steps": state.step,
        "epochs": cfg.optim.epochs,
        "skipped_steps": state.health.skipped_steps,
        "health": health,
        "model": cfg.model.name,
        "pretrained": bool(cfg.model.pretrained or cfg.model.checkpoint),
        "wall_time_s": round(time.time() - state.started, 2),
        "data_wait_share": data_wait_share(state.metrics),
        "output_dir": str(files.root),
    }


def write_outputs(files: RunFiles, cfg: TrainConfig, state: RunState, result: dict[str, Any]) -> None:
    """The trained adapters (or weights), the round history and heatmap, then result.json:
    last, since its presence marks the run finished."""
    model, method, allocator = state.unwrapped, state.method, state.allocator
    record = model_record(cfg, model.num_classes)
    if cfg.method in ADAPTER_METHODS:
        save_adapters(model, files.adapter, method.adapter_config, modules_to_save=method.head_names,
                      metadata=record, method=cfg.method)
    else:
        save_trained_weights(model, files.weights, cfg.method, method.head_names, record)
    if result["rank_pattern"]:  # the adapter methods
        history = [r.to_dict() for r in allocator.history] if allocator is not None else []
        atomic_write_json(files.history, history)
        label = f"{cfg.data.task} / {cfg.method}"
        title = final_ranks_title(label, model)
        initial_rank = method.adapter_config.rank if allocator is not None else None
        write_rank_heatmap(result["rank_pattern"], files.heatmap, title, initial_rank)
        if allocator is not None:  # ranks moved: how, and on which scores
            write_run_figures(files.rank_evolution, files.importance_scores, history, result["rank_pattern"],
                              method.adapter_config, allocator.total_steps, label)
    write_metrics(files, state.metrics)  # its last line now carries the final top-1
    atomic_write_json(files.result, result)


def data_wait_share(metrics: list[dict[str, Any]]) -> float | None:
    """The share of the training steps' time the loop spent getting batches (host time:
    under 1% means the data keeps up); None without timed epochs."""
    steps = sum(m.get("steps_s", 0.0) for m in metrics)
    return round(sum(m.get("data_s", 0.0) for m in metrics) / steps, 4) if steps > 0 else None


def best_epoch(metrics: list[dict[str, Any]]) -> int | None:
    """The (first) epoch of the highest evaluation top-1 (the final one included)."""
    scored = [m for m in metrics if m.get("eval_acc") is not None]
    return max(scored, key=lambda m: m["eval_acc"])["epoch"] if scored else None


def final_ranks_title(label: str, model) -> str:
    """The heatmap's title: ``"<label>: final ranks, total T of capacity C"``, T the active
    ranks of ``model``'s adapters and C the ranks their slots could hold."""
    adapters = find_adapters(model)
    total = sum(a.rank for a in adapters)
    capacity = sum(a.layer.capacity for a in adapters)
    return f"{label}: final ranks, total {total} of capacity {capacity}"


def write_rank_heatmap(pattern: Mapping[str, float], path: Path, title: str, initial_rank: float | None) -> Path | None:
    """:func:`plot_rank_heatmap` into ``path`` atomically; None (and no file) when
    ``pattern`` is not a ViT's."""
    if rank_matrix(pattern) is None:
        return None
    return atomic_write(path, lambda tmp: plot_rank_heatmap(pattern, tmp, title=title, initial_rank=initial_rank))
