"""Gathering finished runs into per-task cells and the VTAB-1k aggregates.

One ``result.json`` is one run.  Runs of the same task and method form a cell
(mean ± std over seeds); a method's group mean is the plain mean of its task
means in that group, the VTAB headline is the mean of the three group means,
and the 19-task mean is the plain mean over tasks.  Every aggregate is over the
tasks present and says how many that is, so partial sweeps read honestly.
"""

from __future__ import annotations

from ..config import ConfigInputError, read_yaml_file

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from ..data.errors import UnknownTaskError
from ..data.tasks import GROUPS, get_task, task_names
from ..config import METHODS
from ..train.run_files import RunFiles
from .grid import base_method, is_variant
from .plan import FAILED
from .protocols import check_protocols

GROUP_NAMES: tuple[str, ...] = tuple(GROUPS)
TIE = 1e-9


@dataclass(frozen=True)
class RunResult:
    """The fields of one ``result.json`` the report uses."""

    task: str
    group: str
    method: str
    seed: int
    accuracy: float
    trainable_params: int | None
    total_rank: int | None
    rank_pattern: dict[str, int]
    wall_time_s: float | None
    eval_split: str
    model: str
    pretrained: bool
    initial_rank: int | None  # adapter.rank of the run's config.yaml
    train_split: str | None  # data.train_split of the run's config.yaml
    path: Path
    protocol: dict[str, Any] | None = None  # result.json's "protocol"; None in results written before it


@dataclass
class Cell:
    """One task x method: the runs of its seeds."""

    task: str
    group: str
    method: str
    runs: list[RunResult]

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    @property
    def accuracies(self) -> list[float]:
        return [r.accuracy for r in self.runs]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.accuracies)

    @property
    def std(self) -> float | None:
        """Sample standard deviation over seeds; None for a single seed."""
        return statistics.stdev(self.accuracies) if len(self.runs) > 1 else None

    @property
    def trainable_params(self) -> float | None:
        return _mean_or_none(r.trainable_params for r in self.runs)

    @property
    def total_rank(self) -> float | None:
        return _mean_or_none(r.total_rank for r in self.runs)

    @property
    def wall_time_s(self) -> float | None:
        return _mean_or_none(r.wall_time_s for r in self.runs)


@dataclass(frozen=True)
class Aggregate:
    """A mean over tasks: ``value`` over ``n_tasks`` of the ``of`` tasks it should cover."""

    value: float | None
    n_tasks: int
    of: int

    @property
    def complete(self) -> bool:
        return self.n_tasks == self.of


@dataclass
class Results:
    """Everything found under one folder."""

    root: Path
    runs: list[RunResult]
    failures: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mixed_protocols: dict[str, list[Any]] = field(default_factory=dict)  # key -> values, when --mix-protocols allowed it

    def __post_init__(self) -> None:
        self.cells: dict[tuple[str, str], Cell] = {}
        for run in sorted(self.runs, key=lambda r: (r.task, r.method, r.seed)):
            key = (run.task, run.method)
            self.cells.setdefault(key, Cell(run.task, run.group, run.method, [])).runs.append(run)

    # ------------------------------------------------------------------ axes
    @property
    def methods(self) -> list[str]:
        """Methods in `METHODS` order, each followed by its grid variants, best mean of
        group means first; then any others."""
        present = {method for _, method in self.cells}
        ordered = []
        for method in METHODS:
            variants = [m for m in present if is_variant(m) and base_method(m) == method]
            ordered += [method] if method in present else []
            ordered += sorted(variants, key=lambda m: (-(self.mean_of_groups(m).value or -1e9), m))
        return ordered + sorted(present - set(ordered))

    @property
    def tasks(self) -> list[str]:
        present = {task for task, _ in self.cells}
        return [t for t in task_names() if t in present]

    @property
    def eval_split(self) -> str | None:
        return self.runs[0].eval_split if self.runs else None

    def cell(self, task: str, method: str) -> Cell | None:
        return self.cells.get((task, method))

    # ------------------------------------------------------------ aggregates
    def group_mean(self, method: str, group: str) -> Aggregate:
        means = [c.mean for t in GROUPS[group] if (c := self.cell(t, method))]
        return Aggregate(statistics.fmean(means) if means else None, len(means), len(GROUPS[group]))

    def mean_of_groups(self, method: str) -> Aggregate:
        """The VTAB-1k headline: mean of the group means (over the groups present)."""
        groups = [self.group_mean(method, g) for g in GROUP_NAMES]
        present = [g.value for g in groups if g.value is not None]
        return Aggregate(statistics.fmean(present) if present else None, sum(g.n_tasks for g in groups), len(task_names()))

    def task_mean(self, method: str) -> Aggregate:
        means = [c.mean for t in task_names() if (c := self.cell(t, method))]
        return Aggregate(statistics.fmean(means) if means else None, len(means), len(task_names()))

    def winners(self, task: str) -> list[str]:
        """The method(s) with the best mean on ``task``; empty when fewer than two ran."""
        cells = [c for m in self.methods if (c := self.cell(task, m))]
        if len(cells) < 2:
            return []
        best = max(c.mean for c in cells)
        return [c.method for c in cells if c.mean >= best - TIE]

    def wins(self, method: str) -> int:
        return sum(method in self.winners(task) for task in self.tasks)

    def delta(self, method: str, baseline: str, group: str | None = None) -> Aggregate:
        """Mean of ``method − baseline`` over the tasks both ran (in ``group``, or
        the mean of the group deltas when ``group`` is None)."""
        if group is None:
            groups = [self.delta(method, baseline, g) for g in GROUP_NAMES]
            present = [g.value for g in groups if g.value is not None]
            return Aggregate(statistics.fmean(present) if present else None, sum(g.n_tasks for g in groups), len(task_names()))
        diffs = self.task_deltas(method, baseline, GROUPS[group])
        return Aggregate(statistics.fmean(diffs.values()) if diffs else None, len(diffs), len(GROUPS[group]))

    def task_deltas(self, method: str, baseline: str, tasks: tuple[str, ...] | list[str] | None = None) -> dict[str, float]:
        """``method − baseline`` per task both ran."""
        deltas = {}
        for task in tasks if tasks is not None else task_names():
            a, b = self.cell(task, method), self.cell(task, baseline)
            if a and b:
                deltas[task] = a.mean - b.mean
        return deltas


