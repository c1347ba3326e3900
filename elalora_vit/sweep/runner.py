"""Running the planned runs one after the other, resumably, surviving failures.

Every run goes through the same ``train`` as ``elalora-vit train``: a finished run
(``result.json``) is skipped, an interrupted one continues from its last epoch's
checkpoint (``resume=True``), a new one starts (``overwrite=True``, which clears what
an attempt killed before its first checkpoint left).  A run that raises
is recorded in ``failed.json`` in its folder and the sweep goes on; the next
sweep retries it.  Ctrl-C / SIGKILL stop the sweep; starting it again loses at
most the epoch that was running.
"""

from __future__ import annotations

import datetime
import logging
import os
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..storage.files import atomic_write_json
from ..train import RunInUse, train
from ..train.loop import run_folder_lock
from ..train.runtime import main_process_decides
from .formatting import one_line
from .plan import FAILED, SweepRun

log = logging.getLogger(__name__)


@dataclass
class SweepSummary:
    """What one sweep invocation did, by run name (``task/method/seedN``)."""

    trained: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already done before this sweep
    elsewhere: list[str] = field(default_factory=list)  # held by another live process (its folder lock)
    failed: dict[str, str] = field(default_factory=dict)  # name -> error message
    report: Path | None = None
    report_error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.failed and self.report_error is None

    def lines(self) -> list[str]:
        """A short human summary."""
        total = len(self.trained) + len(self.skipped) + len(self.failed) + len(self.elsewhere)
        elsewhere = f", {len(self.elsewhere)} running elsewhere" if self.elsewhere else ""
        lines = [
            f"{total} runs: {len(self.trained)} trained, {len(self.skipped)} already done{elsewhere}, "
            f"{len(self.failed)} failed"
        ]
        lines += [f"  running elsewhere: {name} (another process holds its folder; run the sweep again "
                  "after it ends to include it in the report)" for name in self.elsewhere]
        lines += [f"  FAILED {name}: {message}" for name, message in self.failed.items()]
        if self.report is not None:
            lines.append(f"report: {self.report}")
        if self.report_error is not None:
            lines.append(f"the report failed: {self.report_error}")
        return lines


def run_sweep(runs: Sequence[SweepRun], *, report_dir: str | Path | None = None) -> SweepSummary:
    """Train every run of ``runs`` that is not done yet, then (if ``report_dir``)
    write the report of everything under ``report_dir``.

    Under ``accelerate launch`` every process walks the same list and each run is
    distributed as ``train`` distributes it; only the main process writes
    ``failed.json`` and the report.
    """
    summary = SweepSummary()
    main = is_main_process()
    for number, run in enumerate(runs, 1):
        # Under a multi-process launch, what the main process finds decides for all of them
        # (here and under the run's lock), so every process trains the same runs together.
        if main_process_decides(run.status() == "done"):
            summary.skipped.append(run.name)
            continue
        try:
            # What to do with the folder is decided under its lock, and the lock is held
            # while training: a second sweep on the same folder never resumes, overwrites or
            # deletes a run this one is training (nor one that ended while it looked).
            with run_folder_lock(run.files):
                outcome = _train_run(run, number, len(runs), main, summary)
        except RunInUse:
            summary.elsewhere.append(run.name)
            if main:
                log.info("[%d/%d] %s: running elsewhere (another process holds %s); skipped",
                         number, len(runs), run.name, run.output_dir)
            continue
        if outcome is None:
            continue
        summary.trained.append(run.name)
        result = outcome
        if main:
            log.info("[%d/%d] %s: top-1 %.2f%% (%s s)", number, len(runs), run.name,
                     result["accuracy"], result.get("wall_time_s"))
    if report_dir is not None and main:
        from .report import write_report

        try:
            summary.report = write_report(report_dir)["markdown"]
        except Exception as err:  # the runs are done; say why the table is missing instead of hiding the summary
            summary.report_error = f"{_one_line(err)} (after fixing it: elalora-vit vtab-report {report_dir})"
            log.error("the report of %s failed: %s", report_dir, summary.report_error)
    return summary


def _train_run(run: SweepRun, number: int, count: int, main: bool, summary: SweepSummary) -> dict | None:
    """Train one run whose folder this process holds; its result, or None when it was
    finished meanwhile (counted as skipped) or failed (recorded)."""
    if main_process_decides(run.status() == "done"):  # finished by another process between the first look and the lock
        summary.skipped.append(run.name)
        return None
    if main:
        resuming = "resuming from its checkpoint" if run.files.checkpoint.is_file() else "starting"
        log.info("[%d/%d] %s: %s (%s)", number, count, run.name, resuming, run.output_dir)
        (run.output_dir / FAILED).unlink(missing_ok=True)
    try:
        # Resume what has a checkpoint; start anything else afresh, replacing the files of an
        # attempt that died before its first checkpoint.
        resume = main_process_decides(run.files.checkpoint.is_file())
        return train(run.config, resume=resume, overwrite=not resume)
    except Exception as err:  # one broken run must not stop the others; Ctrl-C still does
        message = _one_line(err)
        summary.failed[run.name] = message
        if main:
            log.error("[%d/%d] %s failed: %s", number, count, run.name, message)
            record_failure(run, err)
        return None


def record_failure(run: SweepRun, err: BaseException) -> Path:
    """Write ``failed.json`` (error, traceback, settings source) into the run's folder."""
    run.output_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(
        run.output_dir / FAILED,
        {
            "task": run.task,
            "method": run.label,
            "seed": run.seed,
            "error_type": type(err).__name__,
            "error": str(err),
            "preset": str(run.preset) if run.preset else None,
            "time": datetime.datetime.now().isoformat(timespec="seconds"),
            "traceback": traceback.format_exception(type(err), err, err.__traceback__),
        },
    )


def is_main_process() -> bool:
    """Rank 0 of an ``accelerate launch`` / ``torchrun`` job, or a plain process."""
    return int(os.environ.get("RANK", "0")) == 0


def _one_line(err: BaseException) -> str:
    # The whole message on one line, not just its first: the advice of a multi-line
    # error (e.g. how to provide missing weights) must reach the sweep's summary.
    text = one_line(str(err))
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
