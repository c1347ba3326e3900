"""The report of a sweep folder: ``results.csv``, ``results.md`` and figures.

``results.md`` is meant to be read on its own: the verdict first (who won the
headline, each group, how many tasks; ElaLoRA against LoRA), then the tables,
with the published ViT-B/16 rows beside ours and every incomplete aggregate
marked.  ``results.csv`` holds the same numbers for scripts.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any, Iterable

from ..data.tasks import GROUPS, get_task
from .figures import write_figures
from .published import PUBLISHED, SOURCE
from .results import GROUP_NAMES, Aggregate, Cell, Results, collect_results

CSV_NAME = "results.csv"
MARKDOWN_NAME = "results.md"
CSV_COLUMNS = (
    "source", "level", "group", "task", "method", "n_seeds", "seeds", "top1_mean", "top1_std",
    "top1_per_seed", "n_tasks", "of_tasks", "trainable_params", "total_rank", "wall_time_s",
)
"""``level``: task, group, mean_of_groups (the VTAB headline) or mean_of_tasks."""
WALL_TIME_COLUMNS = ("wall_time_s",)
BASELINE = "lora"  # ElaLoRA is compared with this method first


def write_report(root: str | Path) -> dict[str, Path]:
    """Gather the results under ``root`` and write the report files there.

    Returns their paths: ``csv``, ``markdown`` and one entry per figure."""
    root = Path(root)
    results = collect_results(root)
    figures = write_figures(results, root)
    paths = {
        "csv": _write_text(root / CSV_NAME, results_csv(results)),
        "markdown": _write_text(root / MARKDOWN_NAME, results_markdown(results, figures)),
    }
    return {**paths, **{f"figure: {caption}": path for caption, path in figures.items()}}


# ----------------------------------------------------------------------------- CSV
def results_csv(results: Results) -> str:
    """One row per task x method, then per method its group means, the mean of group
    means and the plain task mean, then the published rows."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for task in results.tasks:
        for method in results.methods:
            if (cell := results.cell(task, method)) is not None:
                writer.writerow(_cell_row(cell))
    for method in results.methods:
        for group in GROUP_NAMES:
            writer.writerow(_aggregate_row("ours", "group", group, method, results.group_mean(method, group)))
        writer.writerow(_aggregate_row("ours", "mean_of_groups", "", method, results.mean_of_groups(method)))
        writer.writerow(_aggregate_row("ours", "mean_of_tasks", "", method, results.task_mean(method)))
    for row in PUBLISHED:
        for group in GROUP_NAMES:
            writer.writerow(_aggregate_row(SOURCE, "group", group, row.label, Aggregate(row.group(group), len(GROUPS[group]), len(GROUPS[group]))))
        writer.writerow(_aggregate_row(SOURCE, "mean_of_groups", "", row.label, Aggregate(row.mean_of_groups, 19, 19)))
    return out.getvalue()


def _cell_row(cell: Cell) -> dict[str, Any]:
    return {
        "source": "ours", "level": "task", "group": cell.group, "task": cell.task, "method": cell.method,
        "n_seeds": len(cell.runs), "seeds": " ".join(map(str, cell.seeds)),
        "top1_mean": _num(cell.mean), "top1_std": _num(cell.std),
        "top1_per_seed": " ".join(_num(a) for a in cell.accuracies),
        "n_tasks": 1, "of_tasks": 1,
        "trainable_params": _num(cell.trainable_params, 1), "total_rank": _num(cell.total_rank, 2),
        "wall_time_s": _num(cell.wall_time_s, 1),
    }


def _aggregate_row(source: str, level: str, group: str, method: str, agg: Aggregate) -> dict[str, Any]:
    return {"source": source, "level": level, "group": group, "method": method,
            "top1_mean": _num(agg.value), "n_tasks": agg.n_tasks, "of_tasks": agg.of}


# ----------------------------------------------------------------------------- Markdown
def results_markdown(results: Results, figures: dict[str, Path] | None = None) -> str:
    """The whole ``results.md``."""
    sections = [_intro(results)]
    if results.runs:
        sections += [_verdict(results), _summary_table(results), _comparison(results), _per_task_table(results),
                     _cost_table(results)]
    sections += [_figures(results, figures or {}), _failures(results), _notes(results)]
    return "\n\n".join(s for s in sections if s) + "\n"


