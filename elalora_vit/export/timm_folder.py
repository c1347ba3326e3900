"""The merged model as a plain timm model folder: ``config.json`` + ``model.safetensors``.

Written by timm's own ``save_for_hf``, so the folder is exactly what
``timm.create_model("local-dir:DIR", pretrained=True)`` reads: the architecture,
the model arguments it was built with, the number of classes and the
preprocessing (``pretrained_cfg``: input size, interpolation, mean, std, crop).
Loading it needs timm alone.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..core import unpatch_model, unwrap_model
from .staging import ExportError, staged_folder


def export_timm(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    data_config: dict[str, Any] | None = None,
    label_names: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``model`` (a timm model, patched or not) with its adapters merged to the folder ``out``.

    Args:
        data_config: preprocessing to record (``input_size``, ``interpolation``,
            ``mean``, ``std``, ``crop_pct``, ``crop_mode``); default: the model's.
        label_names: class names, index order, recorded as timm's ``label_names``.
        overwrite: replace a non-empty ``out``.

    ``model`` itself is left as it was (the merge happens on a copy).
    """
    from timm.models import save_for_hf

    model = unwrap_model(model)
    if not hasattr(model, "pretrained_cfg"):
        raise ExportError(f"{type(model).__name__} is not a timm model; export it with export_peft instead")
    plain = unpatch_model(copy.deepcopy(model), merge=True).eval()
    model_config = {"label_names": list(label_names)} if label_names else None
    with staged_folder(out, overwrite) as folder:
        save_for_hf(plain, str(folder), model_config=model_config, safe_serialization=True,
                    data_config=dict(data_config or {}))
    return Path(out)
