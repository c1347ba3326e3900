"""Hand a trained model to the tools ViT users already use.

- :func:`export_timm`: the merged backbone and head as a folder plain timm loads with
  ``timm.create_model("local-dir:DIR", pretrained=True)``.
- :func:`export_peft`: the adapters as a PEFT LoRA adapter that
  ``peft.PeftModel.from_pretrained(base_model, DIR)`` loads onto the unpatched model
  (any model patched through ``patch_model``, not only ViTs).
- :func:`export_run`: either of them for a finished run folder.
"""

from .folders import FORMATS, ExportError, export_run
from .peft_adapter import export_peft, peft_lora_weights
from .timm_folder import export_timm

__all__ = ["FORMATS", "ExportError", "export_peft", "export_run", "export_timm", "peft_lora_weights"]
