"""The fast data check a sweep or a tuning run does before it starts any run.

It reads the list files of the splits the runs use (not the images): broken
data (a malformed or duplicated line, a missing image) stops everything before
the first run; nonstandard data (a wrong count, a missing class) is only
reported, since a deliberately smaller experiment may use it, and so is a task
not prepared yet (its runs fail and are recorded like any failing run). A plan that never
evaluates on ``test`` never opens the test list (tuning's stage 1).
"""

from __future__ import annotations

import logging
from typing import Sequence

from ..data.check import NONSTANDARD, check_data
from ..data.errors import DataError
from ..data.tasks import SPLITS, get_task
from .plan import SweepRun

log = logging.getLogger(__name__)


def preflight(runs: Sequence[SweepRun]) -> list[str]:
    """Check the data of ``runs`` (list files only); returns warnings about nonstandard
    data, raises ``DataError`` naming every problem of broken data."""
    groups: dict[tuple, set[str]] = {}
    for run in runs:
        d = run.config.data
        if d.source not in ("folder", "tfds"):
            continue
        key = (run.task, d.source, d.data_dir if d.source == "folder" else None, d.tfds_dir)
        groups.setdefault(key, set()).update((d.train_split, d.eval_split))
    warnings, broken = [], []
    for (task, source, data_dir, tfds_dir), used in sorted(groups.items(), key=lambda item: str(item[0])):
        splits = [s for s in SPLITS if s != "test" or "test" in used]
        (check,) = check_data([get_task(task)], source=source, data_dir=data_dir or "", tfds_dir=tfds_dir,
                              full=False, splits=splits)
        broken += [str(p) for p in check.broken()]
        warnings += [f"{task}: {p} ({'not VTAB-1k' if p.kind == NONSTANDARD else 'its runs will fail'})"
                     for p in check.problems if p not in check.broken()]
    if broken:
        raise DataError("the data check found broken data; no run was started:\n  " + "\n  ".join(broken)
                        + "\nFix the files named (elalora-vit check-data shows every check), then start again")
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
