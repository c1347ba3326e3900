"""Runs of different protocols are not averaged into one row.

Each ``result.json`` records its run's protocol (:mod:`elalora_vit.train.protocol`).
A report checks two things before it averages anything:

- the seeds of one task x method follow one protocol, every key included (the
  data fingerprints too: the same images, labels and order);
- all runs agree on every key but the per-task ones (the data fingerprints): the
  same backbone and weights, input, epochs, batch size, schedule and versions,
  so that group means and method differences compare like with like.

Otherwise the report is refused, naming the keys that differ, unless
``--mix-protocols`` is given; then the report says what was mixed.  Results from
before protocols were recorded are "unrecorded": they report among themselves,
and mixing them with recorded ones is a difference like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from ..train.protocol import TASK_KEYS, UNRECORDED, differing_keys

if TYPE_CHECKING:
    from .results import RunResult


class ProtocolMismatch(ValueError):
    """Runs of different protocols would be averaged together."""


def check_protocols(runs: Sequence["RunResult"], root: Path, mix: bool) -> dict[str, list[Any]]:
    """The differing keys of ``runs`` (empty when they all agree); raises
    :class:`ProtocolMismatch` on any difference unless ``mix``."""
    problems: list[str] = []
    mixed: dict[str, list[Any]] = {}
    cells: dict[tuple[str, str], list] = {}
    for run in runs:
        cells.setdefault((run.task, run.method), []).append(run)
    for (task, method), cell in sorted(cells.items()):
        differing = differing_keys([r.protocol for r in cell])
        if differing:
            problems.append(f"the seeds of {task}/{method} differ in {describe(differing)}")
            mixed.update(differing)
    across = differing_keys([r.protocol for r in runs], ignore=TASK_KEYS)
    if across:
        problems.append(f"the runs differ in {describe(across)}")
        mixed.update(across)
    if problems and not mix:
        raise ProtocolMismatch(
            f"results under {root} follow different protocols, so their averages would mix them: "
            + "; ".join(problems)
            + ". Report each protocol from its own folder, or pass --mix-protocols to average them anyway "
            "(results.md then lists the keys that differ)"
        )
    return mixed


def describe(differing: dict[str, list[Any]], limit: int = 6) -> str:
    """``key (a vs b), ...`` for the first ``limit`` differing keys."""
    parts = [f"{key} ({' vs '.join(short(v) for v in values)})" for key, values in list(differing.items())[:limit]]
    more = len(differing) - limit
    return ", ".join(parts) + (f" and {more} more keys" if more > 0 else "")


def short(value: Any) -> str:
    """A protocol value for a sentence: hashes cut to 12 hex digits."""
    text = UNRECORDED if value is None else str(value)
    if text.startswith("sha256:"):
        return text[:19]
    return text


def shared_protocol(runs: Sequence["RunResult"]) -> list[tuple[str, str]]:
    """``(key, value)`` of the protocol the runs share, per-task keys left out; a key
    on which they differ (under --mix-protocols) shows every value."""
    recorded = [r.protocol for r in runs if r.protocol is not None]
    if not recorded:
        return [("protocol", UNRECORDED + " (results written before protocols were recorded)")]
    keys = [k for k in recorded[0] if k not in TASK_KEYS]
    keys += sorted({k for p in recorded for k in p} - set(keys) - set(TASK_KEYS))
    rows = []
    for key in keys:
        values: list[str] = []
        for p in [r.protocol for r in runs]:
            text = short(None if p is None else p.get(key))
            if text not in values:
                values.append(text)
        rows.append((key, values[0] if len(values) == 1 else "MIXED: " + " | ".join(values)))
    return rows


def protocol_markdown(results) -> str:
    """The "Protocol" section of results.md: the shared settings, each task's data
    fingerprints, and what --mix-protocols let through."""
    if not results.runs:
        return ""
    from .formatting import markdown_table

    lines = ["## Protocol", "", "What every number below was trained and evaluated under (from each run's "
             "`result.json`); the learning rate and adapter settings are per run, in its `config.yaml`.", ""]
    if results.mixed_protocols:
        lines += [f"> **Mixed protocols (--mix-protocols):** runs differ in {describe(results.mixed_protocols, 20)}; "
                  "rows and averages below mix them.", ""]
    lines.append(markdown_table(["key", "value"], [[f"`{k}`", v] for k, v in shared_protocol(results.runs)]))
    per_task = []
    for task in results.tasks:
        protocols = [r.protocol for r in results.runs if r.task == task and r.protocol is not None]
        if protocols:
            per_task.append([task, *(" | ".join(sorted({short(p.get(k)) for p in protocols})) for k in TASK_KEYS)])
    if per_task:
        lines += ["", "Data fingerprints (SHA-256 of the list file and image bytes, or of the TFDS info and split):",
                  "", markdown_table(["task", "train data", "eval data"], per_task)]
    return "\n".join(lines)
