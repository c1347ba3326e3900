"""Dispatched ops and host syncs per training step: what a GPU pays per step beyond its
arithmetic (issue 25).

    python benchmarks/dispatch.py            # seconds
    python benchmarks/dispatch.py --time     # and the tiny model's step time, ~1 minute

Ops: every aten op dispatched during one training step, counted with a
``TorchDispatchMode`` on a 4-block tiny ViT (``vit_tiny_patch16_224`` at 32 px, patch 8),
rank 8 on q, k, v, proj, fc1, fc2 (PEFT: the fused qkv), batch 8, after a warm-up step,
in two parts: ``model`` (forward, loss, regulariser, backward: the measure of issue 25's
goal, <= 1.25x LoRA's) and ``step`` (that, the optimizer step and the variant's allocator
step).  The optimizer is AdamW with ``fused=True``, as ``elalora-vit train`` builds it on a
GPU: one launch for all parameters (the per-tensor loop of a CPU AdamW would add about 10
ops for every tensor, and ElaLoRA has a theta tensor per layer that LoRA has not).

Step time on that overhead-dominated model (``--time``): one whole training step of
``lora`` and ``elalora+orth`` (allocator and regulariser included), fused AdamW, batch 8,
interleaved round by round in this process, CPU time of the one torch thread (so other jobs
on a shared machine do not inflate it); the ratio is the median of the per-round ratios.
Where launches dominate, the step's time follows its op count (issue 25's goal: <= 1.15x).

Host syncs: calls that read a tensor's value on the host (``Tensor.item``, ``__bool__``,
``__float__``, ``__int__``, ``tolist``, ``.cpu()``, ``.numpy()``) during one step of
``elalora-vit train``'s own step function (``train/loop.py: _train_step``) on that
model, ElaLoRA with its allocator and the regulariser, counted by wrapping those methods.
Each one stalls the CPU until the GPU has drained its queue.  There are none: the loop
reads the losses and skip flags of ``READ_EVERY`` steps at once, after the step, and
``train`` builds a fused AdamW on CPU as on CUDA, which reads no step counter either.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _bench as B  # noqa: E402

VARIANTS = ["lora", "elalora-noalloc", "elalora", "elalora+orth", "peft-lora", "peft-adalora"]
MODEL = dict(model_name="vit_tiny_patch16_224", img_size=32)
HOST_READS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def _tiny_vit(variant_kind: str, rank: int) -> B.Variant:
    import timm

    original = B.make_vit

    def make(model_name, img_size, seed=0, device="cpu"):
        torch.manual_seed(seed)
        return timm.create_model(model_name, pretrained=False, img_size=img_size, patch_size=8, depth=4,
                                 num_classes=B.NUM_CLASSES).to(device)

    B.make_vit = make
    try:
        return B.build_variant(variant_kind, MODEL["model_name"], MODEL["img_size"], rank)
    finally:
        B.make_vit = original


def _fused_variant(kind: str, rank: int) -> B.Variant:
    variant = _tiny_vit(kind, rank)
    params = [p for group in variant.optimizer.param_groups for p in group["params"]]
    variant.optimizer = torch.optim.AdamW(params, lr=1e-4, fused=True)  # a GPU run's optimizer
    return variant


def step_time_ratio(rank: int, rounds: int) -> dict:
    """Thread CPU time of one training step, ElaLoRA (+ regulariser, allocator) against LoRA."""
    variants = {kind: _fused_variant(kind, rank) for kind in ("lora", "elalora+orth")}
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, B.NUM_CLASSES, (8,))
    times = B.interleaved_times({k: (lambda v=v: v.train_step(x, y)) for k, v in variants.items()},
                                rounds=rounds, inner=20, warmup=3, clock="thread")
    low, high = B.ratio_spread(times, "elalora+orth", "lora")
    return {"ms": {k: round(1000 * B.median(t), 3) for k, t in times.items()},
            "ratio": round(B.paired_ratio(times, "elalora+orth", "lora"), 3), "quartiles": [round(low, 3), round(high, 3)]}


def ops_per_step(kind: str, rank: int) -> dict[str, int]:
    """``{"model": forward + loss + regulariser + backward, "step": all of one training step}``."""
    variant = _fused_variant(kind, rank)
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, B.NUM_CLASSES, (8,))
    variant.train_step(x, y)  # warm-up: optimizer state exists
    with _CountOps() as model_ops:
        variant.loss(x, y).backward()
    with _CountOps() as rest_ops:
        variant.optimizer.step()
        if variant.after_step is not None:
            variant.after_step()
    variant.optimizer.zero_grad(set_to_none=True)
    model = sum(model_ops.ops.values())
    return {"model": model, "step": model + sum(rest_ops.ops.values())}


def host_syncs_per_train_step() -> dict[str, int]:
    """Host reads during one ``_train_step`` of the training loop (ElaLoRA, tiny ViT, CPU)."""
    from tests.train.conftest import tiny_overrides, write_folder_task  # a tiny task folder
    import tempfile

    from elalora_vit.train import load_config
    from elalora_vit.train import loop as L
    from elalora_vit.train.runtime import create_accelerator

    work = Path(tempfile.mkdtemp(prefix="elalora-dispatch-"))
    root = write_folder_task(work / "vtab")
    cfg = load_config(None, tiny_overrides(root, work / "run", **{"optim.epochs": 2}))
    accelerator = create_accelerator(cfg.precision)
    model, data = L._build_model_and_data(cfg, accelerator)
    state = L._set_up_run(cfg, model, 5, accelerator, 0.0)
    state.current_rank = 0
    batches = L._train_batches(data.train, cfg, 0, accelerator)
    x, y = next(batches)
    L._train_step(state, cfg, x, y, accelerator)  # warm-up
    counts: Counter = Counter()
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def wrap(name):
        original = saved[name]

        def counted(self, *args, **kwargs):
            counts[name] += 1
            return original(self, *args, **kwargs)
        return counted

    x, y = next(batches)
    try:
        for name in HOST_READS:
            setattr(torch.Tensor, name, wrap(name))
        L._train_step(state, cfg, x, y, accelerator)
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)
    return dict(counts)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--json", default=None)
    p.add_argument("--time", action="store_true", help="also time the tiny model's step, ElaLoRA against LoRA")
    p.add_argument("--rounds", type=int, default=15, help="--time: interleaved rounds of 20 steps each")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    ops = {kind: ops_per_step(kind, args.rank) for kind in VARIANTS}
    print(f"aten ops per training step (4-block ViT at 32 px, rank {args.rank}, batch 8, fused AdamW):")
    print(f"  {'variant':<16} {'model':>6} {'x LoRA':>7} {'step':>6} {'x LoRA':>7}   (model: forward, loss, "
          "regulariser, backward; step: + optimizer and allocator)")
    for kind, n in ops.items():
        print(f"  {kind:<16} {n['model']:6d} {n['model'] / ops['lora']['model']:7.2f} {n['step']:6d} "
              f"{n['step'] / ops['lora']['step']:7.2f}")
    timing = None
    if args.time:
        timing = step_time_ratio(args.rank, args.rounds)
        print(f"step time, CPU time of 1 thread, median of {args.rounds} rounds: lora {timing['ms']['lora']} ms, "
              f"elalora+orth {timing['ms']['elalora+orth']} ms: x LoRA {timing['ratio']} "
              f"(quartiles {timing['quartiles'][0]}-{timing['quartiles'][1]})")
    syncs = host_syncs_per_train_step()
    device_reads = sum(syncs.values())
    print(f"host reads of device values in one `elalora-vit train` step (ElaLoRA + regulariser + allocator): "
          f"{device_reads} {dict(sorted(syncs.items()))}")
    result = {"ops_per_step": ops,
              "x_lora": {k: {part: round(n / ops["lora"][part], 3) for part, n in v.items()} for k, v in ops.items()},
              "step_time": timing, "host_reads_per_train_step": syncs, "machine": B.machine_info("cpu")}
    B.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
