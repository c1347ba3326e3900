"""One process of a multi-process training run, for tests/reliability/test_distributed.py.

Launched as ``torchrun --standalone --nproc_per_node 2 tests/reliability/dist_worker.py
DUMP_DIR [--nan-at STEP --nan-on RANK] [--nan-loss-at STEP --nan-loss-on RANK]
[--skew-scores-on RANK] -- <elalora-vit train arguments>``: it runs the real command
line, and records, on every process, what every round decided and the adapter tensors
right after it, every allocator step (was it skipped, were the adapter gradients
finite), the process's own scores at every round, then the final allocator state; each
process writes them to ``DUMP_DIR/process<rank>.pt`` for the test to compare.

The faults, each on one process only:
- ``--nan-at``: a NaN batch (NaN loss and, through DDP, NaN gradients everywhere);
- ``--nan-loss-at``: a NaN loss whose gradients stay finite (a NaN added as a constant),
  so only the cross-process finite check can make the other process skip too;
- ``--skew-scores-on``: the process's importance scores are negated, so without the
  broadcast of rank 0's scores the processes would decide differently;
- ``--signal-at``: the process sends itself SIGTERM before that step, as a scheduler
  stopping one process would, so only the loop's reduction of stop flags tells the other.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from elalora_vit.core import adapted_layers

snapshots: dict = {"rounds": [], "final": None, "steps": [], "local_scores": []}


def adapter_tensors(model) -> dict[str, torch.Tensor]:
    return {
        f"{name}.{attr}": getattr(layer, attr).detach().clone()
        for name, layer in adapted_layers(model)
        for attr in ("lora_A", "lora_theta", "lora_B", "rank_mask", "lambda_scale")
    }


def install_core_faults(nan_loss_at: int | None, nan_loss_on: int | None, skew_scores_on: int | None) -> None:
    """Faults and records placed in torch and the core only, not in the training loop."""
    from elalora_vit.core import ImportanceTracker, RankAllocator

    rank = int(os.environ.get("RANK", "0"))
    original_ce, original_step, original_scores = F.cross_entropy, RankAllocator.step, RankAllocator.scores
    original_tracker_scores = ImportanceTracker.scores
    calls = 0

    def cross_entropy(*args, **kwargs):
        nonlocal calls
        loss = original_ce(*args, **kwargs)
        if torch.is_grad_enabled():  # a training step, not evaluation
            calls += 1
            if calls == nan_loss_at and rank == nan_loss_on:
                loss = loss + torch.tensor(float("nan"))  # the loss is NaN, its gradient is not
        return loss

    def step(self, optimizer=None, *, skipped=False, **kwargs):
        grads = [p.grad for layer in self.layers for p in (layer.lora_A, layer.lora_theta, layer.lora_B)]
        finite = all(g is None or bool(torch.isfinite(g).all()) for g in grads)
        snapshots["steps"].append({"skipped": bool(skipped), "grads_finite": finite})
        return original_step(self, optimizer, skipped=skipped, **kwargs)

    def scores(self):
        local = original_scores(self)
        snapshots["local_scores"].append(local.clone())
        return local

    def skewed_scores(self):
        return -original_tracker_scores(self)

    F.cross_entropy = cross_entropy
    RankAllocator.step = step
    RankAllocator.scores = scores
    if skew_scores_on is not None and rank == skew_scores_on:
        ImportanceTracker.scores = skewed_scores


def install(nan_at: int | None, nan_on: int | None, signal_at: int | None = None, signal_on: int | None = None) -> None:
    from elalora_vit.train import loop

    class RecordingHealth(loop.HealthMonitor):
        def after_round(self, record, model) -> None:
            snapshots["rounds"].append({"record": record.to_dict(), "adapters": adapter_tensors(model)})
            super().after_round(record, model)

    original_result, original_batches = loop.run_result, loop._train_batches

    def result(cfg, files, run_state, *args):
        model, allocator, health = run_state.unwrapped, run_state.allocator, run_state.health
        state = allocator.state_dict()
        snapshots["final"] = {
            "adapters": adapter_tensors(model),
            "head": {k: v.detach().clone() for k, v in model.head.state_dict().items()},
            "history": state["history"],
            "importance": state["importance"],
            "rank_pattern": allocator.rank_pattern(),
            "allocator_skipped": allocator.skipped_steps,
            "loop_skipped": health.skipped_steps,
        }
        return original_result(cfg, files, run_state, *args)

    step = 0

    def batches(dataset, cfg, epoch, accelerator, start=0):
        nonlocal step
        for x, y in original_batches(dataset, cfg, epoch, accelerator, start):
            step += 1
            snapshots.setdefault("labels", []).append(y.clone())
            if step == nan_at and accelerator.process_index == nan_on:
                x = torch.full_like(x, float("nan"))  # a bad batch on one process only
            if step == signal_at and accelerator.process_index == signal_on:
                os.kill(os.getpid(), signal.SIGTERM)
            yield x, y

    loop.HealthMonitor = RecordingHealth
    loop.run_result = result
    loop._train_batches = batches


def main() -> int:
    argv = sys.argv[1:]
    split = argv.index("--")
    parser = argparse.ArgumentParser()
    parser.add_argument("dump_dir", type=Path)
    parser.add_argument("--nan-at", type=int)
    parser.add_argument("--nan-on", type=int)
    parser.add_argument("--nan-loss-at", type=int)
    parser.add_argument("--nan-loss-on", type=int)
    parser.add_argument("--skew-scores-on", type=int)
    parser.add_argument("--signal-at", type=int)
    parser.add_argument("--signal-on", type=int)
    args = parser.parse_args(argv[:split])
    install(args.nan_at, args.nan_on, args.signal_at, args.signal_on)
    install_core_faults(args.nan_loss_at, args.nan_loss_on, args.skew_scores_on)
    from elalora_vit import cli

    code = cli.main(argv[split + 1 :])
    # a process that exits with an error code makes torchrun stop the others: let none be
    # stopped while it writes its record, and let the main process write first
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    snapshots["world"] = world
    torch.save(snapshots, args.dump_dir / f"process{rank}.pt")
    deadline = time.monotonic() + 60
    while rank != 0 and not (args.dump_dir / "process0.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return code


if __name__ == "__main__":
    sys.exit(main())


# ------------------------------------------------------------ the allocator alone
def allocator_rounds(rank: int, world: int, init_file: str, dump_dir: str) -> None:
    """A process of ``torch.multiprocessing.spawn``: the core loop without DDP, each process
    with its own data, so the processes' gradients and importance scores differ. Runs
    the same rounds twice, with and without the broadcast of rank 0's scores, and
    writes the histories and the local scores to ``dump_dir/allocator<rank>.pt``."""
    import torch.distributed as dist

    from elalora_vit.core import allocator as allocator_module

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    broadcast = allocator_module._same_on_every_process
    out = {}
    for mode in ("broadcast", "local"):
        allocator_module._same_on_every_process = broadcast if mode == "broadcast" else (lambda scores: scores)
        history, scores = _core_run(data_seed=100 + rank)
        out[mode] = {"history": history, "scores": scores}
    allocator_module._same_on_every_process = broadcast
    torch.save(out, Path(dump_dir) / f"allocator{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _core_run(data_seed: int, steps: int = 16):
    from torch import nn

    from elalora_vit import ElaLoRAConfig, RankAllocator, patch_model

    torch.manual_seed(0)  # the same initial model on every process
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    cfg = ElaLoRAConfig(rank=2, max_rank=4, k=2, b=2, warmup_steps=2, adjust_interval=2, stabilize_steps=2)
    patch_model(model, ["0", "2", "4"], cfg)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    allocator = RankAllocator(model, cfg, total_steps=steps)
    data = torch.Generator().manual_seed(data_seed)  # a different batch stream per process
    for _ in range(steps):
        x, y = torch.randn(16, 16, generator=data), torch.randint(0, 4, (16,), generator=data)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        allocator.step(optimizer)
        optimizer.zero_grad()
    return [r.to_dict() for r in allocator.history], allocator.tracker.scores()
