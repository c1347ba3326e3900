"""``results.md``, meant to be read on its own: the verdict first (who won the
headline, each group, how many tasks; ElaLoRA against LoRA), then the tables,
with the published ViT-B/16 rows beside ours and every incomplete aggregate
marked, then the figures, the failed runs and notes."""

from __future__ import annotations

import os
from pathlib import Path

from ..data.tasks import GROUPS
from .formatting import cell_text, fmt, markdown_table, signed
from .protocols import protocol_markdown
from .published import PUBLISHED
from .results import GROUP_NAMES, Results
from .stats import stats_markdown
from .tables import BASELINE, comparison, cost_table, per_task_table, summary_table
from .rank_allocation import rank_allocation_section
from .variants import variants_section


def results_markdown(results: Results, figures: dict[str, Path] | None = None) -> str:
    """The whole ``results.md``."""
    sections = [_intro(results), protocol_markdown(results)]
    if results.runs:
        sections += [_verdict(results), summary_table(results), comparison(results), stats_markdown(results),
                     variants_section(results), per_task_table(results), rank_allocation_section(results),
                     cost_table(results)]
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
            chain += " = " if fmt(value) == fmt(results.mean_of_groups(ranked[i - 1]).value) else " > "
        chain += f"{method} {fmt(value)}"
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
                f"- **ElaLoRA vs LoRA:** {signed(headline.value)} points on the mean of group means; better on {better}, "
                f"worse on {worse}, tied on {len(deltas) - better - worse} of the {len(deltas)} tasks both ran."
            )
    published = []
    for row in PUBLISHED:
        ours = results.mean_of_groups(row.method) if row.method in methods else None
        if ours is not None and ours.complete:
            published.append(f"{row.method} {fmt(ours.value)} vs {fmt(row.mean_of_groups)} published as "
                             f"{row.label} ({signed(ours.value - row.mean_of_groups)})")
    if published:
        lines.append(f"- **Against the published numbers** (mean of group means, all 19 tasks): {'; '.join(published)}.")
    return "\n".join(lines)


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
             cell_text(f"{f.get('error_type', 'Error')}: {f.get('error', '')}"), f"`{f['folder']}`"]
            for f in results.failures]
    return (f"## Failed runs ({len(rows)})\n\nThese runs failed on their last attempt and have no result; "
            "`failed.json` in each folder holds the full error and traceback. Running the sweep again retries "
            "them (from their checkpoint, if they have one).\n\n" + markdown_table(["run", "error", "folder"], rows))


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
