"""Where and how a run executes: the accelerator (devices, processes, precision), the
check that a step is finite on every process, evaluation, and the progress bar."""

from __future__ import annotations

import contextlib
import logging
import os

import torch
from torch.utils.data import DataLoader, Subset

from ..data.datasets import loader_workers
from ..data.transforms import device_batch
from ..config import TrainConfig
from .errors import TrainingError


def create_accelerator(precision: str):
    """A fresh Accelerator for this run: accelerate keeps its settings in a process-wide
    singleton, so a second run in the same process (a sweep, a test) must reset them."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = resolve_precision(precision)
    cpu = _cpu_only(precision)
    if not cpu:  # fp32 matmuls and convolutions on tensor cores (TF32): ~8x their fp32 rate
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    AcceleratorState._reset_state()  # keeps the distributed (process group) state
    return Accelerator(mixed_precision=_mixed_precision(precision), cpu=cpu)


def main_process_decides(value):
    """``value`` as the main process has it, on every process of a multi-process launch
    (``WORLD_SIZE`` > 1: torchrun, accelerate launch; the launch's process group is joined
    through accelerate, as the run joins it later); ``value`` itself in a single process.
    What only the main process may find out (whether it holds a run folder's lock, whether
    a run is finished) must be one decision for all, or the processes would part ways: one
    skipping a run while another trains it, each averaging gradients with the wrong run."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return value
    import torch.distributed as dist
    from accelerate import PartialState

    # The device choice must be the one create_accelerator makes (CPU exactly when there is
    # no CUDA GPU): a process group joined for another device leaves Accelerator(cpu=...)
    # seeing a single process.
    PartialState(cpu=not torch.cuda.is_available())
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def resolve_precision(precision: str) -> str:
    """``auto`` as this machine runs it: bf16 on a CUDA GPU that supports it, else fp32."""
    if precision != "auto":
        return precision
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"


def process_logger(logger: logging.Logger, accelerator) -> logging.Logger:
    """``logger`` on the main process; elsewhere a silent one, since every process of a
    distributed run sees the same events and would repeat the same warnings."""
    if accelerator.is_main_process:
        return logger
    quiet = logging.getLogger(f"{logger.name}.other_processes")
    quiet.disabled = True
    return quiet


def _mixed_precision(precision: str) -> str:
    return {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[precision]


def _cpu_only(precision: str) -> bool:
    if precision == "fp16" and not torch.cuda.is_available():
        raise TrainingError("precision fp16 needs a CUDA GPU; use --precision bf16 (or fp32) on CPU")
    return not torch.cuda.is_available()


def finite_on_every_process(loss, grad_norm, model, accelerator,
                            stop_requested: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Whether this step's loss and gradients are finite on every process: a 0-dim bool
    tensor on the device, computed and reduced there (nothing is read on the host); and,
    in a multi-process run, whether ``stop_requested`` (a stop signal) holds on some
    process, reduced in the same call (None in a single process, which needs no reduction).

    Processes see different batches: a bad batch gives one process a NaN loss while
    the others see a finite loss and the NaN gradients DDP averaged in. All must skip
    the step together, or their weights and rank decisions drift apart. Without
    clipping there is no gradient norm yet; it is computed here, so that a non-finite
    gradient behind a finite loss is caught too.
    """
    if grad_norm is None:
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
    bad = (~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))).float().reshape(())
    if accelerator.num_processes == 1:
        return bad == 0, None
    flags = torch.stack([bad, bad.new_full((), float(stop_requested))]).to(accelerator.device)
    failed, stopping = accelerator.reduce(flags, reduction="sum")
    return failed == 0, stopping > 0


@torch.no_grad()
def evaluate(model, dataset, cfg: TrainConfig, accelerator) -> float:
    """Top-1 accuracy (%) on ``dataset``, each process scoring its share, with the adapters
    merged for the evaluation (``merged_inference``: the base model's cost, no parameter
    changed; not under ``compile``, whose graph was traced for the adapter's own forward)."""
    from ..core import merged_inference

    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    batch_size = max(64, cfg.optim.batch_size)
    counts = torch.zeros(2, device=accelerator.device)
    merged = contextlib.nullcontext() if cfg.compile else merged_inference(model)
    with merged:
        for x, y in _eval_batches(dataset, rank, world, batch_size, cfg.data.num_workers, accelerator.device):
            with accelerator.autocast():
                logits = model(x)
            counts[0] += (logits.argmax(dim=-1) == y).sum()
            counts[1] += y.numel()
    counts = accelerator.reduce(counts, reduction="sum")
    model.train()
    return round(100.0 * float(counts[0]) / max(float(counts[1]), 1.0), 4)


def _eval_batches(dataset, rank: int, world: int, batch_size: int, workers: int, device):
    """This process's share of ``dataset`` in batches on ``device``: contiguous slices read and
    normalised on the device for a cached dataset (no decoding, no per-item work), a DataLoader
    with ``workers`` decoding processes otherwise."""
    if hasattr(dataset, "uint8_batch"):
        share = len(dataset) // world + (rank < len(dataset) % world)
        start = rank * (len(dataset) // world) + min(rank, len(dataset) % world)  # a contiguous block
        for first in range(start, start + share, batch_size):
            yield device_batch(dataset, torch.arange(first, min(first + batch_size, start + share)), device)
        return
    share = Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(share, batch_size=batch_size, **loader_workers(dataset, workers), persistent_workers=False)
    for x, y in loader:
        yield x.to(device), y.to(device)


def progress_bar(cfg: TrainConfig, accelerator, total: int, initial: int):
    """A tqdm bar over optimizer steps, on the main process only (``progress: false`` hides it)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=initial,
        desc=f"{cfg.data.task}/{cfg.method}",
        unit="step",
        disable=not (cfg.progress and accelerator.is_main_process),
        dynamic_ncols=True,
    )


def postfix(loss_sum, loss_count: int, last_eval: float | None, scheduler, rank: int | None) -> dict[str, str]:
    """The bar's live numbers: the epoch's mean loss so far, LR, last top-1 and total rank."""
    shown = {"loss": f"{float(loss_sum) / max(loss_count, 1):.3f}", "lr": f"{scheduler.get_last_lr()[0]:.2e}"}
    if last_eval is not None:
        shown["acc"] = f"{last_eval:.1f}"
    if rank is not None:
        shown["rank"] = str(rank)
    return shown
