"""The run-level export entry point (the folders are written by :mod:`.staging`)."""

from __future__ import annotations

import os
from pathlib import Path

from .staging import ExportError

FORMATS = ("timm", "peft")


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, format: str, *, overwrite: bool = False) -> Path:
    """Export the finished run in ``run_dir`` to ``out`` as ``format`` (``"timm"`` or ``"peft"``)."""
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of: {', '.join(FORMATS)}")
    from ..use import load_run
    from ..integrations.peft import export_peft
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
