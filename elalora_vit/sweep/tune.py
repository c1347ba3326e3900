"""The VTAB-1k protocol in one command (``elalora-vit vtab-tune``): choose
hyper-parameters on train800 -> val200, then train on train800val200 and test.

Stage 1 trains every task x method x setting of a search space (one seed, the
first of ``--seeds``) on train800 and evaluates on val200, into

    <output>/stage1/<setting>/<task>/<method>/seed<seed>

Each setting's folder is an ordinary sweep folder, planned, run, resumed and
sharded by the sweep's own code (:func:`plan_sweep`, :func:`run_sweep`,
:func:`shard_runs`).  When every setting of a task x method has a result, the
best by val200 top-1 is chosen; **ties go to the lower ``optim.lr``, then to the
smaller value of each other key in search-space order** (the simpler model: a
smaller ``adapter.b`` moves fewer ranks).  The choice is written to

    <output>/chosen/<task>/<method>.yaml        (the values, the rule, the score)
    <output>/chosen/<task>/<method>.val200.md   (every setting's val200 top-1)

Stage 2 trains each task x method with its chosen values on train800val200 for
every seed and evaluates on test, into ``<output>/stage2`` (a sweep folder, with
its report).  Stage 1 never names the test split, and its data check leaves the
test list unread: no test label is read before stage 2.

``<output>/tune.json`` records the search space and seeds; running again with
other ones under the same output is refused (choose another --output).
"""

from __future__ import annotations

from ..config import read_yaml_file

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import yaml

from ..core.config import ConfigError
from ..storage.files import atomic_write_json, atomic_write_text
from ..config import METHODS, load_config, read_yaml
from .formatting import markdown_table
from ..data.tasks import selected_tasks
from .plan import DEFAULT_PRESETS, SweepRun, _words, plan_sweep, select_methods, select_seeds, shard_runs
from .runner import SweepSummary

log = logging.getLogger(__name__)

DEFAULT_SEARCH = Path(__file__).resolve().parents[2] / "configs" / "search" / "default.yaml"
STAGE1_SPLITS = {"data.train_split": "train800", "data.eval_split": "val200"}
STAGE2_SPLITS = {"data.train_split": "train800val200", "data.eval_split": "test"}
MANIFEST = "tune.json"
TIE = 1e-9
RULE = ("highest val200 top-1; ties go to the lower optim.lr, then to the smaller value of each other key "
        "in search-space order")


@dataclass(frozen=True)
class TuneRun(SweepRun):
    """A stage-1 run: a sweep run with the setting it tries."""

    setting: str = ""

    @property
    def name(self) -> str:
        return f"{self.task}/{self.method}/{self.setting}/seed{self.seed}"


# ----------------------------------------------------------------------------- the search space
def load_search_space(path: str | Path, methods: Sequence[str] = METHODS) -> dict[str, dict[str, list[Any]]]:
    """``{method: {dotted key: [values]}}`` for ``methods`` from a search-space YAML:

        default:             # methods not named under ``methods``
          optim.lr: [3.0e-4, 1.0e-3, 3.0e-3]
        methods:
          elalora: {optim.lr: [3.0e-4, 1.0e-3], adapter.b: [2, 4]}

    An unknown key, a value the config refuses or an empty list is a ``ConfigError``."""
    raw = read_yaml(path)
    unknown = sorted(set(raw) - {"default", "methods"})
    if unknown:
        raise ConfigError(f"search space {path}: unknown top-level key(s) {unknown}; use 'default' and 'methods'")
    per_method = raw.get("methods") or {}
    if not isinstance(per_method, Mapping) or set(per_method) - set(METHODS):
        raise ConfigError(f"search space {path}: 'methods' must map method names ({', '.join(METHODS)}) "
                          f"to settings, got {sorted(per_method) if isinstance(per_method, Mapping) else per_method!r}")
    space = {}
    for method in methods:
        grid = per_method.get(method, raw.get("default") or {})
        space[method] = _checked_grid(grid, f"search space {path}, {method}")
    return space