def collect_results(root: str | Path, *, mix_protocols: bool = False) -> Results:
    """Read every ``result.json`` (and ``failed.json``) under ``root``.

    Results of non-VTAB tasks are left out with a note; so is a second result of
    the same task, method and seed.  Results evaluated on different splits (e.g.
    ``val200`` and ``test``) are refused: report each sweep separately.  So are
    runs of different protocols (see :mod:`.protocols`), unless ``mix_protocols``.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}; pass the --output folder of a vtab-sweep")
    runs: dict[tuple[str, str, int], RunResult] = {}
    notes: list[str] = []
    for path in sorted(root.rglob(RunFiles(root).result.name)):
        try:
            run = _read_result(path)
        except (ValueError, KeyError, TypeError, OSError) as err:
            notes.append(f"left out `{_rel(path, root)}`: unreadable ({err})")
            continue
        if run is None:
            notes.append(f"left out `{_rel(path, root)}`: not a VTAB-1k task")
            continue
        key = (run.task, run.method, run.seed)
        if key in runs:
            notes.append(f"left out `{_rel(path, root)}`: a second result of {run.task}/{run.method}/seed{run.seed} "
                         f"(kept `{_rel(runs[key].path, root)}`)")
            continue
        runs[key] = run
    splits = sorted({r.eval_split for r in runs.values()})
    if len(splits) > 1:
        raise ValueError(
            f"results under {root} were evaluated on different splits ({', '.join(splits)}); "
            "report the test-split sweep and the train800 -> val200 sweep from separate folders"
        )
    failures = []
    for path in sorted(root.rglob(FAILED)):
        if not RunFiles(path.parent).result.is_file():
            try:
                failure = json.loads(path.read_text())
            except (ValueError, OSError):
                failure = {"error": "unreadable failed.json"}
            failures.append({**failure, "folder": _rel(path.parent, root)})
    mixed = check_protocols(list(runs.values()), root, mix_protocols)
    return Results(root, list(runs.values()), failures, notes, mixed)


# ----------------------------------------------------------------------------- helpers
def _read_result(path: Path) -> RunResult | None:
    data = json.loads(path.read_text())
    config = _run_config(RunFiles(path.parent).config)
    try:
        task = get_task(str(data["task"]))
    except UnknownTaskError:
        return None
    return RunResult(
        task=task.name,
        group=task.group,
        method=_method_label(path, str(data["method"])),
        seed=int(data["seed"]),
        accuracy=float(data["accuracy"]),
        trainable_params=data.get("trainable_params"),
        total_rank=data.get("total_rank"),
        rank_pattern=dict(data.get("rank_pattern") or {}),
        wall_time_s=data.get("wall_time_s"),
        eval_split=str(data.get("eval_split", "test")),
        model=str(data.get("model", "?")),
        pretrained=bool(data.get("pretrained", True)),
        initial_rank=(config.get("adapter") or {}).get("rank"),
        train_split=(config.get("data") or {}).get("train_split"),
        path=path,
        protocol=data.get("protocol"),
    )


def _method_label(result_path: Path, method: str) -> str:
    """``method``, or the grid variant the run's folder names (``<variant>/seed<N>/result.json``,
    e.g. ``elalora[adapter.b=2]``): a variant is a method of its own in the report."""
    folder = result_path.parent.parent.name
    return folder if is_variant(folder) and base_method(folder) == method else method


def _run_config(config_path: Path) -> dict[str, Any]:
    """The run's config.yaml, or {} when it is missing or unreadable."""
    try:
        config = read_yaml_file(config_path)
    except (OSError, ConfigInputError):
        return {}
    return config if isinstance(config, dict) else {}


def _mean_or_none(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
