"""The report of a sweep folder: ``results.csv``, ``results.md`` and figures.

- :mod:`.results_csv`: ``results.csv``, the numbers for scripts;
- :mod:`.markdown`: ``results.md``, the verdict and notes, around the tables of
  :mod:`.tables`, all formatted by :mod:`.formatting`;
- :mod:`.figures`: the figures ``results.md`` shows.
"""

from __future__ import annotations

from pathlib import Path

from ..core.files import atomic_write_text
from .figures import write_figures
from .markdown import results_markdown
from .results import collect_results
from .results_csv import CSV_COLUMNS, WALL_TIME_COLUMNS, results_csv

__all__ = ["CSV_COLUMNS", "CSV_NAME", "MARKDOWN_NAME", "WALL_TIME_COLUMNS", "results_csv", "results_markdown",
           "write_report"]

CSV_NAME = "results.csv"
MARKDOWN_NAME = "results.md"


def write_report(root: str | Path, *, mix_protocols: bool = False) -> dict[str, Path]:
    """Gather the results under ``root`` and write the report files there.

    Runs of different protocols are refused unless ``mix_protocols`` (see :mod:`.protocols`).
    Returns their paths: ``csv``, ``markdown`` and one entry per figure."""
    root = Path(root)
    results = collect_results(root, mix_protocols=mix_protocols)
    figures = write_figures(results, root)
    paths = {
        "csv": atomic_write_text(root / CSV_NAME, results_csv(results)),
        "markdown": atomic_write_text(root / MARKDOWN_NAME, results_markdown(results, figures)),
    }
    return {**paths, **{f"figure: {caption}": path for caption, path in figures.items()}}
