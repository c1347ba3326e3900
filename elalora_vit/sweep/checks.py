"""``vtab-sweep --dry-run``'s checks: for every task of the plan, is its data there and
sound, can its backbone be built with its weights, and does the input size fit, as
``train --dry-run`` checks them for one run. Each distinct backbone is built once."""

from __future__ import annotations

import json
from typing import Sequence

from ..core.errors import first_line
from ..data import resolve_task
from ..train.dry_run import check_run_splits
from ..vit import check_input_size, create_run_backbone, resolve_data_config
from .plan import SweepRun


def check_runs(runs: Sequence[SweepRun]) -> tuple[list[str], bool]:
    """Lines saying, per task (its first run's settings), whether data and weights are
    usable, and whether all are."""
    lines, ok, backbones = ["checks (data and weights, per task):"], True, {}
    seen = set()
    for run in runs:
        cfg = run.config
        key = (run.task, cfg.data.source, str(cfg.data.data_dir), cfg.data.train_split, cfg.data.eval_split)
        if key in seen:
            continue
        seen.add(key)
        problems, note = _check_task(run, backbones)
        ok = ok and not problems
        status = "PROBLEM" if problems else "ok"
        lines.append(f"  {status:<8} {run.task:<22}" + ("; ".join(problems) if problems else note))
    if not ok:
        lines.append("fix the problems above first (a missing task folder: elalora-vit prepare-vtab --tasks TASK "
                     "--data-dir DIR; missing weights: --set model.checkpoint=FILE)")
    return lines, ok


def _check_task(run: SweepRun, backbones: dict) -> tuple[list[str], str]:
    cfg, problems, note = run.config, [], ""
    try:
        task = resolve_task(cfg.data.task, cfg.data.source)
        sizes = check_run_splits(task, cfg)
        note = f"data: {sizes['train']} {cfg.data.train_split} / {sizes['eval']} {cfg.data.eval_split} images"
    except Exception as err:  # reported, not raised: the other tasks are still checked
        problems.append(f"data: {first_line(err)}")
        task = None
    model = _backbone(cfg, task, backbones)
    if isinstance(model, str):
        problems.append(f"weights: {model}")
    else:
        try:
            check_input_size(model, resolve_data_config(model, cfg.data).image_size, cfg.model.name)
            note += f"; weights: {cfg.model.name} ok"
        except Exception as err:
            problems.append(first_line(err))
    return problems, note


def _backbone(cfg, task, backbones: dict):
    """The backbone of ``cfg`` (built once per model, weights and kwargs), or the error
    text of building it."""
    key = json.dumps([cfg.model.name, cfg.model.checkpoint, cfg.model.pretrained, cfg.model.kwargs], sort_keys=True)
    if key not in backbones:
        try:
            backbones[key] = create_run_backbone(cfg.model, task.num_classes if task else 10)
        except Exception as err:
            backbones[key] = first_line(err)
    return backbones[key]
