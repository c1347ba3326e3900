"""Optimizer parameter groups of an adapted model.

Under Adam every parameter moves by about the learning rate per step, whatever
the size of its gradient.  The singular values ``lambda`` of an SVD adapter start
at zero and *are* the magnitude of the update ``P diag(lambda) Q``, so with
orthonormal ``P`` and ``Q`` the update grows by about ``lr * alpha / r`` per step,
while LoRA's ``B A`` grows ``sqrt(d_out)`` times faster (every entry of ``B``
moves by ``lr``).  ``ElaLoRAConfig.lambda_lr_multiplier`` gives ``lambda`` its own
learning rate to close that gap; it reaches the optimizer through the groups
built here, which the training loop and Python API users share.
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
        config: the config the model was patched with; its
            ``lambda_lr_multiplier`` sets the learning rate of ``lambda``.
            ``None`` uses the defaults of :class:`ElaLoRAConfig`.
        adapter_lr: learning rate of the adapter factors (``P``, ``Q``, LoRA's
            ``A`` and ``B``); defaults to ``lr``.

    Returns:
        Up to three groups, each with a ``"name"``, left out when empty:
        ``"other"`` at ``lr``, ``"adapter"`` at ``adapter_lr`` and ``"lambda"``
        (SVD adapters' ``lora_E``) at ``adapter_lr * lambda_lr_multiplier``.

    Example::

        optimizer = torch.optim.AdamW(adapter_param_groups(model, lr=1e-3, config=cfg))
    """
    config = config or ElaLoRAConfig()
    adapter_lr = lr if adapter_lr is None else adapter_lr
    factors, lambdas = adapter_parameter_ids(model)
    groups = {"other": [], "adapter": [], "lambda": []}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        key = "lambda" if id(p) in lambdas else "adapter" if id(p) in factors else "other"
        groups[key].append(p)
    rates = {"other": lr, "adapter": adapter_lr, "lambda": adapter_lr * config.lambda_lr_multiplier}
    return [{"name": key, "params": params, "lr": rates[key]} for key, params in groups.items() if params]


def adapter_parameter_ids(model: nn.Module) -> tuple[set[int], set[int]]:
    """``(factors, lambdas)``: the ``id``s of the adapter factors (``lora_A``,
    ``lora_B``) and of the singular values (SVD adapters' ``lora_E``) of ``model``."""
    factors, lambdas = set(), set()
    for _, layer in adapted_layers(model):
        factors.update((id(layer.lora_A), id(layer.lora_B)))
        if isinstance(layer, SVDLinear):
            lambdas.add(id(layer.lora_E))
    return factors, lambdas
