"""Export output folders (written whole or not at all) and the run-level entry point."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

FORMATS = ("timm", "peft")


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


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, format: str, *, overwrite: bool = False) -> Path:
    """Export the finished run in ``run_dir`` to ``out`` as ``format`` (``"timm"`` or ``"peft"``)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    from ..use import load_run
    from .peft_adapter import export_peft
    from .timm_folder import export_timm

    run = load_run(run_dir)
    if format == "timm":
        data_config = {"input_size": (3, run.image_size, run.image_size), "interpolation": run.interpolation,
                       "mean": run.mean, "std": run.std, "crop_pct": 1.0, "crop_mode": "squash"}
        return export_timm(run.model, out, data_config=data_config, label_names=run.class_names,
                           overwrite=overwrite)
    if run.method not in ("elalora", "lora", "adalora"):
        raise ExportError(
            f"a {run.method} run has no adapters to export as PEFT LoRA; export it with --format timm"
        )
    return export_peft(run.model, out, modules_to_save=run.head_names, overwrite=overwrite,
                       base_model_name_or_path=run.config.model.name)
