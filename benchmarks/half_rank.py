"""The paper's headline as one command: ElaLoRA at rank r against LoRA (ours), PEFT's
``LoraConfig`` and AdaLoRA at rank 2 r, for r = 2 and 4, with trainable parameters counted
(issue 24).  The paper (GLUE) reports ElaLoRA at rank 2 ahead of the others at rank 4.

    python benchmarks/half_rank.py --out half.jsonl                     # digits, 5 seeds, ~25 min on one core
    python benchmarks/half_rank.py --family counting --out half_count.jsonl --seeds 0 1 2 3 4 5 6 7 8 9
    python benchmarks/half_rank.py --summarise half.jsonl               # the tables again
    python benchmarks/half_rank.py --quick                              # smoke run, seconds

The protocol is ``svd_deficit.py``'s (``transfer.py``'s backbone and recipe, 300 validation
images): every method at every rate of the grid and every seed, each method's rate chosen
on validation, differences paired by seed (95% t-interval).  Runs are appended to ``--out``
as they finish (method names carry the rank: ``elalora@2``, ``peft@4``), so a stopped run
keeps its whole seeds and a rerun with more seeds adds to the file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import svd_deficit as D  # noqa: E402
import transfer as T  # noqa: E402

OPPONENTS = ("lora", "peft", "adalora")


def variants(rank: int) -> list[tuple[str, str, int]]:
    """(name, svd_deficit variant, rank): ElaLoRA at ``rank``, then its opponents at twice it."""
    return [(f"elalora@{rank}", "elalora", rank)] + [(f"{o}@{2 * rank}", o, 2 * rank) for o in OPPONENTS]


def run(args) -> None:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model = dict(T.QUICK_MODEL if args.quick else T.FULL_MODEL)
    if args.width:
        model.update(embed_dim=args.width, num_heads=max(1, args.width // 64))
    base = dict(model=model, shots_val=60, family=args.family, adapter_defaults=dict(T.ADAPTER_DEFAULTS[args.defaults]))
    if args.quick:
        base.update(epochs=3, batch_size=50, pretrain_epochs=2)
    data = T.task_data(args.family, 20, 60)
    backbone, _ = T.pretrained_backbone(T.Settings(**base), data, Path(args.cache_dir), print)
    for seed in args.seeds:
        for lr in args.lrs:
            for rank in args.ranks:
                for name, variant, r in variants(rank):
                    kind, overrides, _ = D.VARIANTS[variant]
                    settings = T.Settings(**base, rank=r)
                    result = T.train_one(kind, overrides, settings, lr, seed, backbone, data)
                    record = {"method": name, "family": args.family, "rank": r, "lr": lr, "seed": seed,
                              **{k: result[k] for k in ("val_acc", "val_loss", "test_acc", "trainable_params")}}
                    with open(args.out, "a") as f:
                        f.write(json.dumps(record) + "\n")
                    print(f"  {name:<12} lr {lr:<7g} seed {seed}: val {result['val_acc']:5.1f} "
                          f"test {result['test_acc']:5.2f}  ({result['trainable_params']:,} params)", flush=True)


def tables(path: str, ranks) -> str:
    out = []
    for rank in ranks:
        mine, *theirs = [name for name, _, _ in variants(rank)]
        out += [f"### ElaLoRA at rank {rank} against the others at rank {2 * rank}", "",
                D.summarise([path], None, tuple(theirs), [mine, *theirs]), ""]
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("digits", "counting"), default="digits", help="the adaptation task")
    p.add_argument("--ranks", nargs="+", type=int, default=[2, 4], help="ElaLoRA's ranks r (the others get 2 r)")
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-3, 7e-3, 1e-2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--width", type=int, help="the ViT's width (default 64)")
    p.add_argument("--out", help="append one JSON line per run here (default: a temporary file)")
    p.add_argument("--summarise", metavar="JSONL", help="only print the tables of earlier runs")
    p.add_argument("--quick", action="store_true", help="smoke run: a tiny model, one seed, one rate, 3 epochs")
    p.add_argument("--cache-dir", default=T.parse_args([]).cache_dir, help="where pre-trained backbones are cached")
    p.add_argument("--threads", type=int, default=1)
    T.add_defaults_argument(p)
    args = p.parse_args(argv)
    if args.summarise:
        print(tables(args.summarise, args.ranks))
        return
    if args.quick:
        args.seeds, args.lrs, args.ranks = args.seeds[:1], args.lrs[:1], args.ranks[:1]
    if not args.out:
        args.out = str(Path(tempfile.mkdtemp()) / "half_rank.jsonl")
    run(args)
    print(f"\nruns in {args.out}\n")
    print(tables(args.out, args.ranks))


if __name__ == "__main__":
    main()
