"""Transfer learning at an equal budget: ElaLoRA against LoRA, AdaLoRA, full
fine-tuning and a linear probe, on real images, offline, on CPU.

    python benchmarks/transfer.py                  # the full run (~7 min on 2 shared CPU cores)
    python benchmarks/transfer.py --quick          # smoke run, seconds
    python benchmarks/transfer.py --json out.json  # also write every run and the summary
    python benchmarks/transfer.py --ablation       # more ElaLoRA variants (defaults ablation)
    python benchmarks/transfer.py --growth         # how fast each adapter form starts (seconds)
    python benchmarks/transfer.py --width 192      # a wider ViT (pre-training takes ~5 min)
    python benchmarks/transfer.py --family counting  # the structured family: count the dots

This module is the shared runner; the task families live in ``benchmarks/families/``
(``digits``: identity of digits 5-9, natural; ``counting``: how many dots, structured).
Both adapt the same backbone, pre-trained on digits 0-4.  The experiment (scikit-learn's
bundled handwritten digits, 8 x 8 grayscale; the digits family described):

1. **Pre-training.** A small timm ViT (``vit_tiny_patch16_224`` family: 8 x 8
   input, 2 x 2 patches, width 64, depth 4) learns digits 0-4 (all their
   images but a 10% hold-out, random 1-pixel shifts, 150 epochs).  The backbone is cached
   in ``--cache-dir``, so reruns skip this step.
2. **Adaptation** to the disjoint digits 5-9 with few labels (a VTAB-1k-like
   regime): 40 labelled images per class, 20 for training and 20 for
   validation; the test set is every other image of 5-9 (696).  The split is
   fixed; the seeds change the head/adapter initialisation and batch order.
3. **Methods**, all on the same backbone through the training code's own
   ``setup_method`` (so ours get exactly the defaults of ``TrainConfig``):
   linear probe, full fine-tuning, LoRA (ours and PEFT's), AdaLoRA (ours,
   1.5 r pruned to r) and ElaLoRA, adapting q, k, v, attn.proj, mlp.fc1 and
   mlp.fc2 of every block at the same rank; the head trains in full.  PEFT
   cannot split the fused qkv, so its qkv adapter gets rank 1.5 r (and alpha
   1.5 x alpha, the same scaling), which is exactly the parameter count of
   three rank-r adapters for q, k and v.
4. **Recipe**: the defaults of ``TrainConfig.optim`` (AdamW, weight decay 1e-4,
   cosine schedule with a 10% linear warm-up, gradient clipping at 1.0, no
   augmentation), with 50 epochs (``--epochs``) of batch 25 (200 steps).  The
   learning rate of every method is chosen from the same grid by mean
   validation accuracy over the seeds (ties: lower validation loss); the test
   accuracy of that learning rate is reported as mean +- std over the seeds.

Trainable parameters count only active ranks (a rank of an SVD adapter costs
d_in + d_out + 1, of LoRA d_in + d_out) and include the head.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elalora_vit.core import adapted_layers, orthogonal_regularization  # noqa: E402
from elalora_vit.sweep.stats import t_interval  # noqa: E402
from elalora_vit.config import TrainConfig, load_config  # noqa: E402
from elalora_vit.train.health import HealthMonitor  # noqa: E402
from elalora_vit.train.loop import lr_factor  # noqa: E402
from elalora_vit.train.methods import final_rank_pattern, setup_method, total_rank, trainable_parameter_count  # noqa: E402
from elalora_vit.vit import block_index_and_kind  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from families import Split, digits, family  # noqa: E402

PRETRAIN_LR = 2e-3

# The backbone: timm's ViT-Tiny family, shrunk to 8 x 8 digits.
FULL_MODEL = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=4, num_heads=4)
QUICK_MODEL = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=32, depth=1, num_heads=2)

# Methods: name -> (training method, adapter overrides).  "elalora (old defaults)" is
# ElaLoRA as first released (P, Q ~ N(0, 0.02^2), lambda at the adapter learning rate),
# as a user gets it now by setting those two values.
OLD_DEFAULTS = {"init": "gaussian", "init_std": 0.02, "lambda_lr_multiplier": 1.0}
# The defaults from issue 16 until issue 24's fourth round (orthonormal P and Q, lambda = 0 and
# 20x faster): ``--defaults previous`` applies them under every method's own overrides, so the
# tables made with them in BENCHMARKS.md rerun as they were made.
PREVIOUS_DEFAULTS = {"init": "orthogonal", "lambda_lr_multiplier": 20.0}
ADAPTER_DEFAULTS = {"current": {}, "previous": PREVIOUS_DEFAULTS}
METHODS: dict[str, tuple[str, dict]] = {
    "linear probe": ("linear", {}),
    "full fine-tuning": ("full", {}),
    "lora": ("lora", {}),
    "lora (PEFT)": ("peft-lora", {}),
    "adalora": ("adalora", {}),
    "elalora": ("elalora", {}),
    "elalora (old defaults)": ("elalora", OLD_DEFAULTS),
}
# Extra variants for --ablation: which part of the new defaults does the work, and
# what the reallocation itself adds.
ABLATION: dict[str, tuple[str, dict]] = {
    "elalora: orthogonal, lambda lr x1": ("elalora", {"init": "orthogonal", "lambda_lr_multiplier": 1.0}),
    "elalora: gaussian, lambda lr x20": ("elalora", {"init": "gaussian", "lambda_lr_multiplier": 20.0}),
    "elalora: orthogonal, lambda lr x10": ("elalora", {"init": "orthogonal", "lambda_lr_multiplier": 10.0}),
    "elalora: orthogonal, lambda lr x30": ("elalora", {"init": "orthogonal", "lambda_lr_multiplier": 30.0}),
    "elalora: orthogonal, lambda lr x40": ("elalora", {"init": "orthogonal", "lambda_lr_multiplier": 40.0}),
    "elalora: no orthogonal regulariser (gamma 0)": ("elalora", {"orth_reg_weight": 0.0}),
    "elalora: no reallocation (b=0)": ("elalora", {"b": 0}),
    "elalora: gamma 0.3": ("elalora", {"orth_reg_weight": 0.3}),
    "elalora: b 8": ("elalora", {"b": 8}),
    "elalora: k 4": ("elalora", {"k": 4}),
    "elalora: linear schedule": ("elalora", {"schedule": "linear"}),
    "elalora: beta1 = beta2 = 0.95": ("elalora", {"beta1": 0.95, "beta2": 0.95}),
    "adalora (old defaults)": ("adalora", OLD_DEFAULTS),
}


@dataclass
class Settings:
    model: dict
    rank: int = 8
    lrs: Sequence[float] = (1e-3, 3e-3, 1e-2)
    seeds: Sequence[int] = (0, 1, 2, 3, 4)
    epochs: int = 50
    batch_size: int = 25
    shots_train: int = 20
    shots_val: int = 20
    pretrain_epochs: int = 150
    methods: dict[str, tuple[str, dict]] = field(default_factory=lambda: dict(METHODS))
    family: str = "digits"
    adapter_defaults: dict = field(default_factory=dict)  # under every method's overrides (--defaults)

    @property
    def classes(self) -> int:
        return family(self.family).CLASSES


# ------------------------------------------------------------------------------ data
def task_data(family_name: str, shots_train: int, shots_val: int) -> dict[str, Split]:
    """The pre-training splits (digits 0-4) and the family's ``train`` / ``val`` / ``test``."""
    return {**digits.pretraining_splits(), **family(family_name).adaptation_splits(shots_train, shots_val)}