def _intro(results: Results) -> str:
    lines = ["# VTAB-1k results", ""]
    root = results.root
    if not results.runs:
        lines.append(f"No finished runs under `{root}` yet (no `result.json` found).")
        return "\n".join(lines)
    runs, tasks, methods = results.runs, results.tasks, results.methods
    seeds = sorted({r.seed for r in runs})
    models = sorted({r.model for r in runs})
    trained_on = sorted({r.train_split for r in runs if r.train_split})
    lines.append(
        f"{len(runs)} finished runs under `{root}`: {len(tasks)} of 19 tasks, methods {', '.join(methods)}, "
        f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}. Backbone: "
        + ", ".join(f"`{m}`" for m in models)
        + (" (not pre-trained)" if not any(r.pretrained for r in runs) else "")
        + f". Numbers are top-1 accuracy (%) on each task's `{results.eval_split}` split"
        + (f" after training on `{'`, `'.join(trained_on)}`" if trained_on else "")
        + ", mean ± sample standard deviation over seeds."
    )
    warnings = _warnings(results)
    if warnings:
        lines += [""] + [f"> **{title}** {text}" + "\n>" for title, text in warnings]
        lines[-1] = lines[-1].rstrip("\n>")
    return "\n".join(lines)


def _warnings(results: Results) -> list[tuple[str, str]]:
    warnings = []
    coverage = [f"{g} {sum(t in results.tasks for t in GROUPS[g])}/{len(GROUPS[g])}" for g in GROUP_NAMES]
    if len(results.tasks) < 19:
        warnings.append((
            "Incomplete:",
            f"tasks present per group: {', '.join(coverage)}. Group means, the mean of group means and the "
            "task mean average only the tasks present, so they are not comparable with the published rows "
            "(all 19 tasks).",
        ))
    covered = {m: frozenset(t for t in results.tasks if results.cell(t, m)) for m in results.methods}
    if len(set(covered.values())) > 1:
        detail = "; ".join(f"{m} {len(ts)}" for m, ts in covered.items())
        warnings.append(("Uneven coverage:", f"methods ran on different tasks (tasks per method: {detail}); "
                         "aggregates of different methods then average different tasks. Compare per task, "
                         "or use the ElaLoRA comparison, which uses only tasks both methods ran."))
    if not any(r.pretrained for r in results.runs):
        warnings.append(("Backbone not pre-trained:", "these runs exercise the pipeline; their accuracies say "
                         "nothing about the methods."))
    if len({r.model for r in results.runs}) > 1:
        warnings.append(("Several backbones:", "runs with different models are mixed in these tables."))
    return warnings


def _verdict(results: Results) -> str:
    methods = results.methods
    lines = ["## Who won", ""]
    ranked = sorted((m for m in methods if results.mean_of_groups(m).value is not None),
                    key=lambda m: -results.mean_of_groups(m).value)
    chain = ""
    for i, method in enumerate(ranked):
        value = results.mean_of_groups(method).value
        if i:
            chain += " = " if _fmt(value) == _fmt(results.mean_of_groups(ranked[i - 1]).value) else " > "
        chain += f"{method} {_fmt(value)}"
    if len(ranked) > 1:
        chain += f" (the winner leads by {results.mean_of_groups(ranked[0]).value - results.mean_of_groups(ranked[1]).value:.1f} points)"
    lines.append(f"- **Headline (mean of the group means):** {chain}.")
    per_group = []
    for group in GROUP_NAMES:
        present = {m: results.group_mean(m, group) for m in methods if results.group_mean(m, group).value is not None}
        if not present:
            per_group.append(f"{group}: no results")
            continue
        order = sorted(present, key=lambda m: -present[m].value)
        lead = f", +{present[order[0]].value - present[order[1]].value:.1f} over {order[1]}" if len(order) > 1 else ""
        per_group.append(f"{group}: {order[0]} ({present[order[0]].value:.1f}{lead})")
    lines.append(f"- **Best per group:** {'; '.join(per_group)}.")
    contested = [t for t in results.tasks if results.winners(t)]
    if contested:
        wins = ", ".join(f"{m} {results.wins(m)}" for m in sorted(methods, key=lambda m: -results.wins(m)))
        lines.append(f"- **Tasks won:** {wins} (of {len(contested)} tasks run by two or more methods; a tie counts for each).")
    if "elalora" in methods and BASELINE in methods:
        deltas = results.task_deltas("elalora", BASELINE)
        if deltas:
            headline = results.delta("elalora", BASELINE)
            better = sum(d > 1e-9 for d in deltas.values())
            worse = sum(d < -1e-9 for d in deltas.values())
            lines.append(
                f"- **ElaLoRA vs LoRA:** {_signed(headline.value)} points on the mean of group means; better on {better}, "
                f"worse on {worse}, tied on {len(deltas) - better - worse} of the {len(deltas)} tasks both ran."
            )
    published = []
    for row in PUBLISHED:
        ours = results.mean_of_groups(row.method) if row.method in methods else None
        if ours is not None and ours.complete:
            published.append(f"{row.method} {_fmt(ours.value)} vs {_fmt(row.mean_of_groups)} published as "
                             f"{row.label} ({_signed(ours.value - row.mean_of_groups)})")
    if published:
        lines.append(f"- **Against the published numbers** (mean of group means, all 19 tasks): {'; '.join(published)}.")
    return "\n".join(lines)


