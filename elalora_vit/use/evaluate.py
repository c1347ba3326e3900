"""Evaluate a finished run on a split: top-1 accuracy, written to ``eval-<split>.json``.

It scores the way training scored (same preprocessing, batch size and
precision), so evaluating a run on its own eval split reproduces the accuracy
in its ``result.json``, which is never touched.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from ..data import load_task_data
from ..data.cache import resolve_cache_dir
from ..data.datasets import loader_workers
from ..train.runtime import resolve_precision
from ..storage.files import atomic_write_json
from .rebuild import RunModel, load_run


def evaluate_run(
    run: RunModel | str | os.PathLike,
    *,
    split: str | None = None,
    source: str | None = None,
    data_dir: str | os.PathLike | None = None,
    tfds_dir: str | os.PathLike | None = None,
    num_workers: int | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Top-1 accuracy (%) of a finished run on ``split`` (default: the run's eval split).

    ``run`` is a run folder (loaded with its adapters merged: the base model's inference
    cost) or a :class:`RunModel` from :func:`load_run`. The data
    arguments default to the run's own (``config.yaml``). With ``write``, the
    result also goes to ``<run folder>/eval-<split>.json``.
    """
    run = run if isinstance(run, RunModel) else load_run(run, merge=True)
    cfg = run.config
    split = split or cfg.data.eval_split
    dataset = split_dataset(run, split, source=source, data_dir=data_dir, tfds_dir=tfds_dir)
    predictions, labels = run_predictions(run, dataset, num_workers=num_workers)
    correct = int((predictions == labels).sum())
    result = {
        "task": cfg.data.task,
        "method": cfg.method,
        "seed": cfg.seed,
        "split": split,
        "accuracy": round(100.0 * correct / max(len(labels), 1), 4),
        "correct": correct,
        "count": len(labels),
        "source": source or cfg.data.source,
        "run_dir": str(run.run_dir),
    }
    if write:
        atomic_write_json(Path(run.run_dir) / f"eval-{split}.json", result)
    return result


def split_dataset(run: RunModel, split: str, *, source=None, data_dir=None, tfds_dir=None) -> Dataset:
    """The split as a dataset of (float image, label), preprocessed as the run was trained."""
    cfg = run.config
    data = load_task_data(
        cfg.data.task,
        source=source or cfg.data.source,
        data_dir=data_dir or cfg.data.data_dir,
        tfds_dir=tfds_dir or cfg.data.tfds_dir,
        train_split=split,  # opened lazily and unused: only the eval split is read
        eval_split=split,
        image_size=run.image_size,
        interpolation=run.interpolation,
        mean=run.mean,
        std=run.std,
        cache_train=False,
        progress=False,
        cache_dir=resolve_cache_dir(cfg.data.cache, cfg.data.cache_dir),
    )
    return data.eval


@torch.no_grad()
def run_predictions(run: RunModel, dataset: Dataset, *, num_workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(predicted class (N,), label (N,)) for every item of ``dataset``, in order."""
    cfg = run.config
    loader = DataLoader(
        dataset,
        batch_size=max(64, cfg.optim.batch_size),  # training's evaluation batch size
        **loader_workers(dataset, cfg.data.num_workers if num_workers is None else num_workers),
    )
    device = next(run.model.parameters()).device
    predictions, labels = [], []
    for x, y in loader:
        with _autocast(cfg.precision, device):
            logits = run.model(x.to(device))
        predictions.append(logits.argmax(dim=-1).cpu())
        labels.append(y)
    if not labels:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(predictions), torch.cat(labels)


def _autocast(precision: str, device: torch.device):
    # Score in the precision the run trained and evaluated in (auto: as this machine runs it).
    precision = resolve_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)