# -------------------------------------------------------------------------- backbone
def make_vit(model_kwargs: dict, num_classes: int) -> nn.Module:
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, **model_kwargs)


def pretrained_backbone(settings: Settings, data: dict[str, Split], cache_dir: Path, log) -> tuple[dict, dict]:
    """The backbone pre-trained on digits 0-4 (state dict without the head), and its facts; cached."""
    key = json.dumps({"model": settings.model, "epochs": settings.pretrain_epochs, "lr": PRETRAIN_LR, "v": 2}, sort_keys=True)
    path = cache_dir / f"transfer_backbone_{hashlib.sha1(key.encode()).hexdigest()[:12]}.pt"
    if path.is_file():
        saved = torch.load(path, weights_only=True)
        log(f"pre-trained backbone: cached {path}")
        return saved["state"], saved["info"]
    started = time.time()
    torch.manual_seed(1234)
    model = make_vit(settings.model, len(digits.PRETRAIN_CLASSES))
    train = data["pretrain"]
    batch = 64
    steps_per_epoch = math.ceil(len(train.y) / batch)
    total = steps_per_epoch * settings.pretrain_epochs
    opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=PRETRAIN_LR, total_steps=total, pct_start=0.1)
    generator = torch.Generator().manual_seed(1234)
    model.train()
    for _ in range(settings.pretrain_epochs):
        order = torch.randperm(len(train.y), generator=generator)
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            loss = F.cross_entropy(model(_shift(train.x[idx], generator)), train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    holdout = accuracy_and_loss(model, data["pretrain_holdout"])[0]
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    info = {"holdout_acc": holdout, "epochs": settings.pretrain_epochs, "images": len(train.y),
            "seconds": round(time.time() - started, 1), "file": str(path)}
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"state": state, "info": info}, tmp)
    tmp.replace(path)
    log(f"pre-trained backbone on digits 0-4 in {info['seconds']} s: hold-out accuracy {holdout:.1f}% -> {path}")
    return state, info


