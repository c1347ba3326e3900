"""Inference throughput: a merged ElaLoRA model against the unpatched base model.

    python benchmarks/inference.py            # ViT-S/16 and ViT-B/16, ~2 minutes on 2 CPU cores
    python benchmarks/inference.py --quick    # smoke run

Variants, all built from the same randomly initialised timm ViT and run under
``torch.inference_mode()`` on the same batch:

- ``base``: the unpatched model;
- ``merged``: patched with ElaLoRA (qkv split, random non-zero lambda), then
  ``merge_adapters(model)``: the wrappers stay, the update is folded into W0;
- ``unpatched-merged``: ``unpatch_model(model, merge=True)``: the original
  nn.Linear modules back, with merged weights;
- ``merged-inference``: the patched model inside ``merged_inference(model)``, as
  evaluation during training runs it (a merged copy of each weight; no parameter changed);
- ``unmerged``: the patched model as trained (adapters computed at run time),
  for reference.

Throughput is images/s of the forward pass (median over interleaved rounds);
ratios are paired medians against ``base``.  The merged model's outputs are
checked against the unmerged one's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _bench as B  # noqa: E402

DEFAULT_MODELS = ["vit_small_patch16_224:224:8", "vit_base_patch16_224:224:4"]
QUICK_MODELS = ["vit_small_patch16_224:64:4"]
TARGET_MERGED_VS_BASE = 1.02  # time ratio


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="model:img_size:batch entries")
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--rounds", type=int, default=None, help="timing rounds (default 12, --quick 3)")
    p.add_argument("--inner", type=int, default=1)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    B.add_timing_args(p)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.models is None:
        args.models = QUICK_MODELS if args.quick else DEFAULT_MODELS
    if args.rounds is None:
        args.rounds = 3 if args.quick else 12
    B.apply_timing_args(args)
    return args


def patched(model_name: str, img: int, rank: int, device: str):
    from elalora_vit import patch_model

    model = B.make_vit(model_name, img, device=device)
    patch_model(model, B.VIT_TARGETS, B.elalora_config(rank), split=B.QKV_SPLIT)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a trained-looking adapter: non-zero singular values
        for name, p in model.named_parameters():
            if name.endswith("lora_theta"):
                p.copy_(torch.randn(p.shape, generator=g).to(p))
    return model.eval()


def bench_model(spec: str, args) -> dict:
    import contextlib

    from elalora_vit import merge_adapters, merged_inference, unpatch_model

    name, img, batch = spec.split(":")
    img, batch = int(img), int(batch)
    B.log(f"[inference] {name} img {img} batch {batch}")
    models = {
        "base": B.make_vit(name, img, device=args.device).eval(),
        "merged": merge_adapters(patched(name, img, args.rank, args.device)),
        "unpatched-merged": unpatch_model(patched(name, img, args.rank, args.device), merge=True),
        "merged-inference": patched(name, img, args.rank, args.device),
        "unmerged": patched(name, img, args.rank, args.device),
    }
    x = torch.randn(batch, 3, img, img, generator=torch.Generator().manual_seed(0)).to(args.device)
    with torch.inference_mode(), contextlib.ExitStack() as stack:
        stack.enter_context(merged_inference(models["merged-inference"]))
        reference = models["unmerged"](x)
        max_err = max(float((models[k](x) - reference).abs().max())
                      for k in ("merged", "unpatched-merged", "merged-inference"))

        def forward(m):
            return lambda: m(x)

        times = B.interleaved_times({k: forward(m) for k, m in models.items()}, args.rounds,
                                    inner=args.inner, warmup=1, device=args.device, clock=args.clock)
    rows = []
    for k in models:
        rows.append({"variant": k, "ms": 1e3 * B.median(times[k]), "min_ms": 1e3 * min(times[k]),
                     "img_per_s": batch / B.median(times[k]),
                     "x_base": B.paired_ratio(times, k, "base"),
                     "x_base_iqr": B.ratio_spread(times, k, "base")})
    merged = rows[1]["x_base"]
    return {"model": name, "img_size": img, "batch": batch, "device": args.device, "rows": rows,
            "max_abs_diff_merged_vs_unmerged": max_err, "times_s": times,
            "targets": {"merged_time_vs_base": {"value": merged, "limit": TARGET_MERGED_VS_BASE,
                                                "verdict": B.verdict(merged, TARGET_MERGED_VS_BASE, not args.quick)}}}


def main(argv=None) -> dict:
    args = parse_args(argv)
    B.setup_torch(args.threads)
    result = {"benchmark": "inference", "machine": B.machine_info(args.device),
              "settings": {"rank": args.rank, "rounds": args.rounds, "inner": args.inner,
                           "threads": args.threads, "clock": args.clock}, "models": []}
    for spec in args.models:
        r = bench_model(spec, args)
        print(f"\n## {r['model']}  img {r['img_size']}  batch {r['batch']}  ({r['device']}, {args.clock} clock, "
              f"{args.threads} thread(s)), "
              f"merged vs unmerged max |diff| {r['max_abs_diff_merged_vs_unmerged']:.2e}")
        print(B.format_table(r["rows"], [("variant", "variant", ""), ("ms", "ms/batch (median)", ".1f"),
                                         ("min_ms", "min ms", ".1f"), ("img_per_s", "images/s", ".1f"),
                                         ("x_base", "time x base", ".3f")]))
        for key, t in r["targets"].items():
            print(f"  target {key}: {t['value']:.3f} <= {t['limit']} -> {t['verdict']}")
        result["models"].append(r)
    B.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
