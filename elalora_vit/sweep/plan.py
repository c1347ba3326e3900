"""Which runs a sweep does, with which settings, and where they write.

A sweep is the product tasks x methods x seeds, in table order (tasks as in
`TASKS`, methods as in `METHODS`, seeds ascending).  Each run writes into
``<output>/<task>/<method>/seed<seed>``, and its settings are layered:

    built-in defaults < configs/vtab/<task>.yaml < --config FILE < --set KEY=VALUE

with the run's own task, method, seed and output folder set last.  A grid
(:mod:`.grid`) adds variants of each method, ``<output>/<task>/<method>[<values>]/seed<seed>``,
after its default setting.  A shard
``I/N`` takes every N-th run of that list starting at the I-th, so shards are
disjoint, together complete, and the same on every machine given the same
selection.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ..core.config import ConfigError
from ..data.tasks import parse_task_list
from ..config import METHODS, TrainConfig, load_config, read_yaml
from ..train.run_files import RunFiles
from .grid import GRID_KEY, Variant, expand_grid, grid_from_config

DEFAULT_OUTPUT = "runs/vtab"
DEFAULT_PRESETS = Path(__file__).resolve().parents[2] / "configs" / "vtab"
"""The repository's per-task presets (present in a clone or an editable install)."""

FAILED = "failed.json"
SWEEP_KEYS = {
    "data.task": "--tasks",
    "method": "--methods",
    "seed": "--seeds",
    "output_dir": "--output",
}
"""Settings the sweep fills in per run, and the option that chooses them instead."""


@dataclass(frozen=True)
class SweepRun:
    """One task x method x seed of a sweep, with its resolved settings."""

    task: str
    method: str
    seed: int
    config: TrainConfig
    preset: Path | None = None
    variant: str = ""  # a grid variant's suffix, "[adapter.b=2,adapter.k=1]"; "" without a grid

    @property
    def label(self) -> str:
        """The method as the report names it: ``elalora``, ``elalora[adapter.b=2]``."""
        return self.method + self.variant

    @property
    def name(self) -> str:
        return f"{self.task}/{self.label}/seed{self.seed}"

    @property
    def output_dir(self) -> Path:
        return self.config.resolved_output_dir()

    @property
    def files(self) -> RunFiles:
        return RunFiles(self.output_dir)

    def status(self) -> str:
        """``done`` (has result.json), ``failed`` (its last attempt failed), ``partial``
        (has a checkpoint to resume from) or ``new``."""
        files = self.files
        if files.result.is_file():
            return "done"
        if (files.root / FAILED).is_file():
            return "failed"
        if files.checkpoint.is_file():
            return "partial"
        return "new"

    def epochs_done(self) -> int | None:
        """Epochs recorded in metrics.jsonl (the checkpoint holds this many, or one fewer
        when the run was killed between the two writes); None without a checkpoint."""
        files = self.files
        if not files.checkpoint.is_file():
            return None
        lines = [line for line in _read_lines(files.metrics) if line.strip()]
        try:
            return int(json.loads(lines[-1])["epoch"]) if lines else 0
        except (ValueError, KeyError, TypeError):
            return 0