def _shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The batch translated by up to one pixel in each direction (edges replicated)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dy, dx = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[:, :, dy : dy + x.shape[2], dx : dx + x.shape[3]]


# ---------------------------------------------------------------------------- a run
@torch.no_grad()
def accuracy_and_loss(model: nn.Module, split: Split) -> tuple[float, float]:
    model.eval()
    logits = model(split.x)
    model.train()
    acc = 100.0 * float((logits.argmax(-1) == split.y).float().mean())
    return acc, float(F.cross_entropy(logits, split.y))


def run_config(method: str, overrides: dict, settings: Settings, lr: float, seed: int) -> TrainConfig:
    """The run's TrainConfig: the defaults, the method, the rank and the benchmark's recipe."""
    values = {
        "method": method if method != "peft-lora" else "lora",
        "seed": seed,
        "adapter.rank": settings.rank,
        "optim.lr": lr,
        "optim.epochs": settings.epochs,
        "optim.batch_size": settings.batch_size,
        "optim.warmup_epochs": 0.1 * settings.epochs,  # the default 10 of 100 epochs
        "progress": False,
    }
    values.update({f"adapter.{k}": v for k, v in {**settings.adapter_defaults, **overrides}.items()})
    return load_config(None, values)


def train_one(kind: str, overrides: dict, settings: Settings, lr: float, seed: int,
              backbone: dict, data: dict[str, Split]) -> dict[str, Any]:
    """Adapt the pre-trained backbone to the family's task with one method, learning rate and seed."""
    started = time.time()
    cfg = run_config(kind, overrides, settings, lr, seed)
    train = data["train"]
    steps_per_epoch = math.ceil(len(train.y) / cfg.optim.batch_size)
    total_steps = steps_per_epoch * cfg.optim.epochs
    torch.manual_seed(seed)
    model = make_vit(settings.model, settings.classes)
    missing, _ = model.load_state_dict(backbone, strict=False)
    assert all(k.startswith("head.") for k in missing), missing
    if kind == "peft-lora":
        groups, allocator, adapter_config = _peft_lora(model, cfg), None, None
    else:
        method = setup_method(model, cfg, total_steps)
        groups, allocator = method.param_groups, method.allocator
        adapter_config = method.adapter_config if method.uses_orth_reg else None
    optimizer = torch.optim.AdamW(groups, lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg, steps_per_epoch, total_steps))
    health = HealthMonitor(allocator, _quiet_logger())
    params = [p for g in groups for p in g["params"]]
    generator = torch.Generator().manual_seed(seed)
    step = 0
    model.train()
    for _ in range(cfg.optim.epochs):
        order = torch.randperm(len(train.y), generator=generator)
        for s in range(steps_per_epoch):
            idx = order[s * cfg.optim.batch_size : (s + 1) * cfg.optim.batch_size]
            loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
            if adapter_config is not None:
                loss = loss + adapter_config.orth_reg_weight * orthogonal_regularization(model)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            if allocator is not None:
                record = allocator.step(optimizer)
                if record is not None:
                    health.after_round(record, model)
            optimizer.zero_grad(set_to_none=True)
            step += 1
            health.after_step(step, float(loss.detach()), False)
    val_acc, val_loss = accuracy_and_loss(model, data["val"])
    test_acc, _ = accuracy_and_loss(model, data["test"])
    trainable = trainable_parameter_count(model) if kind != "peft-lora" else _count_trainable(model)
    return {
        "val_acc": round(val_acc, 3),
        "val_loss": round(val_loss, 5),
        "test_acc": round(test_acc, 3),
        "trainable_params": trainable,
        "total_rank": total_rank(model) if kind != "peft-lora" else None,
        "rank_by_kind": _rank_by_kind(model) if allocator is not None else None,
        "health": health.summary() if allocator is not None else None,
        "steps": step,
        "seconds": round(time.time() - started, 2),
    }


