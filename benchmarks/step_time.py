"""Training step time and memory: ElaLoRA against PEFT LoRA, PEFT AdaLoRA and our fixed-rank LoRA.

    python benchmarks/step_time.py            # ViT-S/16 and ViT-B/16, a few minutes on 2 CPU cores
    python benchmarks/step_time.py --quick    # smoke run, ~30 s
    python benchmarks/step_time.py --rss      # also max RSS of each variant in a fresh subprocess
    python benchmarks/step_time.py --device cuda --precision bf16 --models vit_base_patch16_224:224:64   # the GPU check

One training step = forward, cross-entropy, backward, AdamW step, the variant's
per-step extra (RankAllocator.step for ElaLoRA, update_and_allocate for PEFT
AdaLoRA), zero_grad.  Every variant adapts the same Linear layers of the same
randomly initialised timm ViT (blocks.*.attn.qkv, attn.proj, mlp.fc1, mlp.fc2;
never patch_embed.proj) at the same rank, and trains the head as well.  The
allocator schedule is set so that no adjustment round falls in the measured
steps: rounds are measured by allocator_cost.py.

Memory.  On CUDA: torch.cuda.max_memory_allocated over one step.  On CPU, where
torch has no allocator statistics, the peak is accounted for exactly instead:
frozen weights + trainable parameters + their gradients + optimizer state +
allocator state + the activations autograd saves for backward (unique storages
seen by torch.autograd.graph.saved_tensors_hooks, parameters excluded).  With
``--rss`` each variant also runs 3 steps alone in a fresh subprocess and reports
its peak resident set size during those steps (VmHWM, reset after the imports
and the model build), which includes the libraries and allocator slack and so
is a cruder ratio.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

VARIANTS = ["elalora", "elalora+orth", "elalora-unsplit", "lora", "peft-lora", "peft-adalora"]
DEFAULT_MODELS = ["vit_small_patch16_224:224:4", "vit_base_patch16_224:112:8"]
QUICK_MODELS = ["vit_small_patch16_224:64:2"]
TARGET_VS_OUR_LORA = 1.05
TARGET_VS_PEFT_LORA = 1.02
TARGET_MEMORY_VS_PEFT_LORA = 1.05


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None,
                   help="model:img_size:batch entries (default: %s)" % " ".join(DEFAULT_MODELS))
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS + ["elalora-noalloc"])
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 6, --quick 3)")
    p.add_argument("--inner", type=int, default=1, help="steps per variant per round")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: forward and loss under torch.autocast(bfloat16), as `train --precision bf16`")
    B.add_timing_args(p)
    p.add_argument("--rss", action="store_true", help="also measure max RSS per variant in a subprocess")
    p.add_argument("--project-img", type=int, default=224, help="image size of the CPU memory projection")
    p.add_argument("--project-batches", type=int, nargs="*", default=None,
                   help="batch sizes to project CPU peak memory to (default 16 64; none with --quick)")
    p.add_argument("--quick", action="store_true", help="a ~30 s smoke run")
    p.add_argument("--json", default=None, help="write the results to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one variant for --rss
    args = p.parse_args(argv)
    if args.models is None:
        args.models = QUICK_MODELS if args.quick else DEFAULT_MODELS
    if args.rounds is None:
        args.rounds = 3 if args.quick else 6
    if args.project_batches is None:
        args.project_batches = [] if args.quick else [16, 64]
    B.apply_timing_args(args)
    return args


def parse_model(spec: str) -> tuple[str, int, int]:
    name, img, batch = spec.split(":")
    return name, int(img), int(batch)


def make_batch(img: int, batch: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, img, img, generator=g)
    y = torch.randint(0, B.NUM_CLASSES, (batch,), generator=g)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------- memory
def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def loss_and_saved_bytes(variant: B.Variant, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The loss, and the bytes of the tensors autograd saved for backward while
    computing it (unique storages, the model's own parameters and buffers excluded)."""
    own = {p.untyped_storage().data_ptr() for p in variant.model.parameters()}
    own |= {b.untyped_storage().data_ptr() for b in variant.model.buffers()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage.data_ptr() not in own:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = variant.loss(x, y)
    return loss, sum(saved.values())


def projected_memory(variant: B.Variant, state_mib: float, img: int, batches: list[int]) -> dict:
    """Peak at larger batches: the state does not grow with the batch, saved
    activations grow linearly; their slope and intercept come from forward
    passes at batch 1 and 2 (no backward is run)."""
    sizes = {}
    for b in (1, 2):
        x, y = make_batch(img, b, "cpu")
        loss, sizes[b] = loss_and_saved_bytes(variant, x, y)
        del loss
    per_sample = (sizes[2] - sizes[1]) / 2**20
    fixed = (2 * sizes[1] - sizes[2]) / 2**20
    return {f"peak_mib_b{b}": state_mib + fixed + b * per_sample for b in batches}


def accounted_memory(variant: B.Variant, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Bytes of everything a training step keeps alive (see the module docstring).

    Runs one full step; call it after a warm-up step so the optimizer state exists.
    """
    model = variant.model
    loss, saved_bytes = loss_and_saved_bytes(variant, x, y)
    loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    grads = [p.grad for p in trainable if p.grad is not None]
    variant.optimizer.step()
    if variant.after_step is not None:
        variant.after_step()
    optimizer_state = [v for s in variant.optimizer.state.values() for v in s.values()
                       if torch.is_tensor(v) and v.dim() > 0]
    result = {
        "frozen_mib": _nbytes(p for p in model.parameters() if not p.requires_grad) / 2**20,
        "trainable_mib": _nbytes(trainable) / 2**20,
        "grads_mib": _nbytes(grads) / 2**20,
        "optimizer_mib": _nbytes(optimizer_state) / 2**20,
        "allocator_mib": _nbytes(variant.state_tensors()) / 2**20,
        "activations_mib": saved_bytes / 2**20,
    }
    variant.optimizer.zero_grad(set_to_none=True)
    result["peak_mib"] = sum(result.values())
    return result


def cuda_peak_memory(variant: B.Variant, x: torch.Tensor, y: torch.Tensor) -> dict:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    variant.train_step(x, y)
    torch.cuda.synchronize()
    return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20}


def rss_of_variant(kind: str, spec: str, args) -> float:
    """Max RSS (MiB) of a fresh process that builds one variant and runs 3 steps."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, "--models", spec,
           "--rank", str(args.rank), "--threads", str(args.threads), "--device", "cpu"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["max_rss_mib"]


def child_main(args) -> None:
    B.setup_torch(args.threads)
    import peft  # noqa: F401  (every child holds the same libraries, whichever variant it runs)

    name, img, batch = parse_model(args.models[0])
    variant = B.build_variant(args.child, name, img, args.rank, "cpu")
    x, y = make_batch(img, batch, "cpu")
    # Importing torch, timm and PEFT peaks higher than a small model's training
    # does: reset the high-water mark (Linux) so that only training counts.
    reset = _reset_peak_rss()
    for _ in range(3):
        variant.train_step(x, y)
    peak = _peak_rss_mib() if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"max_rss_mib": peak}))


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------- main
def bench_model(spec: str, args) -> dict:
    name, img, batch = parse_model(spec)
    B.log(f"[step_time] {name} img {img} batch {batch}: building {len(args.variants)} variants")
    variants = {k: B.build_variant(k, name, img, args.rank, args.device) for k in args.variants}
    x, y = make_batch(img, batch, args.device)
    for v in variants.values():
        v.autocast_dtype = torch.bfloat16 if args.precision == "bf16" else None
    for v in variants.values():  # one step each: optimizer state exists, caches are warm
        v.train_step(x, y)

    memory = {}
    for k, v in variants.items():
        memory[k] = cuda_peak_memory(v, x, y) if args.device.startswith("cuda") else accounted_memory(v, x, y)
    if args.project_batches and not args.device.startswith("cuda"):
        B.log(f"[step_time] projecting CPU memory to img {args.project_img}, batches {args.project_batches}")
        for k in variants:
            big = B.build_variant(k, name, args.project_img, args.rank, "cpu")
            state = memory[k]["peak_mib"] - memory[k]["activations_mib"]
            memory[k].update(projected_memory(big, state, args.project_img, args.project_batches))
            del big
    if args.rss and not args.device.startswith("cuda"):
        for k in variants:
            memory[k]["rss_mib"] = rss_of_variant(k, spec, args)

    B.log(f"[step_time] timing {args.rounds} rounds x {args.inner} step(s), {args.clock} clock, "
          f"{torch.get_num_threads()} thread(s)")
    fns = {k: (lambda v=v: v.train_step(x, y)) for k, v in variants.items()}
    times = B.interleaved_times(fns, args.rounds, inner=args.inner, warmup=1, device=args.device, clock=args.clock)

    rows = []
    for k, v in variants.items():
        row = {"variant": k, "ms": 1e3 * B.median(times[k]), "images_per_s": batch / B.median(times[k]),
               **B.adapted_fraction(v.model), **memory[k]}
        for ref in ("lora", "peft-lora"):
            if ref in times:
                row[f"x_{ref}"] = B.paired_ratio(times, k, ref)
                row[f"x_{ref}_iqr"] = B.ratio_spread(times, k, ref)
                row[f"mem_x_{ref}"] = memory[k]["peak_mib"] / memory[ref]["peak_mib"]
                for b in args.project_batches or ():
                    if f"peak_mib_b{b}" in memory[k]:
                        row[f"mem_b{b}_x_{ref}"] = memory[k][f"peak_mib_b{b}"] / memory[ref][f"peak_mib_b{b}"]
                if "rss_mib" in memory[k]:
                    row[f"rss_x_{ref}"] = memory[k]["rss_mib"] / memory[ref]["rss_mib"]
        rows.append(row)
    return {"model": name, "img_size": img, "batch": batch, "precision": args.precision, "rows": rows, "project_img": args.project_img,
            "times_s": times, "targets": targets(rows, judged=not args.quick)}