def _summary_table(results: Results) -> str:
    head = ["", "method", *GROUP_NAMES, "**mean of group means**", "19-task mean", "tasks", "tasks won"]
    rows = []
    columns = [lambda m, g=g: results.group_mean(m, g) for g in GROUP_NAMES]
    columns += [results.mean_of_groups, results.task_mean]
    best = [_best(results.methods, column) for column in columns]
    for method in results.methods:
        cells = []
        for i, column in enumerate(columns):
            agg = column(method)
            text = _fmt(agg.value)
            if agg.value is not None and i < len(GROUP_NAMES) and not agg.complete:
                text += f" ({agg.n_tasks}/{agg.of})"
            cells.append(f"**{text}**" if method in best[i] else text)
        rows.append(["ours", method, *cells, f"{results.task_mean(method).n_tasks}/19", str(results.wins(method))])
    for row in PUBLISHED:
        rows.append(["published¹", row.label, *(_fmt(row.group(g)) for g in GROUP_NAMES), _fmt(row.mean_of_groups),
                     "–", "19/19", "–"])
    models = ", ".join(sorted({f"`{r.model}`" for r in results.runs}))
    footnote = (
        f"Bold: the best of our methods in each column. A group cell with (k/n) averages k of the group's n tasks. "
        f"¹ {SOURCE}: reported in the PEFT literature (full fine-tuning, linear probe and LoRA as tabulated by "
        f"NOAH and FacT; NOAH; FacT; HST), trained on train800val200 and tested on test; not re-run here and left out "
        f"of the bold and the wins. Ours use {models}."
    )
    return "## Summary\n\n" + _table(head, rows) + "\n\n" + footnote


def _comparison(results: Results) -> str:
    if "elalora" not in results.methods:
        return ""
    others = [m for m in results.methods if m != "elalora"]
    others = sorted(others, key=lambda m: (m != BASELINE, results.methods.index(m)))
    rows = []
    for other in others:
        if not results.task_deltas("elalora", other):
            continue
        cells = []
        for group in [*GROUP_NAMES, None]:
            agg = results.delta("elalora", other, group)
            text = _signed(agg.value)
            if group is not None and agg.value is not None and not agg.complete:
                text += f" ({agg.n_tasks}/{agg.of})"
            cells.append(text)
        deltas = results.task_deltas("elalora", other).values()
        record = f"{sum(d > 1e-9 for d in deltas)} / {sum(d < -1e-9 for d in deltas)} / {sum(abs(d) <= 1e-9 for d in deltas)}"
        rows.append([f"elalora − {other}", *cells, record])
    if not rows:
        return ""
    head = ["", *GROUP_NAMES, "mean of group deltas", "tasks better / worse / tied"]
    return ("## ElaLoRA against the others\n\n"
            "Points of top-1 ElaLoRA gains (positive) or loses (negative), averaged over the tasks both methods ran.\n\n"
            + _table(head, rows))


