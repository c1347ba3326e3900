"""Cost of the rank allocator alone, as the number of adapters grows.

    python benchmarks/allocator_cost.py            # 72, 288, 1152 adapters + the ViT-B comparison
    python benchmarks/allocator_cost.py --quick    # smoke run, ~30 s

Models: stacks of ViT-B/16 blocks (qkv 768->2304 split into q, k, v; proj
768->768; fc1 768->3072; fc2 3072->768: 6 adapters per block), 12 blocks = 72
adapters (exactly ViT-B's), 48 blocks = 288, 192 blocks = 1152.  The frozen base
weights are zero-stride views (no memory): the allocator never reads them.
Adapter parameters, gradients (random), AdamW state and importance EMAs are real.

Measured, each as a median over repetitions:
- ``update``: ``RankAllocator.step(opt)`` at a step that is not an adjustment
  step (the importance EMAs only), the cost paid at every training step;
- ``round``: ``RankAllocator.adjust(b, opt)``, one prune-and-expand round
  (scores, plan, b prunes and b expansions with Gram-Schmidt directions,
  optimizer-state resets, the rank pattern), paid every ``adjust_interval`` steps;
- the overhead of the allocator on a real ViT-B/16 training step: the train
  step (forward, backward, AdamW) and ``alloc.step`` are timed alternately on
  the same model; overhead = update / step, plus round / adjust_interval amortised.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

DEFAULT_BLOCKS = [12, 48, 192]
QUICK_BLOCKS = [2, 8]
ADAPTERS_PER_BLOCK = 6
TARGET_ROUND_MS_72 = 50.0
TARGET_OVERHEAD = 0.03


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--blocks", type=int, nargs="+", default=None,
                   help="ViT-B blocks per synthetic model (6 adapters each); default 12 48 192")
    p.add_argument("--dim", type=int, default=768, help="width (768 = ViT-B)")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--b", type=int, default=4, help="ranks moved by the timed round")
    p.add_argument("--adjust-interval", type=int, default=150, help="steps between rounds, for amortising")
    p.add_argument("--reps", type=int, default=None, help="repetitions per measurement (default 15, --quick 3)")
    p.add_argument("--vit", default=None, help="model:img:batch for the overhead measurement "
                   "(default vit_base_patch16_224:112:2; 'none' to skip)")
    p.add_argument("--vit-rounds", type=int, default=None, help="alternations for the overhead (default 8)")
    B.add_timing_args(p)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.blocks is None:
        args.blocks = QUICK_BLOCKS if args.quick else DEFAULT_BLOCKS
    if args.reps is None:
        args.reps = 3 if args.quick else 15
    if args.vit is None:
        args.vit = "vit_small_patch16_224:64:2" if args.quick else "vit_base_patch16_224:112:2"
    if args.vit_rounds is None:
        args.vit_rounds = 3 if args.quick else 8
    B.apply_timing_args(args)
    return args


# ------------------------------------------------------------ synthetic stacks
def _weightless_linear(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out, bias=False, device="meta")
    layer.weight = nn.Parameter(torch.zeros(()).expand(d_out, d_in), requires_grad=False)
    return layer


class _Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.attn = nn.Module()
        self.attn.qkv = _weightless_linear(dim, 3 * dim)
        self.attn.proj = _weightless_linear(dim, dim)
        self.mlp = nn.Module()
        self.mlp.fc1 = _weightless_linear(dim, 4 * dim)
        self.mlp.fc2 = _weightless_linear(4 * dim, dim)


def synthetic_model(blocks: int, dim: int) -> nn.Module:
    model = nn.Module()
    model.blocks = nn.ModuleList(_Block(dim) for _ in range(blocks))
    return model


def allocator_setup(blocks: int, args):
    from elalora_vit import RankAllocator, patch_model

    cfg = B.elalora_config(args.rank)
    model = synthetic_model(blocks, args.dim)
    patch_model(model, B.VIT_TARGETS, cfg, split=B.QKV_SPLIT)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.1)  # non-zero lambda: non-trivial scores
            p.grad = torch.randn(p.shape, generator=g) * 1e-2
    opt = torch.optim.AdamW(params, lr=1e-4)
    opt.step()  # creates the AdamW state that rounds reset
    alloc = RankAllocator(model, cfg, total_steps=B.NO_ROUND_STEPS)
    for _ in range(3):  # non-zero importance EMAs
        alloc.step(opt)
    return model, opt, alloc, params


def measure_allocator(blocks: int, args) -> dict:
    from elalora_vit.core.allocator import plan_round

    model, opt, alloc, params = allocator_setup(blocks, args)
    adapters = len(alloc.adapter_names)
    elements = sum(p.numel() for p in params)
    clock = B.CLOCKS[args.clock]

    def timed(fn, reps):
        out = []
        for _ in range(reps):
            start = clock()
            fn()
            out.append(clock() - start)
        return B.median(out)

    update_s = timed(lambda: alloc.step(opt), args.reps)
    scores_s = timed(alloc.scores, args.reps)
    scores, masks = alloc.scores(), alloc._masks()
    plan_s = timed(lambda: plan_round(scores, masks, alloc.config.k, args.b, alloc.layers[0].capacity), args.reps)
    total_before = alloc.total_rank()
    round_s = timed(lambda: alloc.adjust(args.b, opt), args.reps)
    assert alloc.total_rank() == total_before, "a round changed the total rank"
    return {"adapters": adapters, "layers": len(alloc.layers), "adapter_elements": elements,
            "update_ms": 1e3 * update_s, "round_ms": 1e3 * round_s,
            "scores_ms": 1e3 * scores_s, "plan_ms": 1e3 * plan_s}


# ------------------------------------------------------- overhead on a ViT step
def measure_overhead(args) -> dict:
    from elalora_vit import RankAllocator

    name, img, batch = args.vit.split(":")
    img, batch = int(img), int(batch)
    variant = B.build_variant("elalora-noalloc", name, img, args.rank)
    cfg = B.elalora_config(args.rank)
    alloc = RankAllocator(variant.model, cfg, total_steps=B.NO_ROUND_STEPS)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g)
    y = torch.randint(0, B.NUM_CLASSES, (batch,), generator=g)
    opt = variant.optimizer

    def train_step():  # forward, backward, AdamW; grads kept for the allocator
        opt.zero_grad(set_to_none=True)
        variant.loss(x, y).backward()
        opt.step()

    train_step()
    times = B.interleaved_times({"train_step": train_step, "allocator_step": lambda: alloc.step(opt)},
                                rounds=args.vit_rounds, warmup=1, clock=args.clock)
    step_ms = 1e3 * B.median(times["train_step"])
    update_ms = 1e3 * B.median(times["allocator_step"])
    round_ms = B.median(
        [_time_once(lambda: alloc.adjust(args.b, opt), args.clock) for _ in range(max(3, args.reps // 3))])
    return {"model": name, "img_size": img, "batch": batch, "adapters": len(alloc.adapter_names),
            "train_step_ms": step_ms, "update_ms": update_ms, "round_ms": round_ms,
            "update_pct": 100 * update_ms / step_ms,
            "amortised_pct": 100 * (update_ms + round_ms / args.adjust_interval) / step_ms}


def _time_once(fn, clock: str) -> float:
    timer = B.CLOCKS[clock]
    start = timer()
    fn()
    return 1e3 * (timer() - start)


def main(argv=None) -> dict:
    args = parse_args(argv)
    B.setup_torch(args.threads)
    rows = []
    for blocks in args.blocks:
        B.log(f"[allocator_cost] {blocks} blocks = {blocks * ADAPTERS_PER_BLOCK} adapters")
        rows.append(measure_allocator(blocks, args))
    base = rows[0]
    for row in rows:
        scale = row["adapters"] / base["adapters"]
        row["size_x"] = scale
        row["update_x"] = row["update_ms"] / base["update_ms"]
        row["round_x"] = row["round_ms"] / base["round_ms"]
        row["update_us_per_adapter"] = 1e3 * row["update_ms"] / row["adapters"]
        row["round_us_per_adapter"] = 1e3 * row["round_ms"] / row["adapters"]
    result = {"benchmark": "allocator_cost", "machine": B.machine_info(),
              "settings": {"rank": args.rank, "capacity": 2 * args.rank, "b": args.b, "dim": args.dim,
                           "threads": args.threads, "clock": args.clock,
                           "reps": args.reps, "adjust_interval": args.adjust_interval},
              "scaling": rows}
    print(f"\n## Allocator cost vs number of adapters (ViT-B block shapes, rank {args.rank}, "
          f"capacity {2 * args.rank}, b={args.b}; {args.clock} clock, {args.threads} thread(s))")
    print(B.format_table(rows, [
        ("adapters", "adapters", ""), ("adapter_elements", "adapter elements", ","),
        ("update_ms", "update ms", ".2f"), ("update_x", "x", ".1f"),
        ("round_ms", "round ms", ".2f"), ("round_x", "x", ".1f"), ("size_x", "size x", ".0f"),
        ("scores_ms", "scores ms", ".2f"), ("plan_ms", "plan ms", ".2f"),
        ("round_us_per_adapter", "round us/adapter", ".1f")]))

    targets = {}
    at72 = [r for r in rows if r["adapters"] == 72]
    if at72:
        targets["round_ms_72_adapters"] = {"value": at72[0]["round_ms"], "limit": TARGET_ROUND_MS_72,
                                           "verdict": B.verdict(at72[0]["round_ms"], TARGET_ROUND_MS_72, not args.quick)}
    if len(rows) > 1:
        worst = max(r["round_x"] / r["size_x"] for r in rows[1:])
        targets["round_growth_vs_linear"] = {"value": worst, "limit": 1.15, "verdict": B.verdict(worst, 1.15, not args.quick),
                                             "note": "round time growth / adapter growth: <= 1 is linear or "
                                                     "better, 15% allowed for timing noise"}
        targets["update_growth_vs_linear"] = {"value": max(r["update_x"] / r["size_x"] for r in rows[1:]),
                                              "limit": 1.0, "verdict": "info"}
    if args.vit.lower() != "none":
        B.log(f"[allocator_cost] overhead on a {args.vit} training step")
        over = measure_overhead(args)
        result["overhead"] = over
        print(f"\n## Allocator overhead on a {over['model']} step (img {over['img_size']}, batch {over['batch']}, "
              f"{over['adapters']} adapters)")
        print(B.format_table([over], [("train_step_ms", "train step ms", ".1f"), ("update_ms", "alloc.step ms", ".2f"),
                                      ("update_pct", "% of step", ".2f"), ("round_ms", "round ms", ".1f"),
                                      ("amortised_pct", f"% incl. rounds/{args.adjust_interval}", ".2f")]))
        targets["overhead_pct_of_step"] = {"value": over["amortised_pct"], "limit": 100 * TARGET_OVERHEAD,
                                           "verdict": B.verdict(over["amortised_pct"], 100 * TARGET_OVERHEAD, not args.quick)}
    result["targets"] = targets
    for key, t in targets.items():
        print(f"  target {key}: {t['value']:.3f} (limit {t['limit']}) -> {t['verdict']}")
    B.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