def _peft_lora(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """PEFT's LoRA on the same layers; qkv at rank 1.5 r (= q, k, v at rank r each, in parameters)."""
    from peft import LoraConfig, get_peft_model

    r, alpha = cfg.adapter.rank, cfg.adapter.alpha
    qkv_rank = 3 * r // 2  # 1.5 r (d + 3 d) = 3 r (d + d): the parameters of q, k, v at rank r
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=0.0,
        target_modules=r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)",
        rank_pattern={r"attn\.qkv": qkv_rank},
        alpha_pattern={r"attn\.qkv": alpha * qkv_rank / r},
        modules_to_save=["head"],
    )
    peft_model = get_peft_model(model, config)
    adapter, other = [], []
    for name, p in peft_model.named_parameters():
        if p.requires_grad:
            (adapter if ".lora_" in name else other).append(p)
    lr = cfg.optim.lr
    return [{"name": "other", "params": other, "lr": lr},
            {"name": "adapter", "params": adapter, "lr": lr * cfg.adapter.lr_multiplier}]


def _rank_by_kind(model: nn.Module) -> dict[str, float]:
    """Mean final rank of the q, k, v, proj, fc1 and fc2 adapters: where the rank went."""
    ranks: dict[str, list[int]] = {}
    for name, r in final_rank_pattern(model).items():
        _, kind = block_index_and_kind(name)
        ranks.setdefault(kind, []).append(r)
    return {kind: round(statistics.mean(rs), 2) for kind, rs in ranks.items()}


def _count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _quiet_logger() -> logging.Logger:
    # Health warnings are summarised per run in the JSON, not printed for every run.
    logger = logging.getLogger("benchmarks.transfer.health")
    logger.propagate = False
    logger.setLevel(logging.ERROR)
    return logger


# ------------------------------------------------------------------------ update growth
GROWTH_VARIANTS: dict[str, tuple[str, dict]] = {
    "lora": ("lora", {}),
    "elalora, old defaults (gaussian, lambda lr x1)": ("elalora", OLD_DEFAULTS),
    "elalora, orthogonal, lambda lr x1": ("elalora", {"init": "orthogonal", "lambda_lr_multiplier": 1.0}),
    "elalora, defaults (orthogonal, lambda lr x20)": ("elalora", {}),
}