def _per_task_table(results: Results) -> str:
    methods = results.methods
    compare = "elalora" in methods and BASELINE in methods
    seed_counts = {len(c.runs) for c in results.cells.values()}
    head = ["group", "task", *methods, "best"] + (["elalora − lora"] if compare else [])
    rows = []
    for task in results.tasks:
        winners = results.winners(task)
        cells = []
        for method in methods:
            cell = results.cell(task, method)
            if cell is None:
                cells.append("–")
                continue
            text = f"**{cell.mean:.1f}**" if method in winners else f"{cell.mean:.1f}"
            if cell.std is not None:
                text += f" ± {cell.std:.1f}"
            if len(seed_counts) > 1:
                text += f" ({len(cell.runs)})"
            cells.append(text)
        row = [get_task(task).group, task, *cells, ", ".join(winners) or "–"]
        if compare:
            row.append(_signed(results.task_deltas("elalora", BASELINE, [task]).get(task)))
        rows.append(row)
    n = min(seed_counts)
    seeds = (f"every cell over {n} seed{'s' if n > 1 else ''}" if len(seed_counts) == 1
             else "(n): number of seeds of that cell")
    return (f"## Per task\n\nTop-1 (%) mean ± std; {seeds}; bold: the best method on the task (when two "
            "or more ran); –: not run (yet).\n\n" + _table(head, rows))


def _cost_table(results: Results) -> str:
    head = ["method", "runs", "trainable parameters (mean over tasks)", "final total rank (mean)",
            "wall time per run (mean)", "wall time (sum)"]
    rows = []
    for method in results.methods:
        runs = [r for r in results.runs if r.method == method]
        params = _mean(r.trainable_params for r in runs)
        rank = _mean(r.total_rank for r in runs)
        times = [r.wall_time_s for r in runs if r.wall_time_s is not None]
        rows.append([method, str(len(runs)), _count(params), "–" if rank is None else f"{rank:g}",
                     _duration(sum(times) / len(times)) if times else "–", _duration(sum(times)) if times else "–"])
    return ("## Cost\n\nTrainable parameters include the classifier head, so they vary a little with the number "
            "of classes; the total rank is the sum of the adapters' final ranks.\n\n" + _table(head, rows))


def _figures(results: Results, figures: dict[str, Path]) -> str:
    if not figures:
        return ""
    lines = ["## Figures", ""]
    for caption, path in figures.items():
        lines += [f"**{caption}**", "", f"![{caption}]({os.path.relpath(path, results.root)})", ""]
    return "\n".join(lines).rstrip()


def _failures(results: Results) -> str:
    if not results.failures:
        return ""
    rows = [[f"{f.get('task', '?')}/{f.get('method', '?')}/seed{f.get('seed', '?')}",
             _cell_text(f"{f.get('error_type', 'Error')}: {f.get('error', '')}"), f"`{f['folder']}`"]
            for f in results.failures]
    return (f"## Failed runs ({len(rows)})\n\nThese runs failed on their last attempt and have no result; "
            "`failed.json` in each folder holds the full error and traceback. Running the sweep again retries "
            "them (from their checkpoint, if they have one).\n\n" + _table(["run", "error", "folder"], rows))


def _notes(results: Results) -> str:
    lines = ["## Notes", ""]
    lines += [f"- {note}" for note in results.notes]
    lines += [
        "- The VTAB-1k headline is the mean of the three group means (natural, specialized, structured); the "
        "19-task mean weighs every task the same and so favours the structured group (8 tasks).",
        f"- `results.csv` holds these numbers (per task, per group, per seed); regenerate both with "
        f"`elalora-vit vtab-report {results.root}`.",
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- formatting
def _table(head: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _best(methods: list[str], column) -> set[str]:
    values = {m: column(m).value for m in methods if column(m).value is not None}
    if len(values) < 2:
        return set()
    top = max(values.values())
    return {m for m, v in values.items() if v >= top - 1e-9}


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.1f}"


def _num(value: float | None, digits: int = 4) -> str:
    if value is None:
        return ""
    text = f"{value:.{digits}f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _mean(values: Iterable[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _count(value: float | None) -> str:
    if value is None:
        return "–"
    if value >= 1e6:
        return f"{value / 1e6:.2f} M"
    if value >= 1e3:
        return f"{value / 1e3:.1f} k"
    return f"{value:.0f}"


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    if seconds >= 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds:.1f} s"


def _cell_text(text: str, limit: int = 200) -> str:
    text = " ".join(text.split()).replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _write_text(path: Path, text: str) -> Path:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path

