"""Shared helpers of the benchmark scripts: models, variants, interleaved timing, tables.

Every benchmark compares variants *in one process*, alternating between them
round after round, so that a load spike on a shared machine hits every variant
alike.  A variant's time is the median over rounds; a ratio is the median over
rounds of the paired ratio (variant / reference within the same round), which is
far less sensitive to drift than the ratio of two medians.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# The four Linear layers of every ViT block, by full name (never by suffix: that
# would also catch patch_embed.proj).
VIT_TARGETS = ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"]
QKV_SPLIT = {"attn.qkv": ["q", "k", "v"]}
# The same layers for PEFT, whose string targets are matched with re.fullmatch on
# the full module name: patch_embed.proj does not match.
PEFT_TARGET_REGEX = r"blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"

NUM_CLASSES = 10
# A schedule that never reaches an adjustment round during a benchmark, so that
# allocator.step() measures the per-step importance update only (rounds are
# measured on their own by allocator_cost.py).
NO_ROUND_STEPS = 10**6


def setup_torch(threads: int = 2) -> None:
    torch.set_num_threads(threads)


def add_timing_args(parser) -> None:
    """--threads, --clock and --robust, shared by every script."""
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall (default), cpu (CPU time of the process) or thread (CPU time of the "
                             "calling thread)")
    parser.add_argument("--robust", action="store_true",
                        help="--threads 1 --clock thread: the CPU time of the only torch thread, which "
                             "other processes on a loaded machine do not inflate (wall time at 2 threads "
                             "they inflate 2-10x, unevenly)")


def apply_timing_args(args) -> None:
    if args.robust:
        args.threads, args.clock = 1, "thread"
    warn_if_loaded(args.threads, args.clock)


def warn_if_loaded(threads: int, clock: str) -> None:
    """Wall time with several threads on a machine other jobs keep busy is not a measurement."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return
    if clock == "wall" and threads > 1 and load > (os.cpu_count() or 1) - 0.5:
        log(f"warning: load average {load:.1f} on {os.cpu_count()} cores: wall-clock times at {threads} "
            "threads will be inflated and noisy (OpenMP threads wait for each other); consider --robust")


def machine_info(device: str = "cpu") -> dict:
    info = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    try:
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# ----------------------------------------------------------------------- models
def make_vit(model_name: str, img_size: int, seed: int = 0, device: str = "cpu") -> nn.Module:
    """A randomly initialised timm ViT (same weights for the same seed)."""
    import timm

    torch.manual_seed(seed)
    model = timm.create_model(model_name, pretrained=False, img_size=img_size, num_classes=NUM_CLASSES)
    return model.to(device)


def elalora_config(rank: int, **overrides):
    from elalora_vit import ElaLoRAConfig

    values = dict(rank=rank, alpha=2.0 * rank, warmup_steps=NO_ROUND_STEPS // 2, stabilize_steps=0,
                  adjust_interval=150, orth_reg_weight=0.1)
    values.update(overrides)
    return ElaLoRAConfig(**values)


@dataclass
class Variant:
    """One way of training the same backbone: the model and what one step does."""

    name: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_extra: Callable[[], torch.Tensor] | None = None  # added to the loss (a regulariser)
    after_step: Callable[[], None] | None = None  # run after optimizer.step() (an allocator)
    state_tensors: Callable[[], Iterable[torch.Tensor]] = lambda: ()  # allocator state, for memory
    info: dict = field(default_factory=dict)
    autocast_dtype: torch.dtype | None = None  # e.g. torch.bfloat16: mixed precision, as the trainer's bf16

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, dtype=self.autocast_dtype or torch.float32, enabled=self.autocast_dtype is not None):
            loss = F.cross_entropy(self.model(x), y)
            if self.loss_extra is not None:
                loss = loss + self.loss_extra()
        return loss

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.loss(x, y).backward()
        self.optimizer.step()
        if self.after_step is not None:
            self.after_step()
        self.optimizer.zero_grad(set_to_none=True)


def _finish(model: nn.Module) -> tuple[nn.Module, torch.optim.Optimizer]:
    model.head.requires_grad_(True)  # every variant trains the classifier head too
    params = [p for p in model.parameters() if p.requires_grad]
    return model, torch.optim.AdamW(params, lr=1e-4)


