"""The tables of ``results.md``: summary, ElaLoRA against the others, per task, cost."""

from __future__ import annotations

from ..data.tasks import get_task
from .grid import is_variant
from .formatting import best_methods, count, duration, fmt, markdown_table, mean, signed
from .published import PUBLISHED, SOURCE
from .results import GROUP_NAMES, Results

BASELINE = "lora"  # ElaLoRA is compared with this method first


def summary_table(results: Results) -> str:
    head = ["", "method", *GROUP_NAMES, "**mean of group means**", "19-task mean", "tasks", "tasks won"]
    rows = []
    columns = [lambda m, g=g: results.group_mean(m, g) for g in GROUP_NAMES]
    columns += [results.mean_of_groups, results.task_mean]
    best = [best_methods(results.methods, column) for column in columns]
    for method in results.methods:
        cells = []
        for i, column in enumerate(columns):
            agg = column(method)
            text = fmt(agg.value)
            if agg.value is not None and i < len(GROUP_NAMES) and not agg.complete:
                text += f" ({agg.n_tasks}/{agg.of})"
            cells.append(f"**{text}**" if method in best[i] else text)
        rows.append(["ours", method, *cells, f"{results.task_mean(method).n_tasks}/19", str(results.wins(method))])
    for row in PUBLISHED:
        rows.append(["published¹", row.label, *(fmt(row.group(g)) for g in GROUP_NAMES), fmt(row.mean_of_groups),
                     "–", "19/19", "–"])
    models = ", ".join(sorted({f"`{r.model}`" for r in results.runs}))
    footnote = (
        f"Bold: the best of our methods in each column. A group cell with (k/n) averages k of the group's n tasks. "
        f"¹ {SOURCE}: reported in the PEFT literature (full fine-tuning, linear probe and LoRA as tabulated by "
        f"NOAH and FacT; NOAH; FacT; HST), trained on train800val200 and tested on test; not re-run here and left out "
        f"of the bold and the wins. Ours use {models}."
    )
    return "## Summary\n\n" + markdown_table(head, rows) + "\n\n" + footnote


def comparison(results: Results) -> str:
    if "elalora" not in results.methods:
        return ""
    others = [m for m in results.methods if m != "elalora" and not is_variant(m)]  # variants: their own section
    others = sorted(others, key=lambda m: (m != BASELINE, results.methods.index(m)))
    rows = []
    for other in others:
        if not results.task_deltas("elalora", other):
            continue
        cells = []
        for group in [*GROUP_NAMES, None]:
            agg = results.delta("elalora", other, group)
            text = signed(agg.value)
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
            + markdown_table(head, rows))


def per_task_table(results: Results) -> str:
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
            row.append(signed(results.task_deltas("elalora", BASELINE, [task]).get(task)))
        rows.append(row)
    n = min(seed_counts)
    seeds = (f"every cell over {n} seed{'s' if n > 1 else ''}" if len(seed_counts) == 1
             else "(n): number of seeds of that cell")
    return (f"## Per task\n\nTop-1 (%) mean ± std; {seeds}; bold: the best method on the task (when two "
            "or more ran); –: not run (yet).\n\n" + markdown_table(head, rows))


def cost_table(results: Results) -> str:
    head = ["method", "runs", "trainable parameters (mean over tasks)", "final total rank (mean)",
            "wall time per run (mean)", "wall time (sum)"]
    rows = []
    for method in results.methods:
        runs = [r for r in results.runs if r.method == method]
        params = mean(r.trainable_params for r in runs)
        rank = mean(r.total_rank for r in runs)
        times = [r.wall_time_s for r in runs if r.wall_time_s is not None]
        rows.append([method, str(len(runs)), count(params), "–" if rank is None else f"{rank:g}",
                     duration(sum(times) / len(times)) if times else "–", duration(sum(times)) if times else "–"])
    return ("## Cost\n\nTrainable parameters include the classifier head, so they vary a little with the number "
            "of classes; the total rank is the sum of the adapters' final ranks.\n\n" + markdown_table(head, rows))