def update_growth(settings: Settings, backbone: dict, data: dict[str, Split], lr: float = 1e-3,
                  steps: Sequence[int] = (1, 10, 30, 100)) -> dict[str, dict[int, float]]:
    """||delta W||_F over all adapters after t steps at a constant ``lr`` (no warm-up, no round):
    how fast each parameterisation starts to change the model."""
    growth = {}
    for name, (kind, overrides) in GROWTH_VARIANTS.items():
        cfg = run_config(kind, {**overrides, "warmup": max(steps) + 1}, settings, lr, seed=0)
        torch.manual_seed(0)
        model = make_vit(settings.model, settings.classes)
        model.load_state_dict(backbone, strict=False)
        method = setup_method(model, cfg, total_steps=2 * max(steps) + 2)
        optimizer = torch.optim.AdamW(method.param_groups, lr=lr, weight_decay=cfg.optim.weight_decay)
        generator = torch.Generator().manual_seed(0)
        growth[name] = {}
        for t in range(1, max(steps) + 1):
            idx = torch.randint(0, len(data["train"].y), (settings.batch_size,), generator=generator)
            loss = F.cross_entropy(model(data["train"].x[idx]), data["train"].y[idx])
            if method.uses_orth_reg:
                loss = loss + method.adapter_config.orth_reg_weight * orthogonal_regularization(model)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if t in steps:
                with torch.no_grad():
                    norm = math.sqrt(sum(float(layer.delta_weight().pow(2).sum()) for _, layer in adapted_layers(model)))
                growth[name][t] = round(norm, 4)
    return growth


def width_probe(widths: Sequence[int] = (64, 256, 768), multipliers: Sequence[float] = (1.0, 20.0),
                rank: int = 8, lr: float = 1e-3, steps: int = 30) -> dict:
    """One d x d Linear learning a random rank-``rank`` update (MSE, Adam, ``steps`` steps):
    ||delta W||_F of LoRA over that of the SVD form (orthogonal init) per width and lambda lr multiplier."""
    from elalora_vit.core import ElaLoRAConfig, adapter_param_groups, patch_model

    ratios = {}
    for d in widths:
        norms = {}
        for method, multiplier in [("lora", 1.0)] + [("elalora", m) for m in multipliers]:
            torch.manual_seed(0)
            model = nn.Sequential(nn.Linear(d, d))
            target = torch.linalg.qr(torch.randn(d, rank))[0] @ torch.linalg.qr(torch.randn(d, rank))[0].T
            config = ElaLoRAConfig(rank=rank, alpha=2.0 * rank, init="orthogonal", lambda_lr_multiplier=multiplier)
            (adapter,) = patch_model(model, ["0"], config, method=method)
            optimizer = torch.optim.Adam(adapter_param_groups(model, lr, config))
            for _ in range(steps):
                x = torch.randn(64, d)
                loss = (model(x) - adapter.layer.base_layer(x) - x @ target.T).pow(2).mean()
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            norms[method, multiplier] = float(adapter.layer.delta_weight().detach().norm())
        ratios[d] = {f"x{m:g}": round(norms["lora", 1.0] / norms["elalora", m], 2) for m in multipliers}
    return ratios


# ---------------------------------------------------------------------------- summary
def summarise(runs: list[dict], settings: Settings) -> list[dict]:
    """Per method: the learning rate with the best mean validation accuracy, and its test accuracy."""
    rows = []
    for name in dict.fromkeys(r["method"] for r in runs):
        by_lr = {}
        for lr in settings.lrs:
            chosen = [r for r in runs if r["method"] == name and r["lr"] == lr]
            if chosen:
                by_lr[lr] = chosen
        best_lr = max(
            by_lr,
            key=lambda lr: (statistics.mean(r["val_acc"] for r in by_lr[lr]),
                            -statistics.mean(r["val_loss"] for r in by_lr[lr])),
        )
        best = by_lr[best_lr]
        tests = [r["test_acc"] for r in best]
        rows.append({
            "method": name,
            "rank": settings.rank if best[0]["kind"] in ("elalora", "lora", "peft-lora", "adalora") else None,
            "trainable_params": round(statistics.mean(r["trainable_params"] for r in best)),  # ElaLoRA's varies
            "lr": best_lr,
            "lr_at_grid_edge": len(by_lr) > 1 and best_lr in (min(by_lr), max(by_lr)),
            "val_acc_mean": round(statistics.mean(r["val_acc"] for r in best), 2),
            "test_acc_mean": round(statistics.mean(tests), 2),
            "test_acc_std": round(statistics.stdev(tests), 2) if len(tests) > 1 else 0.0,
            "test_acc_per_seed": tests,
            "test_acc_by_lr": {str(lr): round(statistics.mean(r["test_acc"] for r in rs), 2) for lr, rs in by_lr.items()},
            "val_acc_by_lr": {str(lr): round(statistics.mean(r["val_acc"] for r in rs), 2) for lr, rs in by_lr.items()},
            "seconds_per_run": round(statistics.mean(r["seconds"] for r in best), 1),
        })
    return rows


