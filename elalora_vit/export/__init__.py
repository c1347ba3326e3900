"""Hand a trained model to the tools ViT users already use.

- :func:`export_timm`: the merged backbone and head as a folder plain timm loads with
  ``timm.create_model("local-dir:DIR", pretrained=True)``.
- :func:`export_peft` (in :mod:`elalora_vit.integrations.peft`, where everything that speaks
  PEFT lives): the adapters as a PEFT LoRA adapter that
  ``peft.PeftModel.from_pretrained(base_model, DIR)`` loads onto the unpatched model
  (any model patched through ``patch_model``, not only ViTs).
- :func:`export_run`: either of them for a finished run folder.

The exporters share :mod:`.staging` (folders written whole or not at all) and import
nothing else from each other.
"""

from .folders import FORMATS, export_run
from .staging import ExportError
from .timm_folder import export_timm

__all__ = ["FORMATS", "ExportError", "export_peft", "export_run", "export_timm", "peft_lora_weights"]


def __getattr__(name: str):
    # The PEFT exporter lives in integrations.peft; imported on first use, so this package
    # and that module do not import each other at import time.
    if name in ("export_peft", "peft_lora_weights"):
        from ..integrations import peft

        return getattr(peft, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
