"""Export output folders, written whole or not at all: what every exporter (timm here,
PEFT in :mod:`elalora_vit.integrations.peft`) shares, so the exporters import this and
not each other."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


class ExportError(ValueError):
    """An export that cannot be written as asked."""


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, overwrite: bool) -> Iterator[Path]:
    """A temporary folder beside ``out`` to write into; it replaces ``out`` when the
    block ends without error, so ``out`` never holds half an export.

    Raises:
        ExportError: ``out`` exists and is not an empty folder, and ``overwrite`` is false.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"--out {out} exists and is not empty; choose another folder or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover_killed_export(out)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        yield staging
        # Two renames, never a delete first: a kill between them leaves the old export as
        # .<name>.old-*, which the next export puts back (_recover_killed_export).
        backup = out.parent / f".{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, backup)
        os.replace(staging, out)
        shutil.rmtree(backup, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _recover_killed_export(out: Path) -> None:
    """Undo what a killed export left beside ``out``: its staging folders are removed, and an
    old export moved aside (``.<name>.old-*``) is put back if ``out`` is missing, else removed."""
    for leftover in sorted(out.parent.glob(f".{out.name}.old-*")):
        if not out.exists():
            os.replace(leftover, out)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out.parent.glob(f".{out.name}.staging-*"):
        shutil.rmtree(leftover, ignore_errors=True)