def plan_sweep(
    tasks: str | Iterable[str] = "all",
    methods: str | Iterable[str] = "all",
    seeds: str | Iterable[int | str] = (0,),
    *,
    output: str | Path = DEFAULT_OUTPUT,
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    presets: str | Path | None = DEFAULT_PRESETS,
    shard: str | tuple[int, int] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
) -> list[SweepRun]:
    """The runs of a sweep (or of one shard of it), settings resolved.

    ``tasks``: names, aliases, groups (natural, specialized, structured) or ``all``;
    ``methods``: names or ``all``; ``seeds``: integers.  Each may be a list or a
    comma/space-separated string.  ``presets`` is the folder of per-task YAML
    files (``<task>.yaml``; None: no presets).  Invalid settings raise
    ``ConfigError`` here, before any run starts.  ``grid`` (dotted key -> values, and
    any ``grid:`` of the ``config`` file, which ``grid`` extends) expands each method
    into its variants (:mod:`.grid`), the default setting first.
    """
    overrides = dict(overrides or {})
    for key, option in SWEEP_KEYS.items():
        if key in overrides:
            raise ConfigError(f"the sweep sets {key!r} for each run; choose it with {option}, not --set")
    task_list = parse_task_list(tasks)
    method_list = select_methods(methods)
    seed_list = select_seeds(seeds)
    preset_dir = _preset_dir(presets)
    file_values = read_yaml(config) if config is not None else {}
    grid = {**grid_from_config(file_values.pop(GRID_KEY, None) or {}), **(grid or {})}
    variants = expand_grid(grid, SWEEP_KEYS)
    layered = config_overrides(file_values)

    runs = []
    for task in task_list:
        preset = preset_dir / f"{task}.yaml" if preset_dir is not None else None
        preset = preset if preset is not None and preset.is_file() else None
        for method in method_list:
            runs += _method_runs(task, method, seed_list, preset, variants, {**layered, **overrides}, output)
    if shard is not None:
        index, count = parse_shard(shard) if isinstance(shard, str) else shard
        runs = shard_runs(runs, index, count)
    return runs


def _method_runs(task: str, method: str, seeds: list[int], preset: Path | None, variants: Sequence[Variant],
                 settings: Mapping[str, Any], output: str | Path) -> list[SweepRun]:
    """The runs of one task and method: its default setting, then each grid variant that
    applies to it and does not resolve to the default's settings (run once, as the default)."""
    runs, defaults = [], {}
    for variant in (v for v in variants if v.applies_to(method)):
        for seed in seeds:
            run = _resolved(SweepRun(task, method, seed, TrainConfig(), preset, variant.suffix),
                            {**settings, **variant.overrides()}, output)
            if not variant.settings:
                defaults[seed] = run
            elif _same_settings(run, defaults[seed]):
                continue
            runs.append(run)
    return runs


def _same_settings(run: SweepRun, other: SweepRun) -> bool:
    return dataclasses.replace(run.config, output_dir="") == dataclasses.replace(other.config, output_dir="")


def _resolved(run: SweepRun, settings: Mapping[str, Any], output: str | Path) -> SweepRun:
    """``run`` with its settings loaded: ``settings``, then its task, method, seed and folder."""
    folder = Path(output) / run.task / run.label / f"seed{run.seed}"
    per_run = {
        **settings,
        "data.task": run.task,
        "method": run.method,
        "seed": run.seed,
        "output_dir": str(folder).replace("{", "{{").replace("}", "}}"),
    }
    try:
        cfg = load_config(run.preset, per_run)
    except ConfigError as err:
        where = f" (preset {run.preset})" if run.preset else ""
        raise ConfigError(f"settings of {run.name}{where}: {err}") from err
    return dataclasses.replace(run, config=cfg)


def shard_runs(runs: Sequence[SweepRun], index: int, count: int) -> list[SweepRun]:
    """Shard ``index`` of ``count`` (1-based): runs ``index-1``, ``index-1+count``, ...
    Round-robin spreads each task's runs over the shards, which balances their length."""
    _check_shard(index, count, f"{index}/{count}")
    return list(runs[index - 1 :: count])


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/4"`` -> ``(2, 4)``: the second of four shards (1-based, as Slurm array ids can be)."""
    index, sep, count = str(text).partition("/")
    try:
        parsed = int(index), int(count)
    except ValueError:
        parsed = None
    if not sep or parsed is None:
        raise ConfigError(f"--shard {text!r} must look like I/N, e.g. 1/4 for the first of four shards")
    _check_shard(*parsed, text)
    return parsed


