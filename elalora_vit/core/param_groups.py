"""Optimizer parameter groups of an adapted model.

These groups are a convenience, not a requirement: everything ElaLoRA needs in
order to learn well lives in the adapter.  In particular the faster learning of
the singular values (``ElaLoRAConfig.lambda_lr_multiplier``) is built into the
layer (``lambda = lambda_scale * theta``, see ``layer.py``), so a plain
``AdamW(model.parameters())``, any LR scheduler or a HF ``Trainer`` train as the
groups here do.  The groups let a loop give the head its own learning rate or
the singular values their own optimizer options (e.g. ``weight_decay=0``); they
never multiply ``lambda``'s learning rate again.
"""

from __future__ import annotations

from torch import nn

from .config import ElaLoRAConfig
from .layer import SVDLinear, adapted_layers


def adapter_param_groups(
    model: nn.Module,
    lr: float,
    config: ElaLoRAConfig | None = None,
    *,
    adapter_lr: float | None = None,
) -> list[dict]:
    """Parameter groups for a ``torch.optim`` optimizer, covering every trainable
    parameter of ``model`` once.

    Args:
        model: a model patched by :func:`patch_model` (DDP / ``torch.compile``
            wrappers are looked through).
        lr: learning rate of the parameters that are not adapter factors (the
            classifier head, or the whole model in full fine-tuning).
        config: accepted for backward compatibility and unused: the
            ``lambda_lr_multiplier`` of the config acts inside the adapter.
        adapter_lr: learning rate of every adapter parameter (``P``, ``Q``,
            ``theta``, LoRA's ``A`` and ``B``); defaults to ``lr``.

    Returns:
        Up to three groups, each with a ``"name"``, left out when empty:
        ``"other"`` at ``lr``, ``"adapter"`` at ``adapter_lr`` and ``"lambda"``
        (SVD adapters' ``lora_theta``), also at ``adapter_lr``.

    Example::

        optimizer = torch.optim.AdamW(adapter_param_groups(model, lr=1e-3, config=cfg))
    """
    adapter_lr = lr if adapter_lr is None else adapter_lr
    factors, lambdas = adapter_parameter_ids(model)
    groups = {"other": [], "adapter": [], "lambda": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = "lambda" if id(p) in lambdas else "adapter" if id(p) in factors else "other"
        groups[key].append(p)
    rates = {"other": lr, "adapter": adapter_lr, "lambda": adapter_lr}
    return [{"name": key, "params": params, "lr": rates[key]} for key, params in groups.items() if params]


def adapter_parameter_ids(model: nn.Module) -> tuple[set[int], set[int]]:
    """``(factors, lambdas)``: the ``id``s of the adapter factors (``lora_A``,
    ``lora_B``) and of the singular values (SVD adapters' ``lora_theta``, lambda = lambda_scale x theta) of ``model``."""
    factors, lambdas = set(), set()
    for _, layer in adapted_layers(model):
        factors.update((id(layer.lora_A), id(layer.lora_B)))
        if isinstance(layer, SVDLinear):
            lambdas.add(id(layer.lora_theta))
    return factors, lambdas
