"""The VTAB-1k benchmark commands: ``vtab-sweep``, ``vtab-report`` and ``vtab-tune``."""

from __future__ import annotations

import argparse
from pathlib import Path

SWEEP_EXAMPLES = """examples:
  elalora-vit vtab-sweep --dry-run                                   # all 19 tasks x 5 methods, seed 0
  elalora-vit vtab-sweep --tasks natural dtd --methods elalora lora --seeds 0 1 2
  elalora-vit vtab-sweep --shard $SLURM_ARRAY_TASK_ID/8              # with sbatch --array=1-8
  elalora-vit vtab-sweep --tasks dtd --methods elalora --grid adapter.b=2,4,8   # a study: one variant per value
  elalora-vit vtab-sweep --set data.train_split=train800 --set data.eval_split=val200 --output runs/vtab-val
  accelerate launch --multi_gpu --num_processes 4 -m elalora_vit.cli vtab-sweep --shard 1/2   # each run on 4 GPUs
  elalora-vit vtab-report runs/vtab
"""


def _overrides_and_presets(args: argparse.Namespace) -> tuple[dict, str | Path | None]:
    """The ``--set``/``--no-progress`` overrides and the ``--presets`` choice of vtab-sweep and vtab-tune."""
    from ..sweep.plan import DEFAULT_PRESETS
    from ..config import parse_override

    overrides = dict(parse_override(text) for text in args.set or [])
    if args.no_progress:
        overrides["progress"] = False
    presets = None if args.presets == "none" else (args.presets or DEFAULT_PRESETS)
    return overrides, presets


def _vtab_sweep(args: argparse.Namespace) -> int:
    from ..data.tasks import parse_task_list
    from ..sweep import plan_sweep, run_sweep
    from ..sweep.grid import parse_grid
    from ..sweep.plan import describe_plan
    from ..sweep.preflight import preflight
    from ..sweep.runner import is_main_process

    overrides, presets = _overrides_and_presets(args)
    tasks = parse_task_list(args.tasks)
    plan = dict(output=args.output, config=args.config, overrides=overrides, presets=presets,
                grid=parse_grid(args.grid or []))
    runs = plan_sweep(tasks, args.methods, args.seeds, shard=args.shard, **plan)
    if args.dry_run:
        from ..sweep.checks import check_runs

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
    from ..sweep import write_report

    paths = write_report(args.dir, mix_protocols=args.mix_protocols)
    print(f"wrote {paths['markdown']} and {paths['csv']} ({len(paths) - 2} figures)")
    return 0


def _add_sweep(sub) -> None:
    from ..sweep.plan import DEFAULT_OUTPUT

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


def _vtab_tune(args: argparse.Namespace) -> int:
    from ..sweep.plan import parse_shard
    from ..sweep.runner import is_main_process
    from ..sweep.tune import plan_tune, run_tune

    overrides, presets = _overrides_and_presets(args)
    plan = plan_tune(args.tasks, args.methods, args.seeds, search_space=args.search_space, output=args.output,
                     config=args.config, overrides=overrides, presets=presets, budget_match=args.budget_match)
    shard = parse_shard(args.shard) if args.shard else None
    if args.dry_run:
        from ..sweep.tune import dry_run_tune

        lines, ok = dry_run_tune(plan, stage=args.stage, shard=shard)
        print("\n".join(lines))
        return 0 if ok else 1
    summary = run_tune(plan, stage=args.stage, shard=shard, report=not args.no_report)
    if is_main_process():
        print("\n".join(summary.lines()))
    return 0 if summary.ok else 1


def _add_tune(sub) -> None:
    from ..sweep.tune import DEFAULT_SEARCH, RULE

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
