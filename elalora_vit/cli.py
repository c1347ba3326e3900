"""The ``elalora-vit`` command line.

    elalora-vit train --task cifar100 --rank 8
    elalora-vit prepare-vtab --tasks natural --data-dir data/vtab-1k
    elalora-vit list-tasks
    elalora-vit inspect-adapter runs/cifar/elalora/seed0/adapter.safetensors
    elalora-vit evaluate runs/cifar/elalora/seed0 --split val200
    elalora-vit predict runs/cifar/elalora/seed0 photo.jpg --top-k 3
    elalora-vit export runs/cifar/elalora/seed0 --format timm --out exported/cifar-timm

Several GPUs: ``accelerate launch --multi_gpu --num_processes N -m elalora_vit.cli train ...``;
several CPU processes: ``torchrun --standalone --nproc_per_node N -m elalora_vit.cli train ...``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
    """The settings the flags and --set give.  Numeric flags stay text here: the config
    converts them as it converts --set values (any float() spelling, ``--epochs 1e2``)
    and names the key when one does not fit."""
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
    if args.log_to:
        overrides["log_to"] = args.log_to
    for text in args.set or []:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def _train(args: argparse.Namespace) -> int:
    from .train import load_config, train
    from .train.summary import summary_lines

    cfg = load_config(args.config, _train_overrides(args))
    if args.dry_run:
        from .train.dry_run import dry_run

        print("\n".join(dry_run(cfg, resume=args.resume, overwrite=args.overwrite)))
        return 0
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)  # Ctrl-C: see stopped_line
    if _is_main_process():  # under torchrun / accelerate every process gets here; one prints
        print("\n".join(summary_lines(result)))
        print(json.dumps({k: result[k] for k in RESULT_LINE_KEYS}))
    return 0


RESULT_LINE_KEYS = ("task", "method", "seed", "eval_split", "accuracy", "trainable_params", "total_rank")


def stopped_line(command: str, argv: Sequence[str], stop: KeyboardInterrupt) -> str:
    """The one line Ctrl-C prints: where the run stopped and the command that continues it."""
    import shlex

    from .train.errors import RunInterrupted

    where = stop.where() if isinstance(stop, RunInterrupted) else "stopped (Ctrl-C)"
    if command == "train":
        return f"{where}; continue with `{resume_command(argv)}`"
    if command == "vtab-sweep":
        return (f"{where}; continue with `{shlex.join(['elalora-vit', *argv])}` "
                "(finished runs are skipped, the interrupted one resumes)")
    return f"elalora-vit {command}: {where}"


def resume_command(argv: Sequence[str]) -> str:
    """The command line the user typed, with ``--resume`` (and without ``--overwrite``)."""
    import shlex

    args = [a for a in argv if a != "--overwrite"]
    return shlex.join(["elalora-vit", *args, *([] if "--resume" in args else ["--resume"])])


def _is_main_process() -> bool:
    from .sweep.runner import is_main_process

    return is_main_process()


def _add_train(sub) -> None:
    from .core.config import field_docs
    from .data import SOURCES
    from .train.config import METHODS, PRECISIONS, AdapterConfig
    from .train.tracking import TRACKERS
    from .vit import DEFAULT_MODEL

    p = sub.add_parser(
        "train",
        help="fine-tune a timm ViT on one VTAB-1k task",
        description=(
            "Fine-tune a timm ViT on one VTAB-1k task with ElaLoRA or a baseline, then evaluate "
            "top-1 accuracy. Settings come from the built-in defaults, then --config, then the flags "
            "below, then --set KEY=VALUE (any config key, e.g. adapter.b=2). Outputs go to "
            "runs/<task>/<method>/seed<seed> unless --output says otherwise: config.yaml, metrics.jsonl, "
            "result.json and checkpoint.pt (written every epoch; --resume continues from it); elalora, lora and "
            "adalora also write adapter.safetensors, rank_history.json and rank_heatmap.png (elalora and adalora "
            "also rank_evolution.png and importance_scores.png); full and linear "
            "write trained.safetensors. 'elalora-vit evaluate' adds eval-<split>.json. A folder holding a run is never overwritten "
            "without --resume or --overwrite. Ctrl-C stops with exit code 130 and prints the command that "
            "continues the run."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/default.yaml for every key)")
    p.add_argument("--task", help="VTAB-1k task, e.g. cifar (alias cifar100: outputs use the name cifar), dtd, kitti; "
                                  "'elalora-vit list-tasks'")
    p.add_argument("--method", choices=METHODS, help="elalora (default), lora, adalora, full, linear")
    rank_doc, rank_default = field_docs(AdapterConfig)["rank"], AdapterConfig().rank
    p.add_argument("--rank", help=f"adapter rank r per adapter: {rank_doc}; default {rank_default}")
    p.add_argument("--model", help=f"timm model name (default {DEFAULT_MODEL})")
    p.add_argument("--checkpoint", metavar="PATH", help="local backbone weights (.npz, .safetensors, .pth) for offline machines")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (tests and demos only)")
    p.add_argument("--data-source", choices=SOURCES, help="where images come from (default folder)")
    p.add_argument("--data-dir", metavar="DIR", help="root of the VTAB-1k folder layout (default data/vtab-1k)")
    p.add_argument("--tfds-dir", metavar="DIR", help="tensorflow-datasets data_dir for --data-source tfds")
    p.add_argument("--image-size", help="input resolution (default: the model's, 224)")
    p.add_argument("--output", metavar="DIR", help="output folder (default runs/{task}/{method}/seed{seed})")
    p.add_argument("--epochs", help="training epochs (default 100)")
    p.add_argument("--batch-size", help="batch size per process and step (default 64); with N processes a step sees N x this")
    p.add_argument("--lr", help="peak learning rate (default 1e-3)")
    p.add_argument("--precision", choices=PRECISIONS, help="fp32 (default), bf16, or fp16 (CUDA, with a GradScaler)")
    p.add_argument("--seed", help="random seed (default 0)")
    p.add_argument("--eval-every", metavar="N", help="also evaluate every N epochs (default: at the end only)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output folder from its checkpoint.pt; with no checkpoint there, "
                        "say so and start a fresh run; a finished run gives its result again (same settings only)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run files in the output folder and start afresh (without --resume or "
                        "--overwrite, a folder holding a checkpoint, metrics or a result is refused)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, data, weights and output folder and print the plan (steps, schedule, "
                        "rounds, trainable parameters, memory estimate); train nothing")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key (repeatable); values are YAML, numbers in any spelling: "
                        "--set optim.lr=3e-3 --set optim.epochs=1e2 --set data.mean=[0.5,0.5,0.5]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log-to", choices=TRACKERS, help="also log the loss, LR, ranks and figures to tensorboard "
                   "(<output>/tensorboard) or wandb; imported only when chosen (default none)")
    p.set_defaults(func=_train)


# ----------------------------------------------------------------------------- data
def _prepare_vtab(args: argparse.Namespace) -> int:
    from .data import parse_task_list, prepare_vtab

    folders = prepare_vtab(
        parse_task_list(args.tasks),
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
            "prepared TFDS data (array_record files) needs no TensorFlow; --download runs tfds' "
            "download_and_prepare, which needs internet access and pip install tensorflow "
            "importlib_resources (and manual downloads for resisc45 and diabetic_retinopathy)."
        ),
    )
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK",
                   help="task names or aliases, groups (natural, specialized, structured) or 'all' (default), "
                        "separated by spaces or commas")
    p.add_argument("--data-dir", default="data/vtab-1k", help="where to write the folders (default data/vtab-1k)")
    p.add_argument("--tfds-dir", help="tensorflow-datasets data_dir holding the prepared builders")
    p.add_argument("--download", action="store_true", help="download and prepare missing TFDS data (needs pip install tensorflow importlib_resources)")
    p.add_argument("--overwrite", action="store_true", help="rewrite task folders that already exist")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare_vtab)


def _check_data(args: argparse.Namespace) -> int:
    from .data.check import check_data, format_checks
    from .data.tasks import selected_tasks

    checks = check_data(selected_tasks(args.tasks), source=args.data_source, data_dir=args.data_dir,
                        tfds_dir=args.tfds_dir, full=not args.fast)
    print(format_checks(checks))
    bad = [c.task for c in checks if not c.ok]
    print(f"\n{len(checks) - len(bad)} of {len(checks)} tasks pass" + (f"; violations in {', '.join(bad)}" if bad else ""))
    return 1 if bad else 0


def _add_check_data(sub) -> None:
    p = sub.add_parser(
        "check-data",
        help="check prepared VTAB-1k data against the benchmark (sizes, labels, classes, decoding, test overlap)",
        description=(
            "Check each task's split sizes (800 / 200 / 1000 / the task's test size), that train800val200 is "
            "train800 then val200, that no list repeats an image, labels are in range and every class is in "
            "train800val200, that every image decodes and no test image is byte-identical to a training image; "
            "print a table per task with the list files' SHA-256. Exit code 1 on any violation."
        ),
    )
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK", help="task names, groups or 'all' (default)")
    p.add_argument("--data-source", choices=("folder", "tfds"), default="folder", help="folder layout (default) or tfds")
    p.add_argument("--data-dir", default="data/vtab-1k", metavar="DIR", help="root of the folder layout (default data/vtab-1k)")
    p.add_argument("--tfds-dir", metavar="DIR", help="tensorflow-datasets data_dir for --data-source tfds")
    p.add_argument("--fast", action="store_true", help="list files only: skip decoding and the test-overlap check")
    p.set_defaults(func=_check_data)


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
    from .core.registry import get_method, method_names
    from .use.rebuild import read_weights_metadata

    meta = read_weights_metadata(args.path)
    pattern = meta.get("rank_pattern")
    if pattern is not None:
        print(f"method: {meta['method']}  adapters: {len(pattern)}  total rank: {sum(pattern.values())}")
    else:
        count = sum(math.prod(shape) for shape in meta["tensors"].values())
        print(f"method: {meta['method']}  trained weights: {len(meta['tensors'])} tensors, {count} parameters")
    if meta.get("timm_name"):
        print(f"model: {meta['timm_name']} {meta['model_kwargs']}  classes: {meta['num_classes']}  task: {meta['task']}")
    if meta.get("backbone_fingerprint"):
        print(f"backbone fingerprint: {meta['backbone_fingerprint']}")
    if meta["modules_to_save"]:
        print(f"also saved: {', '.join(meta['modules_to_save'])}")
    layers = meta.get("layers") if isinstance(meta.get("layers"), dict) else {}  # adapter files only
    excluded = [f"{name}.{part}" for name, info in layers.items() for part in info.get("excluded_parts", [])]
    if excluded:
        print(f"excluded parts (not adapted, rank 0): {', '.join(excluded)}")
    if meta["method"] in method_names() and get_method(meta["method"]).allocator is not None:  # ranks move
        print(_allocator_line(meta.get("allocator_steps"), meta.get("allocator_rounds")))
    width = max((len(n) for n in pattern or ()), default=0)
    for name, rank in (pattern or {}).items():
        print(f"  {name:<{width}}  {rank:>3}  {'#' * rank}")
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0


# ----------------------------------------------------------------------------- using a trained run
def _evaluate(args: argparse.Namespace) -> int:
    from .use import evaluate_run

    result = evaluate_run(args.run_dir, split=args.split, source=args.data_source, data_dir=args.data_dir,
                          tfds_dir=args.tfds_dir, num_workers=args.num_workers)
    print(json.dumps(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from .use import predict_images

    predictions = predict_images(args.run_dir, args.images, top_k=args.top_k)
    for p in predictions:
        if args.json:
            print(json.dumps(p.to_dict()))
        elif p.error:
            print(f"error: {p.error}", file=sys.stderr)
        else:
            best = ", ".join(f"{c['name']} {c['probability']:.3f}" for c in p.top_k)
            print(f"{p.image}: {best}")
    return 1 if any(p.error for p in predictions) else 0


def _export(args: argparse.Namespace) -> int:
    from .export import export_run

    out = export_run(args.run_dir, args.out, args.format, overwrite=args.overwrite)
    print(f"wrote {args.format} export to {out}")
    return 0


def _add_use(sub) -> None:
    from .export import FORMATS

    e = sub.add_parser(
        "evaluate", help="top-1 of a finished run on a split (writes eval-<split>.json)",
        description=("Rebuild the run's model from RUN_DIR/config.yaml and its saved weights, evaluate top-1 on "
                     "the split, print one JSON line and write RUN_DIR/eval-<split>.json (result.json is never "
                     "touched). Data flags default to the run's own."),
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output folder")
    e.add_argument("--split", help="train800, val200, train800val200 or test (default: the run's eval split)")
    e.add_argument("--data-source", choices=("folder", "tfds", "digits"), help="where images come from")
    e.add_argument("--data-dir", metavar="DIR", help="root of the VTAB-1k folder layout")
    e.add_argument("--tfds-dir", metavar="DIR", help="tensorflow-datasets data_dir for --data-source tfds")
    e.add_argument("--num-workers", type=int, help="data loader workers")
    e.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "predict", help="top-k classes of a finished run for image files",
        description=("Top-k classes with probabilities (and class names where the task has them) for each image, "
                     "preprocessed as the run was trained. An image that cannot be read is reported, naming the "
                     "file, and the others are still predicted (exit code 1 if any failed)."),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output folder")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=_predict)

    x = sub.add_parser(
        "export", help="a finished run as a plain timm model folder or a PEFT LoRA adapter",
        description=("--format timm: the merged backbone and head in timm's own layout (config.json + "
                     "model.safetensors), loaded with timm.create_model('local-dir:DIR', pretrained=True). "
                     "--format peft: adapter_config.json + adapter_model.safetensors, loaded onto the unpatched "
                     "backbone with peft.PeftModel.from_pretrained(base, DIR) (adapter methods only)."),
    )
    x.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output folder")
    x.add_argument("--format", required=True, choices=FORMATS, help="timm or peft")
    x.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    x.set_defaults(func=_export)


# ----------------------------------------------------------------------------- sweep
SWEEP_EXAMPLES = """examples:
  elalora-vit vtab-sweep --dry-run                                   # all 19 tasks x 5 methods, seed 0
  elalora-vit vtab-sweep --tasks natural dtd --methods elalora lora --seeds 0 1 2
  elalora-vit vtab-sweep --shard $SLURM_ARRAY_TASK_ID/8              # with sbatch --array=1-8
  elalora-vit vtab-sweep --tasks dtd --methods elalora --grid adapter.b=2,4,8   # a study: one variant per value
  elalora-vit vtab-sweep --set data.train_split=train800 --set data.eval_split=val200 --output runs/vtab-val
  accelerate launch --multi_gpu --num_processes 4 -m elalora_vit.cli vtab-sweep --shard 1/2   # each run on 4 GPUs
  elalora-vit vtab-report runs/vtab
