"""The ``elalora-vit`` command line.

    elalora-vit train --task cifar100 --rank 8
    elalora-vit prepare-vtab --tasks natural --data-dir data/vtab-1k
    elalora-vit list-tasks
    elalora-vit inspect-adapter runs/cifar/elalora/seed0/adapter.safetensors

Several GPUs: ``accelerate launch --multi_gpu --num_processes N -m elalora_vit.cli train ...``;
several CPU processes: ``torchrun --standalone --nproc_per_node N -m elalora_vit.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Callable, Sequence

EXAMPLES = """examples:
  elalora-vit train --task cifar100 --rank 8
  elalora-vit train --config configs/vtab/dtd.yaml --method lora --seed 1
  elalora-vit train --config configs/quickstart-digits.yaml          # offline demo
  elalora-vit train --task dtd --checkpoint ViT-B_16.npz --set adapter.b=2 --set optim.lr=3e-3
  accelerate launch --multi_gpu --num_processes 4 -m elalora_vit.cli train --task dtd   # 4 GPUs
"""


# ----------------------------------------------------------------------------- train
def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    from .train.config import parse_override

    flags = {
        "data.task": args.task,
        "method": args.method,
        "adapter.rank": args.rank,
        "model.name": args.model,
        "model.checkpoint": args.checkpoint,
        "data.source": args.data_source,
        "data.data_dir": args.data_dir,
        "data.tfds_dir": args.tfds_dir,
        "data.image_size": args.image_size,
        "output_dir": args.output,
        "optim.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "precision": args.precision,
        "seed": args.seed,
        "eval_every": args.eval_every,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.no_pretrained:
        overrides["model.pretrained"] = False
    if args.no_progress:
        overrides["progress"] = False
    for text in args.set or []:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def _train(args: argparse.Namespace) -> int:
    from .train import load_config, train

    cfg = load_config(args.config, _train_overrides(args))
    result = train(cfg, resume=args.resume)
    summary = {k: result[k] for k in ("task", "method", "seed", "eval_split", "accuracy", "trainable_params", "total_rank")}
    print(json.dumps(summary))
    print(f"outputs in {result['output_dir']}")
    return 0


def _add_train(sub) -> None:
    from .train.config import METHODS, PRECISIONS

    p = sub.add_parser(
        "train",
        help="fine-tune a timm ViT on one VTAB-1k task",
        description=(
            "Fine-tune a timm ViT on one VTAB-1k task with ElaLoRA or a baseline, then evaluate "
            "top-1 accuracy. Settings come from the built-in defaults, then --config, then the flags "
            "below, then --set KEY=VALUE (any config key, e.g. adapter.b=2). Outputs go to "
            "runs/<task>/<method>/seed<seed> unless --output says otherwise: config.yaml, metrics.jsonl, "
            "result.json, rank_history.json, rank_heatmap.png, adapter.safetensors and checkpoint.pt "
            "(written every epoch; --resume continues from it)."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/default.yaml for every key)")
    p.add_argument("--task", help="VTAB-1k task, e.g. cifar (alias cifar100), dtd, kitti; 'elalora-vit list-tasks'")
    p.add_argument("--method", choices=METHODS, help="elalora (default), lora, adalora, full, linear")
    p.add_argument("--rank", type=int, help="adapter rank r (ElaLoRA/LoRA: per adapter; AdaLoRA: final rank); default 8")
    p.add_argument("--model", help="timm model name (default vit_base_patch16_224.orig_in21k)")
    p.add_argument("--checkpoint", metavar="PATH", help="local backbone weights (.npz, .safetensors, .pth) for offline machines")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (tests and demos only)")
    p.add_argument("--data-source", choices=("folder", "tfds", "digits"), help="where images come from (default folder)")
    p.add_argument("--data-dir", metavar="DIR", help="root of the VTAB-1k folder layout (default data/vtab-1k)")
    p.add_argument("--tfds-dir", metavar="DIR", help="tensorflow-datasets data_dir for --data-source tfds")
    p.add_argument("--image-size", type=int, help="input resolution (default: the model's, 224)")
    p.add_argument("--output", metavar="DIR", help="output folder (default runs/{task}/{method}/seed{seed})")
    p.add_argument("--epochs", type=int, help="training epochs (default 100)")
    p.add_argument("--batch-size", type=int, help="batch size per process and step (default 64); with N processes a step sees N x this")
    p.add_argument("--lr", type=float, help="peak learning rate (default 1e-3)")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32 (default), bf16, or fp16 (CUDA, with a GradScaler)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--eval-every", type=int, metavar="N", help="also evaluate every N epochs (default: at the end only)")
    p.add_argument("--resume", action="store_true", help="continue from the output folder's checkpoint.pt")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key (repeatable)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_train)


# ----------------------------------------------------------------------------- data
def _prepare_vtab(args: argparse.Namespace) -> int:
    from .data import prepare_vtab

    folders = prepare_vtab(
        args.tasks,
        args.data_dir,
        args.tfds_dir,
        download=args.download,
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    for folder in folders:
        print(folder)
    return 0


def _add_prepare(sub) -> None:
    p = sub.add_parser(
        "prepare-vtab",
        help="write VTAB-1k tasks from tensorflow-datasets into the folder layout",
        description=(
            "Turn prepared tensorflow-datasets data into the shared VTAB-1k folder layout "
            "(<data-dir>/<task>/{train800,val200,train800val200,test}.txt and images/). Reading "
            "prepared TFDS data needs no TensorFlow; --download runs tfds' download_and_prepare, which "
            "needs TensorFlow and internet access (and manual downloads for resisc45 and "
            "diabetic_retinopathy)."
        ),
    )
    p.add_argument("--tasks", default="all", help="task names, groups (natural, specialized, structured) or 'all', comma-separated")
    p.add_argument("--data-dir", default="data/vtab-1k", help="where to write the folders (default data/vtab-1k)")
    p.add_argument("--tfds-dir", help="tensorflow-datasets data_dir holding the prepared builders")
    p.add_argument("--download", action="store_true", help="download and prepare missing TFDS data (needs TensorFlow)")
    p.add_argument("--overwrite", action="store_true", help="rewrite task folders that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare_vtab)


def _list_tasks(args: argparse.Namespace) -> int:
    from .data import TASKS

    print(f"{'task':<22}{'group':<13}{'classes':>8}  tfds builder")
    for task in TASKS:
        aliases = f" (alias {', '.join(task.aliases)})" if task.aliases else ""
        print(f"{task.name:<22}{task.group:<13}{task.num_classes:>8}  {task.tfds_name}{aliases}")
    return 0


# ----------------------------------------------------------------------------- adapters
def _allocator_line(steps: int | None, rounds: int | None) -> str:
    if steps is None:
        return "allocator: not recorded (file written before allocator steps were saved)"
    line = f"allocator: {steps} steps, {rounds} rounds"
    if steps == 0:
        line += " (the ranks never moved: was RankAllocator.step called after each optimizer step?)"
    return line


def _inspect_adapter(args: argparse.Namespace) -> int:
    from .core import read_adapter_metadata

    meta = read_adapter_metadata(args.path)
    pattern = meta["rank_pattern"]
    print(f"method: {meta['method']}  adapters: {len(pattern)}  total rank: {sum(pattern.values())}")
    if meta["modules_to_save"]:
        print(f"also saved: {', '.join(meta['modules_to_save'])}")
    if meta["method"] == "elalora":
        print(_allocator_line(meta["allocator_steps"], meta["allocator_rounds"]))
    width = max(len(n) for n in pattern)
    for name, rank in pattern.items():
        print(f"  {name:<{width}}  {rank:>3}  {'#' * rank}")
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0


# ----------------------------------------------------------------------------- sweep
SWEEP_EXAMPLES = """examples:
  elalora-vit vtab-sweep --dry-run                                   # all 19 tasks x 5 methods, seed 0
  elalora-vit vtab-sweep --tasks natural dtd --methods elalora lora --seeds 0 1 2
  elalora-vit vtab-sweep --shard $SLURM_ARRAY_TASK_ID/8              # with sbatch --array=1-8
  elalora-vit vtab-sweep --set data.train_split=train800 --set data.eval_split=val200 --output runs/vtab-val
  accelerate launch --multi_gpu --num_processes 4 -m elalora_vit.cli vtab-sweep --shard 1/2   # each run on 4 GPUs
  elalora-vit vtab-report runs/vtab
