"""The exceptions the data layer raises, and the hints they share.

Every error is a `DataError` (a `ValueError`), so a caller can catch the whole
family at once. Missing files or unprepared data raise `MissingDataError`, which
is also a `FileNotFoundError`.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Data that cannot be used as asked: wrong name, bad file, bad label."""


class MissingDataError(DataError, FileNotFoundError):
    """Data that is not where it should be, or has not been prepared yet."""


class UnknownTaskError(DataError):
    """A task name that is neither a VTAB-1k task nor one of its aliases."""


def prepare_command(task_name: str, data_dir: str | Path) -> str:
    """The shell command that writes `task_name` in the folder layout under `data_dir`."""
    return f"elalora-vit prepare-vtab --tasks {task_name} --data-dir {data_dir}"


class UnknownSplitError(DataError):
    """A split name that is not one of the VTAB-1k splits."""