def _checked_grid(grid: Any, where: str) -> dict[str, list[Any]]:
    if not isinstance(grid, Mapping):
        raise ConfigError(f"{where}: expected a mapping of config keys to lists of values, got {grid!r}")
    checked = {}
    for key, values in grid.items():
        if key in STAGE1_SPLITS or key in ("data.task", "method", "seed", "output_dir"):
            raise ConfigError(f"{where}: {key!r} is set by vtab-tune itself and cannot be searched")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {key!r} needs a non-empty list of values, e.g. {key}: [1.0e-3, 3.0e-3]")
        for value in values:
            try:
                load_config(None, {key: value})
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}") from None
        checked[str(key)] = list(values)
    return checked


def settings(grid: Mapping[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the grid's order."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def setting_name(setting: Mapping[str, Any]) -> str:
    """A folder name for a setting: ``optim.lr=0.001,adapter.b=2`` (``default`` when empty)."""
    return ",".join(f"{key}={value}" for key, value in setting.items()) or "default"


def tie_order(setting: Mapping[str, Any]) -> tuple:
    """The documented tie-break: lower optim.lr first, then smaller values in key order."""
    keys = sorted(setting, key=lambda k: k != "optim.lr")
    return tuple(setting[k] for k in keys)


# ----------------------------------------------------------------------------- the plan
@dataclass
class TunePlan:
    """What vtab-tune does: stage 1 runs, and what stage 2 needs to plan its own."""

    output: Path
    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    space: dict[str, dict[str, list[Any]]]
    plan_args: dict[str, Any]  # config, overrides, presets: as for plan_sweep
    stage1: list[TuneRun]
    budget_match: bool = False  # LoRA's stage-2 rank matched to ElaLoRA's trainable parameters

    @property
    def chosen_dir(self) -> Path:
        return self.output / "chosen"

    @property
    def stage2_dir(self) -> Path:
        return self.output / "stage2"


def plan_tune(tasks: str | Iterable[str], methods: str | Iterable[str], seeds: str | Iterable[int | str], *,
              search_space: str | Path = DEFAULT_SEARCH, output: str | Path = "runs/vtab-tune",
              config: str | Path | None = None, overrides: Mapping[str, Any] | None = None,
              presets: Any = DEFAULT_PRESETS, budget_match: bool = False) -> TunePlan:
    """Plan both stages (stage 1's runs in full); every bad input is a ``ConfigError`` here,
    before any run: an unknown key or empty list in the search space, --set of a split."""
    overrides = dict(overrides or {})
    for key in STAGE1_SPLITS:
        if key in overrides:
            raise ConfigError(f"vtab-tune sets {key!r} itself (train800 -> val200, then train800val200 -> test)")
    method_list, seed_list = select_methods(methods), select_seeds(seeds)
    if budget_match and not {"elalora", "lora"} <= set(method_list):
        raise ConfigError("--budget-match matches LoRA's rank to ElaLoRA's parameters: select both methods")
    space = load_search_space(search_space, method_list)
    plan_args = {"config": config, "presets": presets}
    stage1 = []
    for method in method_list:
        for setting in settings(space[method]):
            name = setting_name(setting)
            runs = plan_sweep(tasks, [method], [seed_list[0]], output=Path(output) / "stage1" / name,
                              overrides={**overrides, **setting, **STAGE1_SPLITS}, **plan_args)
            stage1 += [TuneRun(**{f.name: getattr(r, f.name) for f in dataclasses.fields(r)}, setting=name)
                       for r in runs]
    task_order = [task.name for task in selected_tasks(_words(tasks))]
    stage1.sort(key=lambda r: (task_order.index(r.task), method_list.index(r.method)))  # stable: settings in order
    return TunePlan(Path(output), task_order, method_list, seed_list, space, {**plan_args, "overrides": overrides},
                    stage1, budget_match)


def manifest(plan: TunePlan) -> dict[str, Any]:
    """What must not change under one output folder: the search space and the seeds."""
    return {"search_space": plan.space, "seeds": plan.seeds, "stage1_seed": plan.seeds[0],
            "budget_match": plan.budget_match}


def claim_output(plan: TunePlan) -> None:
    """Write ``tune.json``, or refuse when the folder was tuned with another search space or seeds.
    Methods present in both must agree; a method or task added later is fine."""
    path = plan.output / MANIFEST
    mine = manifest(plan)
    if path.is_file():
        theirs = json.loads(path.read_text())
        differing = [key for key in ("seeds", "stage1_seed", "budget_match") if theirs.get(key, False) != mine[key]]
        old_space = theirs.get("search_space", {})
        differing += [f"search_space.{m}" for m in mine["search_space"]
                      if m in old_space and old_space[m] != mine["search_space"][m]]
        if differing:
            shown = "; ".join(f"{k}: {_lookup(theirs, k)} there, {_lookup(mine, k)} now" for k in differing)
            raise ConfigError(f"{plan.output} was tuned with other settings ({shown}); its runs and choices "
                              "would not match them. Use another --output, or the same search space and seeds")
        mine["search_space"] = {**old_space, **mine["search_space"]}
    atomic_write_json(path, mine)


def _lookup(values: Mapping[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        values = values.get(part) if isinstance(values, Mapping) else None
    return json.dumps(values)


# ----------------------------------------------------------------------------- choosing
@dataclass
class Choice:
    """The setting chosen for one task x method, and the validation table it came from."""

    task: str
    method: str
    values: dict[str, Any]
    val200: float
    table: list[tuple[str, float | None, str]]  # setting, val200 top-1 (None: no result yet), folder


def choose(plan: TunePlan, task: str, method: str) -> Choice | None:
    """The best stage-1 setting of ``task`` x ``method`` by val200 top-1 (see :data:`RULE`);
    None while any setting has no result (stage 1 unfinished or failed)."""
    candidates, table = [], []
    for run in (r for r in plan.stage1 if r.task == task and r.method == method):
        result = _read_result(run)
        accuracy = None if result is None else float(result["accuracy"])
        table.append((run.setting, accuracy, str(run.output_dir)))
        if result is not None:
            if result.get("eval_split") != "val200":  # guard: a choice may only come from validation
                raise ConfigError(f"{run.output_dir} was evaluated on {result.get('eval_split')!r}, not val200")
            setting = dict(zip(plan.space[method], _setting_values(plan, method, run.setting)))
            candidates.append((accuracy, setting))
    if not table or any(acc is None for _, acc, _ in table):
        return None
    best = max(acc for acc, _ in candidates)
    tied = [setting for acc, setting in candidates if acc >= best - TIE]
    return Choice(task, method, min(tied, key=tie_order), best, table)


def _setting_values(plan: TunePlan, method: str, name: str) -> tuple:
    for setting in settings(plan.space[method]):
        if setting_name(setting) == name:
            return tuple(setting.values())
    raise KeyError(name)


def _read_result(run: SweepRun) -> dict[str, Any] | None:
    try:
        return json.loads(run.files.result.read_text())
    except (OSError, ValueError):
        return None


def write_choice(plan: TunePlan, choice: Choice, budget: dict[str, Any] | None = None) -> Path:
    """``chosen/<task>/<method>.yaml`` and the validation table beside it; ``budget``:
    LoRA's matched rank under --budget-match."""
    folder = plan.chosen_dir / choice.task
    rows = [[name, "–" if acc is None else f"{acc:.2f}", "**chosen**" if name == setting_name(choice.values) else "",
             f"`{folder_}`"] for name, acc, folder_ in choice.table]
    table = (f"# {choice.task} / {choice.method}: stage 1 (train800 -> val200, seed {plan.seeds[0]})\n\n"
             f"Rule: {RULE}.\n\n" + markdown_table(["setting", "val200 top-1", "", "run"], rows) + "\n")
    atomic_write_text(folder / f"{choice.method}.val200.md", table)
    content = {"task": choice.task, "method": choice.method, "chosen": choice.values,
               "val200_top1": choice.val200, "rule": RULE, "stage1_seed": plan.seeds[0],
               "validation_table": f"{choice.method}.val200.md"}
    if budget:
        content["budget_match"] = budget
    return atomic_write_text(folder / f"{choice.method}.yaml", yaml.safe_dump(content, sort_keys=False))


def read_choice(plan: TunePlan, task: str, method: str) -> dict[str, Any]:
    """The chosen values as written in ``chosen/<task>/<method>.yaml`` (what stage 2 trains with)."""
    path = plan.chosen_dir / task / f"{method}.yaml"
    content = read_yaml_file(path)
    budget = content.get("budget_match") or {}
    return {**content["chosen"], **({"adapter.rank": budget["adapter.rank"]} if "adapter.rank" in budget else {})}


def matched_budget(plan: TunePlan, task: str) -> dict[str, Any] | None:
    """LoRA's rank whose trainable parameters are nearest those of ElaLoRA's chosen
    stage-1 run on ``task`` (None while ElaLoRA's stage 1 is unfinished). LoRA's
    learning rate was chosen at its preset rank; stage 2 trains it at this one."""
    from .budget import lora_rank_for_budget

    ela = choose(plan, task, "elalora")
    if ela is None:
        return None
    name = setting_name(ela.values)
    run = next(r for r in plan.stage1 if (r.task, r.method, r.setting) == (task, "elalora", name))
    target = _read_result(run)["trainable_params"]
    lora = next(r for r in plan.stage1 if (r.task, r.method) == (task, "lora"))
    rank, params = lora_rank_for_budget(lora.config, target)
    return {"adapter.rank": rank, "elalora_trainable_params": target, "lora_trainable_params": params}


# ----------------------------------------------------------------------------- stage 2
def plan_stage2(plan: TunePlan, *, write: bool = True) -> tuple[list[SweepRun], list[str]]:
    """Stage 2's runs of every task x method whose choice is made (and written, unless
    ``write`` is false: --dry-run writes nothing), and the names of those still waiting
    for stage 1."""
    runs, waiting = [], []
    for task in plan.tasks:
        for method in plan.methods:
            choice = choose(plan, task, method)
            budget = matched_budget(plan, task) if plan.budget_match and method == "lora" else None
            if choice is None or (plan.budget_match and method == "lora" and budget is None):
                waiting.append(f"{task}/{method}")
                continue
            if write:
                write_choice(plan, choice, budget)
                chosen = read_choice(plan, task, method)
            else:
                chosen = {**choice.values, **({"adapter.rank": budget["adapter.rank"]} if budget else {})}
            overrides = {**plan.plan_args["overrides"], **chosen, **STAGE2_SPLITS}
            runs += plan_sweep([task], [method], plan.seeds, output=plan.stage2_dir, overrides=overrides,
                               config=plan.plan_args["config"], presets=plan.plan_args["presets"])
    return runs, waiting


# ----------------------------------------------------------------------------- running
@dataclass
class TuneSummary:
    """What one vtab-tune invocation did in each stage."""

    stage1: SweepSummary | None = None
    stage2: SweepSummary | None = None
    waiting: list[str] = dataclasses.field(default_factory=list)  # task/method whose stage 1 is unfinished

    @property
    def ok(self) -> bool:
        return all(s is None or s.ok for s in (self.stage1, self.stage2))

    def lines(self) -> list[str]:
        lines = []
        for name, summary in (("stage 1 (train800 -> val200)", self.stage1), ("stage 2 (train800val200 -> test)", self.stage2)):
            if summary is not None:
                lines += [f"{name}: " + summary.lines()[0], *summary.lines()[1:]]
        if self.waiting:
            lines.append(f"stage 2 waits for stage 1 of {len(self.waiting)} task x method(s): "
                         f"{', '.join(self.waiting[:8])}{' ...' if len(self.waiting) > 8 else ''} "
                         "(finish stage 1, e.g. the other shards, then run again)")
        return lines


def run_tune(plan: TunePlan, *, stage: str = "all", shard: tuple[int, int] | None = None,
             report: bool = True) -> TuneSummary:
    """Run stage 1 and/or 2 (``stage``: ``1``, ``2`` or ``all``) of ``plan``, or one shard of
    each: shards split each stage's run list as vtab-sweep's shards do."""
    from .preflight import preflight
    from .runner import is_main_process, run_sweep

    if stage not in ("1", "2", "all"):
        raise ConfigError(f"--stage must be 1, 2 or all, not {stage!r}")
    if is_main_process():
        claim_output(plan)
    summary = TuneSummary()
    if stage in ("1", "all"):
        runs = plan.stage1 if shard is None else shard_runs(plan.stage1, *shard)
        preflight(runs)  # train800, val200 and train800val200 only: the test list stays unread
        summary.stage1 = run_sweep(runs)
    if stage in ("2", "all"):
        runs, summary.waiting = plan_stage2(plan)
        runs = shard_stage2(plan, runs, shard)
        if runs:
            preflight(runs)
        summary.stage2 = run_sweep(runs, report_dir=plan.stage2_dir if report and runs else None)
    return summary


def shard_stage2(plan: TunePlan, runs: Sequence[SweepRun], shard: tuple[int, int] | None) -> list[SweepRun]:
    """The stage-2 runs of ``shard``: the full task x method x seed list is sharded, so
    shards agree whatever is ready."""
    if shard is None:
        return list(runs)
    everyone = [(t, m, s) for t in plan.tasks for m in plan.methods for s in plan.seeds]
    mine = set(everyone[shard[0] - 1 :: shard[1]])
    return [r for r in runs if (r.task, r.method, r.seed) in mine]


def dry_run_tune(plan: TunePlan, *, stage: str = "all", shard: tuple[int, int] | None = None) -> tuple[list[str], bool]:
    """What ``vtab-tune --dry-run`` prints, and whether its checks pass: the settings of
    stage 1 and its runs with their status, the stage-2 runs whose choice is made (and
    the task x methods still waiting for stage 1), then vtab-sweep's data and weights
    checks of the runs listed. Nothing is run or written."""
    from .checks import check_runs
    from .plan import describe_plan

    shard_text = f"{shard[0]}/{shard[1]}" if shard else None
    lines, listed = [], []
    if stage in ("1", "all"):
        lines.append(f"stage 1 (train800 -> val200, seed {plan.seeds[0]}), settings per method:")
        for method in plan.methods:
            names = [setting_name(s) for s in settings(plan.space[method])]
            lines.append(f"  {method}: {len(names)}: {'; '.join(names)}")
        runs = plan.stage1 if shard is None else shard_runs(plan.stage1, *shard)
        lines.append(describe_plan(runs, len(plan.stage1), shard_text))
        listed += runs
    if stage in ("2", "all"):
        ready, waiting = plan_stage2(plan, write=False)
        runs = shard_stage2(plan, ready, shard)
        total = len(plan.tasks) * len(plan.methods) * len(plan.seeds)
        lines.append(f"stage 2 (train800val200 -> test, seeds {' '.join(map(str, plan.seeds))}): "
                     f"{len(ready)} of {total} runs ready, {len(waiting)} task x method(s) wait for stage 1")
        lines.append(describe_plan(runs, len(ready), shard_text))
        listed += runs
    checks, ok = check_runs(listed) if listed else (["checks: no run listed"], True)
    return lines + checks, ok
