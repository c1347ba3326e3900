"""What a run's weight files record besides the weights: how to rebuild the model.

Both output files of a run (``adapter.safetensors`` of the adapter methods and
``trained.safetensors`` of ``full`` / ``linear``) carry, in their safetensors
header, the timm name, model kwargs, number of classes, task, method and seed,
so that ``elalora-vit evaluate``, ``predict``, ``export`` and ``inspect-adapter``
need nothing else. Adapter files also record the backbone fingerprint (written
by ``save_adapters``); ``trained.safetensors`` of ``linear`` records it here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from safetensors.torch import save_file
from torch import nn

from ..core import backbone_fingerprint
from ..storage.files import atomic_write
from ..config import TrainConfig

TRAINED_FORMAT = "elalora-vit/trained/1"


def model_record(cfg: TrainConfig, num_classes: int) -> dict[str, str]:
    """Header entries (strings, as safetensors metadata must be) that rebuild the run's model."""
    return {
        "timm_name": cfg.model.name,
        "model_kwargs": json.dumps(cfg.model.kwargs),
        "num_classes": str(num_classes),
        "task": cfg.data.task,
        "data_source": cfg.data.source,
        "seed": str(cfg.seed),
        "pretrained": json.dumps(bool(cfg.model.pretrained)),
        "checkpoint": cfg.model.checkpoint or "",
    }


def save_trained_weights(
    model: nn.Module, path: str | os.PathLike, method: str, head_names: Sequence[str], record: dict[str, str]
) -> Path:
    """Write the parameters a ``full`` / ``linear`` run trained to ``path``, atomically.

    ``linear`` keeps the backbone frozen, so its fingerprint is recorded and checked
    on loading; ``full`` trains every weight, so the file alone is the model.
    """
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    header = {
        "format": TRAINED_FORMAT,
        "method": method,
        "modules_to_save": json.dumps(list(head_names)),
        **record,
    }
    if method != "full":
        header["backbone_fingerprint"] = backbone_fingerprint(model, exclude=head_names)
    return atomic_write(path, lambda tmp: save_file(trainable, str(tmp), metadata=header))