def build_variant(kind: str, model_name: str, img_size: int, rank: int, device: str = "cpu") -> Variant:
    """Build one variant on a fresh copy of the backbone.

    kinds: ``elalora`` (ours, qkv split, + RankAllocator.step), ``elalora+orth`` (the
    same + gamma * orthogonal_regularization), ``elalora-noalloc`` (the same
    adapters, no allocator), ``elalora-unsplit`` (qkv as one adapter, PEFT's
    structure, + allocator), ``lora`` (our fixed-rank LoRA, qkv split),
    ``peft-lora`` and ``peft-adalora`` (+ update_and_allocate).
    """
    from elalora_vit import RankAllocator, orthogonal_regularization, patch_model

    model = make_vit(model_name, img_size, device=device)
    if kind.startswith("elalora"):
        cfg = elalora_config(rank)
        split = None if kind == "elalora-unsplit" else QKV_SPLIT
        patch_model(model, VIT_TARGETS, cfg, split=split)
        model, opt = _finish(model)
        variant = Variant(kind, model, opt, info={"capacity": cfg.max_rank, "active_rank": rank})
        if kind != "elalora-noalloc":
            alloc = RankAllocator(model, cfg, total_steps=NO_ROUND_STEPS)
            variant.after_step = lambda: alloc.step(opt)
            variant.state_tensors = lambda: [*alloc.tracker.ibar, *alloc.tracker.ubar]
            variant.info["allocator"] = alloc
        if kind == "elalora+orth":
            variant.loss_extra = lambda: cfg.orth_reg_weight * orthogonal_regularization(model)
        return variant
    if kind == "lora":
        patch_model(model, VIT_TARGETS, elalora_config(rank), split=QKV_SPLIT, method="lora")
        model, opt = _finish(model)
        return Variant(kind, model, opt)
    if kind == "peft-lora":
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=PEFT_TARGET_REGEX)
        peft_model = get_peft_model(model, config)
        model, opt = _finish(peft_model.base_model.model)
        return Variant(kind, model, opt)
    if kind == "peft-adalora":
        from peft import AdaLoraConfig, get_peft_model

        config = AdaLoraConfig(
            init_r=rank, target_r=max(rank // 2, 1), lora_alpha=2 * rank, lora_dropout=0.0,
            target_modules=PEFT_TARGET_REGEX, tinit=NO_ROUND_STEPS // 2, tfinal=0, deltaT=150,
            total_step=NO_ROUND_STEPS, beta1=0.85, beta2=0.85,
        )
        peft_model = get_peft_model(model, config)
        tuner = peft_model.base_model
        model, opt = _finish(tuner.model)
        step = [0]

        def update_and_allocate():
            step[0] += 1
            tuner.update_and_allocate(step[0])

        ra = tuner.rankallocator
        return Variant(
            kind, model, opt, after_step=update_and_allocate,
            state_tensors=lambda: [*ra.ipt.values(), *ra.exp_avg_ipt.values(), *ra.exp_avg_unc.values()],
        )
    raise ValueError(f"unknown variant {kind!r}")


def adapted_fraction(model: nn.Module) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "total_params": total}


# ----------------------------------------------------------------------- timing
def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time, "thread": time.thread_time}


def interleaved_times(
    fns: dict[str, Callable[[], None]],
    rounds: int,
    inner: int = 1,
    warmup: int = 1,
    device: str = "cpu",
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Seconds per call of every function, one entry per round.

    Each round calls every function ``inner`` times, in an order rotated from
    round to round so that no variant always runs first or after the same one.
    ``clock`` is "wall" (time.perf_counter) or "cpu" (time.process_time: CPU
    seconds of all threads of this process, blind to the time the process
    waits for a core on a shared machine; CPU only) or "thread"
    (time.thread_time, the calling thread only: exact with one torch thread).
    """
    timer = CLOCKS[clock]
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    synchronize(device)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = timer()
            for _ in range(inner):
                fns[name]()
            synchronize(device)
            times[name].append((timer() - start) / inner)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def paired_ratio(times: dict[str, list[float]], name: str, reference: str) -> float:
    """Median over rounds of time[name] / time[reference] in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def ratio_spread(times: dict[str, list[float]], name: str, reference: str) -> tuple[float, float]:
    """Quartiles of the paired ratios (how noisy the ratio is)."""
    ratios = sorted(a / b for a, b in zip(times[name], times[reference]))
    if len(ratios) < 4:
        return ratios[0], ratios[-1]
    q = statistics.quantiles(ratios, n=4)
    return q[0], q[2]


# ------------------------------------------------------------------------ output
def format_table(rows: list[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """rows of dicts; columns as (key, header, format spec)."""
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append([_fmt(row.get(key), spec) for key, _, spec in columns])
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells[1:]:
        lines.append("| " + " | ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) + " |")
    return "\n".join(lines)


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "-"
    return format(value, spec) if spec else str(value)


NOT_JUDGED = "not judged (--quick: a smoke run, too small and short to measure a target)"


def verdict(value: float, limit: float, judged: bool = True) -> str:
    """``met`` / ``MISSED``; a smoke run (``judged=False``) measures too little to say."""
    if not judged:
        return NOT_JUDGED
    return "met" if value <= limit else "MISSED"


def write_json(path: str | os.PathLike | None, result: dict) -> None:
    if not path:
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2, default=_jsonable) + "\n")


def _jsonable(obj):
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return str(obj)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