def paired_difference(rows: list[dict], a: str, b: str) -> dict | None:
    """Test accuracy of ``a`` minus ``b`` seed by seed (each at its own chosen learning rate)."""
    ra = next((r for r in rows if r["method"] == a), None)
    rb = next((r for r in rows if r["method"] == b), None)
    if ra is None or rb is None:
        return None
    diffs = [x - y for x, y in zip(ra["test_acc_per_seed"], rb["test_acc_per_seed"])]
    return {"a": a, "b": b, "per_seed": [round(d, 2) for d in diffs], **_paired_stats(diffs)}


def _paired_stats(diffs: Sequence[float]) -> dict[str, Any]:
    """Mean and std of paired differences, and the 95% t-interval of the mean (the one
    ``vtab-report`` gives; None below two seeds): beyond the seeds' noise when it excludes 0."""
    interval = t_interval(diffs)
    return {
        "mean": round(interval.mean, 2),
        "std": round(statistics.stdev(diffs), 2) if len(diffs) > 1 else 0.0,
        "ci95": None if interval.low is None else [round(interval.low, 2), round(interval.high, 2)],
        "n": interval.n,
    }


def _paired_text(d: dict) -> str:
    """``+1.20 ± 2.00 [-0.30, +2.70]``: mean ± std over seeds, then the 95% interval of the mean."""
    ci = "" if d["ci95"] is None else f" [{d['ci95'][0]:+.2f}, {d['ci95'][1]:+.2f}]"
    return f"{d['mean']:+.2f} ± {d['std']:.2f}{ci}"


def paired_at_each_lr(runs: list[dict], a: str, b: str) -> dict | None:
    """Test accuracy of ``a`` minus ``b`` at each learning rate of the grid, paired by seed."""
    by_lr = {}
    for lr in sorted({r["lr"] for r in runs}):
        ta = {r["seed"]: r["test_acc"] for r in runs if r["method"] == a and r["lr"] == lr}
        tb = {r["seed"]: r["test_acc"] for r in runs if r["method"] == b and r["lr"] == lr}
        diffs = [ta[s] - tb[s] for s in ta if s in tb]
        if diffs:
            by_lr[str(lr)] = _paired_stats(diffs)
    return {"a": a, "b": b, "by_lr": by_lr} if by_lr else None


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| method | rank | trainable params | LR (val-chosen) | val acc | test acc (mean ± std) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        rank = "-" if r["rank"] is None else str(r["rank"])
        edge = " (grid edge)" if r.get("lr_at_grid_edge") else ""
        lines.append(
            f"| {r['method']} | {rank} | {r['trainable_params']:,} | {r['lr']:g}{edge} | {r['val_acc_mean']:.1f} | "
            f"{r['test_acc_mean']:.2f} ± {r['test_acc_std']:.2f} |"
        )
    return "\n".join(lines)


