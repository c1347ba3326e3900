"""The adapters as a PEFT LoRA adapter (``adapter_config.json`` + ``adapter_model.safetensors``).

PEFT's LoRA adds ``B A x * lora_alpha / r`` to a Linear. Ours adds, per part,
``P diag(lambda) Q x * alpha / r0`` (SVD form) or ``B A x * alpha / r0`` (LoRA
form). The map is exact: ``A = Q``, ``B = P diag(lambda * alpha / r0)`` (the
scale folded into B), and ``lora_alpha = r`` for every module so PEFT's own
scaling is 1. Ranks differ per module, so every module's rank goes into
``rank_pattern`` and ``alpha_pattern``.

A fused projection adapted as parts (q, k, v of a ViT's ``qkv``) with ranks
``r_q, r_k, r_v`` becomes one LoRA on the whole Linear with rank
``r_q + r_k + r_v``: A stacks the parts' rows, and B is block-structured (the
q rows of the output see only the q ranks, and so on), which is the same
update. Modules trained in full (the head) go to ``modules_to_save``.

The files are written by PEFT itself (``save_pretrained``), so they are what
its loader expects.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core import AdaptedLinear, AdapterRef, adapted_layers, unpatch_model, unwrap_model
from .folders import ExportError, staged_folder


@torch.no_grad()
def peft_lora_weights(layer: AdaptedLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A (R, d_in), B (d_out, R))`` with ``B @ A`` equal to the layer's update,
    ``R`` the sum of its parts' active ranks (B block-structured over the parts)."""
    rows, blocks = [], []
    scale = layer.slot_scale()  # (n, capacity): lambda * mask * alpha / r0, or alpha / r0
    for part in range(layer.n_parts):
        active = AdapterRef("", layer, part).active_slots  # masked-out slots of SVD adapters drop out
        rows.append(layer.lora_A[part][active])
        blocks.append(layer.lora_B[part][:, active] * scale[part, active])
    A = torch.cat(rows, dim=0)
    B = torch.zeros(layer.out_features, A.shape[0], dtype=A.dtype, device=A.device)
    row, col = 0, 0
    for block in blocks:
        B[row : row + block.shape[0], col : col + block.shape[1]] = block
        row, col = row + block.shape[0], col + block.shape[1]
    return A, B


def export_peft(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    modules_to_save: Sequence[str] = (),
    overwrite: bool = False,
    base_model_name_or_path: str | None = None,
) -> Path:
    """Write the adapters of ``model`` (patched by ``patch_model``) as a PEFT LoRA adapter in ``out``.

    ``peft.PeftModel.from_pretrained(base, out)`` then gives, on the unpatched
    ``base`` with the same frozen weights, the outputs of ``model``.

    Args:
        modules_to_save: modules trained in full (e.g. ``["head"]``, ``["classifier"]``).
        overwrite: replace a non-empty ``out``.
        base_model_name_or_path: recorded in ``adapter_config.json`` for the reader.
    """
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:
        raise ExportError("exporting to PEFT needs the peft package: pip install peft") from err
    model = unwrap_model(model)
    weights = {name: peft_lora_weights(layer) for name, layer in adapted_layers(model)}
    weights = {name: ab for name, ab in weights.items() if ab[0].shape[0] > 0}  # rank 0: no update
    if not weights:
        raise ExportError("the model has no adapters with a rank above 0 to export")
    ranks = {name: int(A.shape[0]) for name, (A, _) in weights.items()}
    _check_unambiguous(list(ranks))
    default = max(set(ranks.values()), key=list(ranks.values()).count)
    config = LoraConfig(
        r=default,
        lora_alpha=default,  # alpha == r everywhere: PEFT's scaling is exactly 1
        target_modules=list(ranks),
        rank_pattern=ranks,
        alpha_pattern=ranks,
        lora_dropout=0.0,
        bias="none",
        modules_to_save=list(modules_to_save) or None,
    )
    base = unpatch_model(copy.deepcopy(model))  # the trained modules_to_save come along
    peft_model = get_peft_model(base, config)
    _fill(peft_model, weights)
    with staged_folder(out, overwrite) as folder:
        peft_model.save_pretrained(str(folder))
        if base_model_name_or_path:
            # Recorded after saving: given before, save_pretrained looks the name up on the hub.
            saved = LoraConfig.from_pretrained(str(folder))
            saved.base_model_name_or_path = base_model_name_or_path
            saved.save_pretrained(str(folder))
    return Path(out)


@torch.no_grad()
def _fill(peft_model, weights: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    root = peft_model.base_model.model
    for name, (A, B) in weights.items():
        module = root.get_submodule(name)
        module.lora_A["default"].weight.copy_(A)
        module.lora_B["default"].weight.copy_(B)


def _check_unambiguous(names: list[str]) -> None:
    # PEFT matches rank_pattern keys as the regex "(.*\.)?key$": a name must not be
    # matched by another name's pattern, or a module would get the other's rank.
    import re

    for name in names:
        first = next(key for key in names if re.match(rf"(.*\.)?({key})$", name))
        if first != name:
            raise ExportError(f"PEFT would give module {name!r} the rank of {first!r}; rename the modules")
