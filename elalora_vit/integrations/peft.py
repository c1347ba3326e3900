"""Everything that speaks PEFT: the exporter to a PEFT LoRA adapter folder and the
importer from one.  ``peft`` is an optional dependency, imported only inside these
functions.

**Export** (:func:`export_peft`): PEFT's LoRA adds ``B A x * lora_alpha / r`` to a Linear.
Ours adds, per part, ``P diag(lambda) Q x * alpha / r0`` (SVD form) or ``B A x * alpha / r0``
(LoRA form). The map is exact: ``A = Q``, ``B = P diag(lambda * alpha / r0)`` (the
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

**Import** (:func:`from_peft`): a PEFT LoRA folder becomes an ElaLoRA starting point.
PEFT's loader reads the folder onto a copy of the model; each module's update
``scaling * B A`` is factored exactly as ``P diag(lambda) Q`` (an SVD, through QR
factors of A and B so it costs ``O((d_in + d_out) r^2)``) and written into the active
slots of an SVD adapter, so the patched model computes what the PEFT model computes
and the allocator can then move its ranks.

Why not ``get_peft_model(model, ElaLoraConfig(...))``: PEFT 0.21's
``register_peft_method`` accepts only names that are members of its closed ``PeftType``
enum, so a method outside PEFT cannot register without altering PEFT's enum at run
time.  The same calls exist on our own objects instead (:mod:`elalora_vit.core.pretrained`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..core import AdaptedLinear, AdapterRef, adapted_layers, unpatch_model, unwrap_model
from ..export.staging import ExportError, staged_folder


def peft_conv_difference(conv: nn.Module) -> str | None:
    """Why PEFT's Conv2d LoRA would not compute this convolution's update, or None: PEFT builds
    its ``lora_A`` with the base layer's kernel, stride and padding but not its dilation or
    padding mode, so the update of a dilated or non-zero-padded convolution differs there."""
    if not isinstance(conv, nn.Conv2d):
        return None
    if tuple(conv.dilation) != (1, 1):
        return f"dilation {tuple(conv.dilation)}"
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r}"
    return None


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
    for name, layer in adapted_layers(model):
        why = peft_conv_difference(layer.base_layer)
        if why:
            raise ExportError(f"'{name}' is a Conv2d with {why}: PEFT's Conv2d LoRA ignores it, so PEFT would "
                              "compute another update; export with --format timm (merged) instead")
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
        # GPT-2's Conv1D; PEFT's Embedding LoRA ignores the flag (its weight is always transposed)
        fan_in_fan_out=all(layer.fan_in_fan_out for _, layer in adapted_layers(model) if not layer.embedding),
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
        if "default" in getattr(module, "lora_embedding_A", {}):  # an Embedding LoRA: A (r, vocab), B (dim, r)
            module.lora_embedding_A["default"].copy_(A)
            module.lora_embedding_B["default"].copy_(B)
            continue
        # a Conv2d LoRA holds A as kernels (r, C_in, kh, kw) and B as a 1 x 1 conv (d_out, r, 1, 1)
        module.lora_A["default"].weight.copy_(A.reshape(module.lora_A["default"].weight.shape))
        module.lora_B["default"].weight.copy_(B.reshape(module.lora_B["default"].weight.shape))


def _check_unambiguous(names: list[str]) -> None:
    # PEFT matches rank_pattern keys as the regex "(.*\.)?key$": a name must not be
    # matched by another name's pattern, or a module would get the other's rank.
    import re

    for name in names:
        first = next(key for key in names if re.match(rf"(.*\.)?({key})$", name))
        if first != name:
            raise ExportError(f"PEFT would give module {name!r} the rank of {first!r}; rename the modules")


class PeftImportError(ValueError):
    """A PEFT adapter folder that cannot become ElaLoRA adapters."""


@torch.no_grad()
def from_peft(
    model: nn.Module,
    folder: str | os.PathLike,
    config: "ElaLoRAConfig | None" = None,
    *,
    split: dict[str, Sequence[str]] | None = None,
    adapter_name: str = "default",
) -> list[AdapterRef]:
    """Patch ``model`` with ElaLoRA adapters that start where the PEFT LoRA in ``folder`` ends.

    Every LoRA module of the folder becomes an SVD adapter whose active ranks hold the
    exact factorisation of PEFT's update, so the patched ``model`` gives the PEFT model's
    outputs (to float rounding), and its ranks can then be pruned and expanded by a
    :class:`~elalora_vit.RankAllocator`.  Modules PEFT saved in full (``modules_to_save``)
    are copied into ``model`` and left trainable.

    Args:
        model: the unpatched base model the PEFT adapter was trained on.
        folder: a PEFT adapter folder (``adapter_config.json`` + weights), as
            ``PeftModel.save_pretrained`` writes it.
        config: the ElaLoRA settings; default: ``ElaLoRAConfig(rank=r, alpha=lora_alpha,
            dropout=lora_dropout)`` from the folder. Its capacity (``max_rank``) must hold
            every module's LoRA rank.
        split: fused projections to adapt as parts (as for ``patch_model``); each part's
            rows of the update are factored on their own.
        adapter_name: the name to load the folder under (PEFT's, not recorded).

    Returns:
        The adapters, as :func:`~elalora_vit.patch_model` returns them.
    """
    from ..core import ElaLoRAConfig, patch_model

    lora_config, root, factors = _read_peft_lora(model, Path(folder), adapter_name)
    ranks = {name: int(A.shape[0]) for name, (_, A) in factors.items()}
    if config is None:
        config = ElaLoRAConfig(rank=max(ranks.values()), alpha=float(lora_config.lora_alpha),
                               dropout=float(lora_config.lora_dropout or 0.0))
    adapters = patch_model(model, list(factors), config, split=split)
    for name, (B, A) in factors.items():
        layer = model.get_submodule(name)
        for part in range(layer.n_parts):
            rows = slice(part * layer.part_features, (part + 1) * layer.part_features)
            _write_part(layer, part, name, B[rows], A, ranks[name], config)
    for name in lora_config.modules_to_save or ():
        _copy_saved_modules(root, model, name, adapter_name)
    return adapters


def _read_peft_lora(model: nn.Module, folder: Path, adapter_name: str):
    """``(LoraConfig, PEFT's model root, {module: (scaling * B, A)})``, read by PEFT's own loader
    onto a copy of ``model``; whatever has no SVD counterpart is refused by name."""
    try:
        from peft import LoraConfig, PeftModel
        from peft.tuners.lora import LoraLayer
    except ImportError as err:
        raise PeftImportError("importing a PEFT adapter needs the peft package: pip install peft") from err
    if not (folder / "adapter_config.json").is_file():
        raise PeftImportError(f"{folder} is not a PEFT adapter folder (no adapter_config.json)")
    lora_config = LoraConfig.from_pretrained(str(folder))
    if getattr(lora_config, "peft_type", None) is not None and str(lora_config.peft_type.value) != "LORA":
        raise PeftImportError(f"{folder} holds a {lora_config.peft_type.value} adapter; only LoRA can be imported")
    if getattr(lora_config, "use_dora", False):
        raise PeftImportError(f"{folder} is a DoRA adapter (use_dora): its magnitude vector has no "
                              "counterpart in the SVD form; only plain LoRA can be imported")
    if getattr(lora_config, "lora_bias", False):
        raise PeftImportError(f"{folder} trains a bias in lora_B (lora_bias): only plain LoRA can be imported")
    peft_model = PeftModel.from_pretrained(copy.deepcopy(unwrap_model(model)), str(folder), adapter_name=adapter_name)
    root = peft_model.base_model.model
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, module in root.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        if adapter_name in getattr(module, "lora_embedding_A", {}):  # an Embedding LoRA: A (r, vocab), B (dim, r)
            A, B = module.lora_embedding_A[adapter_name].double(), module.lora_embedding_B[adapter_name].double()
            factors[name] = (B * float(module.scaling[adapter_name]), A)
            continue
        if adapter_name not in getattr(module, "lora_A", {}):
            continue
        lora_a, lora_b = module.lora_A[adapter_name], module.lora_B[adapter_name]
        conv = isinstance(lora_a, nn.Conv2d) and isinstance(lora_b, nn.Conv2d) and lora_a.groups == 1 \
            and tuple(lora_b.kernel_size) == (1, 1) and tuple(lora_b.stride) == (1, 1)
        if not hasattr(lora_a, "weight") or (lora_a.weight.dim() != 2 and not conv):
            raise PeftImportError(f"module '{name}' is a {type(module.get_base_layer()).__name__} LoRA; only "
                                  "Linear, Conv1D, ungrouped Conv2d and Embedding LoRA modules can be imported")
        why = peft_conv_difference(module.get_base_layer())
        if why:
            raise PeftImportError(f"module '{name}' is a Conv2d with {why}, which PEFT's Conv2d LoRA ignores: "
                                  "its update is not a convolution of the base layer's geometry")
        A = lora_a.weight.double().reshape(lora_a.weight.shape[0], -1)  # (r, d_in); a conv's kernels flattened
        B = lora_b.weight.double().reshape(lora_b.weight.shape[0], -1)  # (d_out, r)
        factors[name] = (B * float(module.scaling[adapter_name]), A)  # the update is their product
    if not factors:
        raise PeftImportError(f"{folder} adapts no Linear module of this model")
    return lora_config, root, factors


def _write_part(layer, part: int, name: str, B: torch.Tensor, A: torch.Tensor, rank: int, config) -> None:
    """Make part ``part`` of the SVD layer compute ``B A``: its first slots active, holding
    the update's singular triplets."""
    P, lam, Q = _factor(B, A)
    keep = min(int((lam > 0).sum()), rank)
    if keep > layer.capacity:
        raise PeftImportError(
            f"module '{name}' has LoRA rank {keep}, above the adapters' capacity {layer.capacity} "
            f"(max_rank); pass a config with max_rank >= {keep}")
    layer.lora_A[part].zero_()
    layer.lora_B[part].zero_()
    layer.lora_theta[part].zero_()
    layer.lora_A[part, :keep] = Q[:keep].to(layer.lora_A)
    layer.lora_B[part, :, :keep] = P[:, :keep].to(layer.lora_B)
    layer.set_lambdas(lam[:keep] / layer.scaling, (part, slice(0, keep)))
    layer.rank_mask[part] = False
    layer.rank_mask[part, :keep] = True
    _fill_spare_slots(layer, part, keep, config)


def _factor(B: torch.Tensor, A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``P (d_out, r), lambda (r,), Q (r, d_in)`` with ``P diag(lambda) Q = B A``, P and Q^T
    orthonormal, lambda descending."""
    qb, rb = torch.linalg.qr(B)  # B = qb rb
    qa, ra = torch.linalg.qr(A.T)  # A = ra^T qa^T
    u, s, vh = torch.linalg.svd(rb @ ra.T)
    return qb @ u, s, vh @ qa.T


def _fill_spare_slots(layer, part: int, keep: int, config) -> None:
    """Give the inactive slots orthonormal directions outside the imported ones (their
    lambda stays 0, so the function is unchanged), where the dimension leaves room."""
    generator = torch.Generator().manual_seed(config.seed + part)
    for factor in (layer.lora_A[part], layer.lora_B[part].T):  # (capacity, d): rows are directions
        spare_rows, dim = layer.capacity - keep, factor.shape[1]
        if spare_rows <= 0 or layer.capacity > dim:
            continue
        basis = factor[:keep].double()  # orthonormal rows (from the SVD)
        spare = torch.randn(spare_rows, dim, generator=generator, dtype=torch.float64)
        spare -= (spare @ basis.T) @ basis
        factor[keep:] = torch.linalg.qr(spare.T).Q.T.to(factor)


def _copy_saved_modules(root: nn.Module, model: nn.Module, pattern: str, adapter_name: str) -> None:
    from peft.utils import ModulesToSaveWrapper

    for name, module in root.named_modules():
        if isinstance(module, ModulesToSaveWrapper) and (name == pattern or name.endswith("." + pattern)):
            trained = module.modules_to_save[adapter_name]
            target = model.get_submodule(name)
            target.load_state_dict(trained.state_dict())
            target.requires_grad_(True)