def select_methods(methods: str | Iterable[str]) -> list[str]:
    """Method names in `METHODS` order; ``all`` selects the five."""
    chosen = set()
    for word in _words(methods):
        word = word.lower()
        if word == "all":
            chosen.update(METHODS)
        elif word in METHODS:
            chosen.add(word)
        else:
            raise ConfigError(f"unknown method {word!r}; choose from {', '.join(METHODS)} or 'all'")
    if not chosen:
        raise ConfigError("no methods selected; name methods or 'all'")
    return [m for m in METHODS if m in chosen]


def select_seeds(seeds: str | Iterable[int | str]) -> list[int]:
    """Distinct integer seeds, ascending."""
    try:
        chosen = sorted({int(word) for word in _words(seeds)})
    except ValueError as err:
        raise ConfigError(f"seeds must be integers, e.g. --seeds 0 1 2 ({err})") from None
    if not chosen:
        raise ConfigError("no seeds selected; e.g. --seeds 0 1 2")
    return chosen


def config_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """A config mapping as dotted overrides, one level into each section:
    ``{"optim": {"lr": 1e-3}}`` -> ``{"optim.lr": 1e-3}``.  Leaf mappings such as
    ``model.kwargs`` stay whole, so a --config value replaces a preset's."""
    sections = {f.name for f in dataclasses.fields(TrainConfig) if f.default_factory is not dataclasses.MISSING}
    dotted: dict[str, Any] = {}
    for key, value in values.items():
        if key in sections and isinstance(value, Mapping):
            dotted.update({f"{key}.{inner}": v for inner, v in value.items()})
        else:
            dotted[key] = value
    return dotted


# ----------------------------------------------------------------------------- helpers
def _words(values: str | Iterable[Any]) -> list[str]:
    items = [values] if isinstance(values, (str, int)) else list(values)
    return [word for item in items for word in str(item).replace(",", " ").split()]


def _preset_dir(presets: str | Path | None) -> Path | None:
    if presets is None:
        return None
    folder = Path(presets)
    if not folder.is_dir():
        if folder == DEFAULT_PRESETS:  # an installed package without the repository's configs/
            return None
        raise ConfigError(f"preset folder {folder} does not exist; pass the folder holding <task>.yaml files")
    return folder


def _check_shard(index: int, count: int, text: str) -> None:
    if count < 1 or not 1 <= index <= count:
        raise ConfigError(f"--shard {text}: need 1 <= I <= N (shards are numbered from 1), e.g. 1/4 ... 4/4")


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def describe_plan(runs: Sequence[SweepRun], total: int | None = None, shard: str | None = None) -> str:
    """What ``--dry-run`` prints: each run's status, folder and preset, then a count."""
    counts = {status: 0 for status in ("done", "partial", "failed", "new")}
    rows = []
    for run in runs:
        status = run.status()
        counts[status] += 1
        epochs = run.epochs_done()
        note = f" (epoch {epochs}/{run.config.optim.epochs})" if status in ("partial", "failed") and epochs else ""
        rows.append((status + note, run.name, str(run.output_dir), str(run.preset) if run.preset else "(none)"))
    which = f"shard {shard}: {len(runs)} of {total} runs" if shard else f"{len(runs)} runs"
    lines = [f"{which} ({', '.join(f'{n} {s}' for s, n in counts.items())}); nothing is run (--dry-run)"]
    labels = list(dict.fromkeys(run.label for run in runs if run.variant))
    if labels:
        lines.append(f"grid variants ({len(labels)}, each beside its method's default setting): " + ", ".join(labels))
    if rows:
        head = ("status", "run", "output", "preset")
        widths = [max(len(r[i]) for r in [head, *rows]) for i in range(3)]
        for row in [head, *rows]:
            lines.append("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[3])
        first = runs[0].config
        lines.append(
            f"settings of {runs[0].name}: model {first.model.name}, {first.data.train_split} -> {first.data.eval_split}, "
            f"{first.optim.epochs} epochs, batch {first.optim.batch_size}, lr {first.optim.lr:g}, "
            f"data {first.data.source}:{first.data.data_dir}"
        )
    return "\n".join(lines)