"""


def _vtab_sweep(args: argparse.Namespace) -> int:
    from .sweep import parse_shard, plan_sweep, run_sweep, shard_runs
    from .sweep.plan import DEFAULT_PRESETS, describe_plan
    from .sweep.runner import is_main_process
    from .train.config import parse_override

    overrides = dict(parse_override(text) for text in args.set or [])
    if args.no_progress:
        overrides["progress"] = False
    presets = None if args.presets == "none" else (args.presets or DEFAULT_PRESETS)
    runs = plan_sweep(args.tasks, args.methods, args.seeds, output=args.output, config=args.config,
                      overrides=overrides, presets=presets)
    total = len(runs)
    if args.shard:
        runs = shard_runs(runs, *parse_shard(args.shard))
    if args.dry_run:
        print(describe_plan(runs, total, args.shard))
        return 0
    summary = run_sweep(runs, report_dir=None if args.no_report else args.output)
    if is_main_process():
        print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def _vtab_report(args: argparse.Namespace) -> int:
    from .sweep import write_report

    paths = write_report(args.dir)
    print(f"wrote {paths['markdown']} and {paths['csv']} ({len(paths) - 2} figures)")
    return 0


def _add_sweep(sub) -> None:
    from .sweep.plan import DEFAULT_OUTPUT

    p = sub.add_parser(
        "vtab-sweep",
        help="run every VTAB-1k task x method x seed, resumably, and report them in one table",
        description=(
            "Train each task x method x seed with the same code as 'elalora-vit train', each into "
            "<output>/<task>/<method>/seed<seed>. Settings: built-in defaults, then the task's preset "
            "(configs/vtab/<task>.yaml), then --config, then --set. Finished runs (result.json) are skipped and "
            "interrupted ones resume from their last epoch, so the same command continues a killed sweep. A failing "
            "run is recorded in failed.json and the sweep goes on; the exit code is 1 if any run failed. At the "
            "end, the report of everything under <output> is written (see vtab-report)."
        ),
        epilog=SWEEP_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK",
                   help="task names or aliases, groups (natural, specialized, structured) or 'all' (default)")
    p.add_argument("--methods", nargs="+", default=["all"], metavar="METHOD",
                   help="elalora, lora, adalora, full, linear, or 'all' (default)")
    p.add_argument("--seeds", nargs="+", default=["0"], metavar="SEED", help="random seeds (default 0)")
    p.add_argument("--config", metavar="FILE", help="YAML applied to every run, over the per-task presets")
    p.add_argument("--output", metavar="DIR", default=DEFAULT_OUTPUT, help=f"sweep folder (default {DEFAULT_OUTPUT})")
    p.add_argument("--shard", metavar="I/N",
                   help="do only shard I of N (1-based; round-robin over the ordered run list), e.g. for Slurm arrays")
    p.add_argument("--dry-run", action="store_true", help="list the runs, their folders and status (done/partial/new); run nothing")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key for every run (repeatable)")
    p.add_argument("--presets", metavar="DIR",
                   help="folder of per-task presets <task>.yaml (default: the repository's configs/vtab; 'none': no presets)")
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_vtab_sweep)

    r = sub.add_parser(
        "vtab-report",
        help="gather the results under a sweep folder into results.csv, results.md and figures",
        description=(
            "Read every result.json under DIR (and failed.json of runs that failed) and write DIR/results.csv, "
            "DIR/results.md and figures: top-1 per task (mean +- std over seeds), group means, the mean of group "
            "means (the VTAB-1k headline), the 19-task mean, trainable parameters, final ranks, wall time, and "
            "the published ViT-B/16 rows for reference. Partial sweeps are reported over the tasks present."
        ),
    )
    r.add_argument("dir", metavar="DIR", help="the --output folder of vtab-sweep (or any folder of run folders)")
    r.set_defaults(func=_vtab_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elalora-vit",
        description="ElaLoRA: elastic low-rank adaptation of Vision Transformers (prune and expand ranks while training).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(sub)
    _add_prepare(sub)
    _add_sweep(sub)
    tasks = sub.add_parser("list-tasks", help="list the 19 VTAB-1k tasks", description="List the VTAB-1k task registry.")
    tasks.set_defaults(func=_list_tasks)
    inspect = sub.add_parser(
        "inspect-adapter",
        help="show the rank pattern and metadata of a saved adapter file",
        description="Print the per-adapter ranks stored in an adapter .safetensors file.",
    )
    inspect.add_argument("path", help="adapter file written by training or save_adapters()")
    inspect.add_argument("--json", action="store_true", help="also print the full metadata as JSON")
    inspect.set_defaults(func=_inspect_adapter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except Exception as err:
        if args.verbose or not _is_user_error(err):
            raise
        print(f"elalora-vit {args.command}: error: {err}", file=sys.stderr)
        return 2


def _is_user_error(err: Exception) -> bool:
    """Errors that explain themselves (bad input, missing files, a run that had to stop):
    printed as one line instead of a traceback."""
    from .train.loop import TrainingError

    return isinstance(err, (ValueError, OSError, TrainingError))


if __name__ == "__main__":
    sys.exit(main())
