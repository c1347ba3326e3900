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
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