"""


def _vtab_sweep(args: argparse.Namespace) -> int:
    from .data.tasks import parse_task_list
    from .sweep import plan_sweep, run_sweep
    from .sweep.grid import parse_grid
    from .sweep.plan import DEFAULT_PRESETS, describe_plan
    from .sweep.preflight import preflight
    from .sweep.runner import is_main_process
    from .train.config import parse_override

    overrides = dict(parse_override(text) for text in args.set or [])
    if args.no_progress:
        overrides["progress"] = False
    presets = None if args.presets == "none" else (args.presets or DEFAULT_PRESETS)
    tasks = parse_task_list(args.tasks)
    plan = dict(output=args.output, config=args.config, overrides=overrides, presets=presets,
                grid=parse_grid(args.grid or []))
    runs = plan_sweep(tasks, args.methods, args.seeds, shard=args.shard, **plan)
    if args.dry_run:
        from .sweep.checks import check_runs

        total = len(plan_sweep(tasks, args.methods, args.seeds, **plan)) if args.shard else len(runs)
        print(describe_plan(runs, total, args.shard))
        lines, ok = check_runs(runs)
        print("\n".join(lines))
        return 0 if ok else 1
    preflight(runs)  # broken data stops the sweep before its first run
    summary = run_sweep(runs, report_dir=None if args.no_report else args.output)
    if is_main_process():
        print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def _vtab_report(args: argparse.Namespace) -> int:
    from .sweep import write_report

    paths = write_report(args.dir, mix_protocols=args.mix_protocols)
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
                   help="task names or aliases, groups (natural, specialized, structured) or 'all' (default), "
                        "separated by spaces or commas")
    p.add_argument("--methods", nargs="+", default=["all"], metavar="METHOD",
                   help="elalora, lora, adalora, full, linear, or 'all' (default)")
    p.add_argument("--seeds", nargs="+", default=["0"], metavar="SEED", help="random seeds (default 0)")
    p.add_argument("--config", metavar="FILE", help="YAML applied to every run, over the per-task presets")
    p.add_argument("--output", metavar="DIR", default=DEFAULT_OUTPUT, help=f"sweep folder (default {DEFAULT_OUTPUT})")
    p.add_argument("--shard", metavar="I/N",
                   help="do only shard I of N (1-based; round-robin over the ordered run list), e.g. for Slurm arrays")
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs, their folders and status (done/partial/new), and check every task's data and "
                        "the backbone's weights; run nothing (exit code 1 if a check fails)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key for every run (repeatable)")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2",
                   help="run every combination of these values as variants of each method, e.g. --grid adapter.b=2,4 "
                        "--grid adapter.k=1,2 (repeatable; also a 'grid:' mapping in --config); each variant has "
                        "its own folder and report column, named like elalora[adapter.b=2,adapter.k=1]")
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
    r.add_argument("--mix-protocols", action="store_true",
                   help="average runs whose recorded protocols differ (refused by default; results.md lists the keys)")
    r.set_defaults(func=_vtab_report)


# ----------------------------------------------------------------------------- tune
def _vtab_tune(args: argparse.Namespace) -> int:
    from .sweep.plan import DEFAULT_PRESETS, parse_shard
    from .sweep.runner import is_main_process
    from .sweep.tune import plan_tune, run_tune
    from .train.config import parse_override

    overrides = dict(parse_override(text) for text in args.set or [])
    if args.no_progress:
        overrides["progress"] = False
    presets = None if args.presets == "none" else (args.presets or DEFAULT_PRESETS)
    plan = plan_tune(args.tasks, args.methods, args.seeds, search_space=args.search_space, output=args.output,
                     config=args.config, overrides=overrides, presets=presets, budget_match=args.budget_match)
    shard = parse_shard(args.shard) if args.shard else None
    if args.dry_run:
        from .sweep.tune import dry_run_tune

        lines, ok = dry_run_tune(plan, stage=args.stage, shard=shard)
        print("\n".join(lines))
        return 0 if ok else 1
    summary = run_tune(plan, stage=args.stage, shard=shard, report=not args.no_report)
    if is_main_process():
        print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def _add_tune(sub) -> None:
    from .sweep.tune import DEFAULT_SEARCH, RULE

    p = sub.add_parser(
        "vtab-tune",
        help="the VTAB-1k protocol: choose hyper-parameters on train800 -> val200, then train800val200 -> test",
        description=(
            "Stage 1 trains every task x method x setting of --search-space on train800 and evaluates on val200 "
            "(one seed, the first of --seeds) into <output>/stage1. The best setting per task x method "
            f"({RULE}) is written to <output>/chosen/<task>/<method>.yaml with the validation table beside it. "
            "Stage 2 trains the chosen settings on train800val200 for every seed and tests into <output>/stage2, "
            "with its report. Resumable and shardable like vtab-sweep; stage 1 never reads the test split."
        ),
    )
    p.add_argument("--tasks", nargs="+", default=["all"], metavar="TASK", help="task names, groups or 'all' (default)")
    p.add_argument("--methods", nargs="+", default=["all"], metavar="METHOD", help="methods or 'all' (default)")
    p.add_argument("--seeds", nargs="+", default=["0", "1", "2"], metavar="SEED",
                   help="stage-2 seeds (default 0 1 2); stage 1 uses the first")
    p.add_argument("--search-space", metavar="FILE", default=str(DEFAULT_SEARCH),
                   help="search-space YAML (default configs/search/default.yaml)")
    p.add_argument("--stage", choices=("1", "2", "all"), default="all", help="run stage 1, stage 2 or both (default)")
    p.add_argument("--config", metavar="FILE", help="YAML applied to every run, over the per-task presets")
    p.add_argument("--output", metavar="DIR", default="runs/vtab-tune", help="tuning folder (default runs/vtab-tune)")
    p.add_argument("--shard", metavar="I/N", help="do only shard I of N of each stage (1-based), e.g. for Slurm arrays")
    p.add_argument("--dry-run", action="store_true",
                   help="list stage 1's settings and runs and the stage-2 runs whose choice is made, with their "
                        "status, and check their data and weights as vtab-sweep --dry-run does; run and write "
                        "nothing (exit code 1 if a check fails)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config key for every run")
    p.add_argument("--presets", metavar="DIR", help="folder of per-task presets (default configs/vtab; 'none': none)")
    p.add_argument("--budget-match", action="store_true",
                   help="stage 2 trains LoRA at the rank whose trainable parameters match ElaLoRA's chosen run")
    p.add_argument("--no-report", action="store_true", help="do not write the stage-2 report")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_vtab_tune)


class _ExactFlags(argparse.ArgumentParser):
    """A parser that takes flags only as spelled: argparse's default accepts any
    unambiguous prefix (``--stag`` for ``--stage``), so a misspelt command in a
    script or a doc would run, and a later flag sharing the prefix would break it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _ExactFlags(
        prog="elalora-vit",
        description="ElaLoRA: elastic low-rank adaptation of Vision Transformers (prune and expand ranks while training).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_ExactFlags)
    _add_train(sub)
    _add_prepare(sub)
    _add_check_data(sub)
    _add_sweep(sub)
    _add_tune(sub)
    _add_use(sub)
    tasks = sub.add_parser("list-tasks", help="list the 19 VTAB-1k tasks", description="List the VTAB-1k task registry.")
    tasks.set_defaults(func=_list_tasks)
    inspect = sub.add_parser(
        "inspect-adapter",
        help="show the method, rank pattern and metadata of a run's weight file",
        description=("Print the method, the model it rebuilds on, the backbone fingerprint and the per-adapter "
                     "ranks of an adapter .safetensors file, or the tensors of a full/linear run's "
                     "trained.safetensors."),
    )
    inspect.add_argument("path", help="adapter.safetensors or trained.safetensors written by training, or save_adapters()")
    inspect.add_argument("--json", action="store_true", help="also print the full metadata as JSON")
    inspect.set_defaults(func=_inspect_adapter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    # Under torchrun / accelerate, only the main process reports; the others say only errors.
    level = logging.DEBUG if args.verbose else logging.INFO if _is_main_process() else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt as stop:
        if _is_main_process():
            print(stopped_line(args.command, args.argv, stop), file=sys.stderr)
        return 130
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
