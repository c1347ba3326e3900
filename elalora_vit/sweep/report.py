"""The report of a sweep folder: ``results.csv``, ``results.md`` and figures.

- :mod:`.results_csv`: ``results.csv``, the numbers for scripts;
- :mod:`.markdown`: ``results.md``, the verdict and notes, around the tables of
  :mod:`.tables`, all formatted by :mod:`.formatting`;
- :mod:`.figures`: the figures ``results.md`` shows.
"""

from __future__ import annotations

from pathlib import Path

from ..storage.files import atomic_write_text
from ..storage.lock import FolderLock
from .figures import write_figures
from .markdown import results_markdown
from .results import collect_results
from .results_csv import CSV_COLUMNS, WALL_TIME_COLUMNS, results_csv

__all__ = ["CSV_COLUMNS", "CSV_NAME", "MARKDOWN_NAME", "WALL_TIME_COLUMNS", "results_csv", "results_markdown",
           "write_report"]

CSV_NAME = "results.csv"
MARKDOWN_NAME = "results.md"


REPORT_LOCK_WAIT_S = 300.0  # how long a report waits for another process's report of the same folder


def write_report(root: str | Path, *, mix_protocols: bool = False) -> dict[str, Path]:
    """Gather the results under ``root`` and write the report files there.

    Runs of different protocols are refused unless ``mix_protocols`` (see :mod:`.protocols`).
    Returns their paths: ``csv``, ``markdown`` and one entry per figure."""
    root = Path(root)
    if not root.is_dir():
        collect_results(root, mix_protocols=mix_protocols)  # says what is wrong with the folder
    # One writer at a time (two sweep shards ending together); each file is written atomically
    # anyway, the lock keeps the csv, table and figures of one report from mixing with another's.
    with FolderLock(root, "writing the report").acquire(timeout=REPORT_LOCK_WAIT_S):
        results = collect_results(root, mix_protocols=mix_protocols)
        figures = write_figures(results, root)
        paths = {
            "csv": atomic_write_text(root / CSV_NAME, results_csv(results)),
            "markdown": atomic_write_text(root / MARKDOWN_NAME, results_markdown(results, figures)),
        }
    return {**paths, **{f"figure: {caption}": path for caption, path in figures.items()}}