def summarise_run_files(paths: Sequence[str], a: str = "elalora", b: str = "lora") -> str:
    """Markdown: per ``<json>.runs.jsonl`` file (one width and rank each), ``a`` and ``b`` at their
    val-chosen LR, and ``a - b`` paired by seed at those LRs and at every LR of the grid.  Only
    seeds with every method and LR are used, so a run stopped by a time limit is summarised fairly.
    Differences read ``mean ± std [95% interval of the mean]``."""
    lines = ["| runs | seeds | method | LR (val-chosen) | val acc | test acc | val-chosen: "
             f"{a} − {b}, paired | same LR: {a} − {b}, paired (mean ± std [95% interval]) |",
             "|---|---:|---|---:|---:|---:|---:|---|"]
    for path in paths:
        runs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
        lrs = sorted({r["lr"] for r in runs})
        methods = [m for m in (a, b) if any(r["method"] == m for r in runs)]
        cells = {(r["method"], r["lr"], r["seed"]) for r in runs}
        seeds = sorted(s for s in {r["seed"] for r in runs}
                       if all((m, lr, s) in cells for m in methods for lr in lrs))
        runs = [r for r in runs if r["seed"] in seeds]
        if not seeds:
            continue
        rows = summarise(runs, Settings(model={}, lrs=tuple(lrs)))
        chosen = paired_difference(rows, a, b)
        same = paired_at_each_lr(runs, a, b)
        same_text = "; ".join(f"{float(lr):g}: {_paired_text(v)}" for lr, v in same["by_lr"].items())
        for row in rows:
            edge = " (edge)" if row["lr_at_grid_edge"] else ""
            lines.append(
                f"| {Path(path).name.split('.')[0]} | {len(seeds)} | {row['method']} | {row['lr']:g}{edge} | "
                f"{row['val_acc_mean']:.1f} | {row['test_acc_mean']:.2f} ± {row['test_acc_std']:.2f} | "
                + (f"{_paired_text(chosen)} | {same_text} |" if row["method"] == a else " | |")
            )
    return "\n".join(lines)


# ---------------------------------------------------------------------------- main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: a tiny model, one seed, one learning rate, few epochs")
    parser.add_argument("--ablation", action="store_true", help="also run the ElaLoRA ablation variants")
    parser.add_argument("--growth", action="store_true",
                        help="only measure how fast each adapter form changes the model (||delta W|| after t steps)")
    parser.add_argument("--methods", nargs="+", help=f"method names (default: all of {list(METHODS)})")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--lrs", nargs="+", type=float, help="the learning-rate grid, the same for every method")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--rank", type=int)
    parser.add_argument("--family", choices=("digits", "counting"), default="digits",
                        help="the adaptation task: digits 5-9 (natural, the default) or counting dots (structured); "
                             "both start from the backbone pre-trained on digits 0-4")
    parser.add_argument("--width", type=int, help="embedding width of the ViT (default 64; heads of width 64)")
    parser.add_argument("--shots-val", type=int, help="validation images per class (default 20; at most ~130)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "elalora-vit-transfer"),
                        help="where the pre-trained backbone is cached")
    parser.add_argument("--json", help="write every run and the summary to this file")
    parser.add_argument("--summarise", nargs="+", metavar="RUNS_JSONL",
                        help="only summarise <json>.runs.jsonl files of earlier runs (elalora vs lora) as markdown")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    add_defaults_argument(parser)
    return parser.parse_args(argv)


def add_defaults_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--defaults", choices=tuple(ADAPTER_DEFAULTS), default="current",
                        help="the adapter defaults every method starts from: current (the package's) or previous "
                             f"({PREVIOUS_DEFAULTS}, before issue 24's fourth round: reruns the tables made with them)")