def targets(rows: list[dict], judged: bool = True) -> dict:
    by = {r["variant"]: r for r in rows}
    out = {}
    if "elalora" in by and "x_lora" in by["elalora"]:
        out["elalora_vs_our_lora"] = (by["elalora"]["x_lora"], TARGET_VS_OUR_LORA)
    if "elalora" in by and "x_peft-lora" in by["elalora"]:
        out["elalora_vs_peft_lora"] = (by["elalora"]["x_peft-lora"], TARGET_VS_PEFT_LORA)
        out["elalora_memory_vs_peft_lora"] = (by["elalora"]["mem_x_peft-lora"], TARGET_MEMORY_VS_PEFT_LORA)
    return {k: {"value": v, "limit": lim, "verdict": B.verdict(v, lim, judged)} for k, (v, lim) in out.items()}


def print_report(result: dict) -> None:
    print(f"\n## {result['model']}  img {result['img_size']}  batch {result['batch']}  ({result['device']}, "
          f"{result['clock']} clock, {result['threads']} thread(s))")
    cols = [("variant", "variant", ""), ("trainable_params", "trainable", ","), ("ms", "step ms (median)", ".1f"), ("images_per_s", "images/s", ".1f"),
            ("x_lora", "x our LoRA", ".3f"), ("x_peft-lora", "x PEFT LoRA", ".3f")]
    print(B.format_table(result["rows"], cols))
    mem_cols = [("variant", "variant", ""), ("peak_mib", "peak MiB", ".1f"), ("mem_x_peft-lora", "x PEFT LoRA", ".4f")]
    if "activations_mib" in result["rows"][0]:
        mem_cols[2:2] = [("activations_mib", "saved act.", ".1f"), ("trainable_mib", "params", ".2f"),
                         ("grads_mib", "grads", ".2f"), ("optimizer_mib", "AdamW", ".2f"),
                         ("allocator_mib", "allocator", ".2f"), ("frozen_mib", "frozen", ".1f")]
    proj = [k for k in result["rows"][0] if k.startswith("peak_mib_b")]
    for key in proj:
        b = key[len("peak_mib_b"):]
        mem_cols += [(key, f"peak MiB @{result['project_img']}px b{b}", ".0f"),
                     (f"mem_b{b}_x_peft-lora", "x PEFT LoRA", ".3f")]
    if "rss_mib" in result["rows"][0]:
        mem_cols += [("rss_mib", "max RSS MiB", ".0f"), ("rss_x_peft-lora", "RSS x PEFT LoRA", ".3f")]
    print(B.format_table(result["rows"], mem_cols))
    for key, t in result["targets"].items():
        print(f"  target {key}: {t['value']:.3f} <= {t['limit']} -> {t['verdict']}")


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return {}
    B.setup_torch(args.threads)
    result = {"benchmark": "step_time", "machine": B.machine_info(args.device),
              "settings": {"rank": args.rank, "rounds": args.rounds, "inner": args.inner, "clock": args.clock,
                           "threads": args.threads, "variants": args.variants}, "models": []}
    for spec in args.models:
        r = bench_model(spec, args)
        r.update(device=args.device, clock=args.clock, threads=args.threads)
        print_report(r)
        result["models"].append(r)
    B.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
