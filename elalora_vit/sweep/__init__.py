"""VTAB-1k sweeps: every task x method x seed through the same ``train``, resumable
and shardable, and the report that gathers their results into one table.

    runs = plan_sweep("natural", "elalora,lora", [0, 1, 2], output="runs/vtab", shard="1/4")
    summary = run_sweep(runs, report_dir="runs/vtab")
    write_report("runs/vtab")         # results.csv, results.md, figures

- `plan`: which runs, their layered settings, shards, and each run's status.
- `runner`: trains them in order, skipping finished ones, resuming interrupted
  ones, recording failures in ``failed.json`` and going on.
- `results`: gathers ``result.json`` files into per-task cells and VTAB aggregates.
- `report`: writes the files people read: `results_csv`, `markdown` (with `tables`, all
  formatted by `formatting`), `figures`, next to the `published` numbers; `protocols`
  refuses to average runs of different recorded protocols, `stats` gives paired
  differences over seeds with t-intervals.
- `tune`: ``vtab-tune``, the protocol end to end (val200 choice, then test) on top of
  `plan` and `runner`; `budget` matches LoRA's rank to ElaLoRA's parameters;
  `preflight` checks the data before any run.
"""

from .plan import DEFAULT_OUTPUT, DEFAULT_PRESETS, SweepRun, parse_shard, plan_sweep, shard_runs
from .report import CSV_COLUMNS, WALL_TIME_COLUMNS, write_report
from .results import Results, collect_results
from .runner import SweepSummary, run_sweep

__all__ = [
    "CSV_COLUMNS",
    "DEFAULT_OUTPUT",
    "DEFAULT_PRESETS",
    "Results",
    "SweepRun",
    "SweepSummary",
    "WALL_TIME_COLUMNS",
    "collect_results",
    "parse_shard",
    "plan_sweep",
    "run_sweep",
    "shard_runs",
    "write_report",
]