def build_settings(args: argparse.Namespace) -> Settings:
    if args.quick:
        settings = Settings(model=dict(QUICK_MODEL), rank=2, lrs=(1e-3,), seeds=(0,), epochs=3,
                            batch_size=50, pretrain_epochs=2)
    else:
        settings = Settings(model=dict(FULL_MODEL))
    methods = dict(METHODS)
    if args.ablation:
        methods.update(ABLATION)
    if args.methods:
        unknown = [m for m in args.methods if m not in methods]
        if unknown:
            raise SystemExit(f"unknown method(s) {unknown}; choose from {list(methods)}")
        methods = {m: methods[m] for m in args.methods}
    settings.methods = methods
    settings.family = args.family
    settings.adapter_defaults = dict(ADAPTER_DEFAULTS[args.defaults])
    for name in ("seeds", "lrs"):
        if getattr(args, name):
            setattr(settings, name, tuple(getattr(args, name)))
    for name in ("epochs", "rank", "shots_val"):
        if getattr(args, name):
            setattr(settings, name, getattr(args, name))
    if args.width:
        settings.model.update(embed_dim=args.width, num_heads=max(1, args.width // 64))
    return settings


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.summarise:
        table = summarise_run_files(args.summarise)
        print(table)
        return {"table": table}
    torch.set_num_threads(args.threads)
    settings = build_settings(args)
    started = time.time()
    data = task_data(settings.family, settings.shots_train, settings.shots_val)
    backbone, pretrain = pretrained_backbone(settings, data, Path(args.cache_dir), print)
    if args.growth:
        growth = update_growth(settings, backbone, data)
        for name, norms in growth.items():
            print(f"  {name:<48}" + "  ".join(f"t={t}: {n:<7.3g}" for t, n in norms.items()))
        ratios = width_probe()
        print("  one Linear, 30 steps: ||dW|| of LoRA / SVD form, by width and lambda lr multiplier:", ratios)
        if args.json:
            Path(args.json).write_text(json.dumps({"growth": growth, "width_ratios": ratios, "machine": _machine()}, indent=2))
        return {"growth": growth, "width_ratios": ratios}
    print(f"adaptation: {family(settings.family).DESCRIPTION}, {len(data['train'].y)} train / {len(data['val'].y)} val / "
          f"{len(data['test'].y)} test images; rank {settings.rank}; lr grid {list(settings.lrs)}; "
          f"seeds {list(settings.seeds)}; {settings.epochs} epochs of batch {settings.batch_size}")
    runs = []
    partial = Path(args.json).with_suffix(".runs.jsonl") if args.json else None
    # Seeds outermost: a run stopped by a time limit still holds whole seeds of every method and LR.
    for seed in settings.seeds:
        for lr in settings.lrs:
            for name, (kind, overrides) in settings.methods.items():
                result = train_one(kind, overrides, settings, lr, seed, backbone, data)
                runs.append({"method": name, "kind": kind, "overrides": overrides, "lr": lr, "seed": seed, **result})
                print(f"  {name:<36} lr {lr:<7g} seed {seed}: val {result['val_acc']:5.1f}  "
                      f"test {result['test_acc']:5.2f}  ({result['seconds']:.1f} s)", flush=True)
                if partial is not None:
                    with open(partial, "a") as f:
                        f.write(json.dumps(runs[-1]) + "\n")
    rows = summarise(runs, settings)
    paired = [d for d in (paired_difference(rows, "elalora", "lora"),
                          paired_difference(rows, "elalora", "elalora (old defaults)")) if d]
    same_lr = [d for d in (paired_at_each_lr(runs, "elalora", "lora"),
                           paired_at_each_lr(runs, "elalora (old defaults)", "lora")) if d]
    result = {
        "settings": {
            "model": settings.model, "rank": settings.rank, "lrs": list(settings.lrs), "seeds": list(settings.seeds),
            "epochs": settings.epochs, "batch_size": settings.batch_size, "shots_train": settings.shots_train,
            "shots_val": settings.shots_val, "quick": args.quick, "family": settings.family,
            "defaults": TrainConfig().adapter.__dict__,
        },
        "machine": _machine(),
        "pretrain": pretrain,
        "summary": rows,
        "paired": paired,
        "paired_at_each_lr": same_lr,
        "runs": runs,
        "seconds": round(time.time() - started, 1),
    }
    print()
    print(markdown_table(rows))
    for d in paired:
        print(f"{d['a']} - {d['b']} (test, each at its val-chosen lr, paired by seed; mean ± std [95% interval]): "
              f"{_paired_text(d)}  {d['per_seed']}")
    for d in same_lr:
        cells = ", ".join(f"lr {lr}: {_paired_text(v)}" for lr, v in d["by_lr"].items())
        print(f"{d['a']} - {d['b']} (test, same lr, paired by seed): {cells}")
    print(f"\ntotal {result['seconds']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


def _machine() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _bench import machine_info

    return machine_info("cpu")


if __name__ == "__main__":
    main()
