"""The fine-tuning methods, one description each (as PEFT's tuner registry and
timm's model registry keep them).

A :class:`Method` says which adapter layer the method puts into the model, which
allocator moves its ranks, what a run saves, what ``rank`` means and whether the
orthogonal regulariser applies.  Adding a method is one :func:`register_method` call
here; the adapter injection, the adapter files and the training loop read
these descriptions and compare no method names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import nn

from .allocator import AdaLoRAAllocator, RankAllocator
from .config import ConfigError, ElaLoRAConfig
from .layer import AdaptedLinear, LoRALinear, SVDLinear


@dataclass(frozen=True)
class Method:
    """What a fine-tuning method is made of.

    Attributes:
        name: the ``--method`` value.
        title: the name written in messages ("ElaLoRA").
        layer: the adapter layer wrapped around each target; ``None``: no adapters.
        adapter_form: the method an adapter file records, which says the layer to
            rebuild on load; ``None``: this method's own name.  AdaLoRA's SVD adapters
            are saved and loaded as ElaLoRA's.
        allocator: the :class:`RankAllocator` class that moves ranks; ``None``: ranks stay.
        init_rank_factor: for a pruning method, the adapters start at
            ``ceil(init_rank_factor x rank)`` and are pruned down to ``rank``;
            ``None``: they start at ``rank``.
        trains: ``"adapters"``, ``"all"`` (every parameter) or ``"head"`` (the
            classifier head only); the head always trains.
        orth_reg: whether the orthogonal regulariser applies (SVD adapters).
        rank_help: what ``rank`` (``--rank``) means for this method, in a few words;
            ``None``: the method has no rank.
    """

    name: str
    title: str
    layer: type[AdaptedLinear] | None = None
    adapter_form: str | None = None
    allocator: type[RankAllocator] | None = None
    init_rank_factor: float | None = None
    trains: str = "adapters"
    orth_reg: bool = False
    rank_help: str | None = None

    @property
    def form(self) -> str:
        """The adapter form: what ``patch_model(method=)`` and adapter files call this method's layers."""
        return self.adapter_form or self.name

    @property
    def saves_adapters(self) -> bool:
        """True: a run saves an adapter file; False: it saves the trained weights."""
        return self.layer is not None

    def adapter_ranks(self, rank: int, max_rank: int | None, init_rank: int | None = None) -> tuple[int, int | None]:
        """``(rank, max_rank)`` the adapters are created with for a ``--rank`` of ``rank``.

        A pruning method starts at ``init_rank`` (default ``ceil(init_rank_factor x rank)``)
        with no spare capacity; the others start at ``rank`` with ``max_rank`` slots.
        """
        if self.init_rank_factor is None:
            return rank, max_rank
        start = init_rank or math.ceil(self.init_rank_factor * rank)
        return start, start

    def build_allocator(
        self, model: nn.Module, config: ElaLoRAConfig, total_steps: int, rank: int
    ) -> RankAllocator | None:
        """The allocator of a model patched with ``config``; ``rank`` is the ``--rank`` asked for."""
        if self.allocator is None:
            return None
        if self.init_rank_factor is None:
            return self.allocator(model, config, total_steps)
        return self.allocator(model, config, total_steps, target_rank=rank)


_METHODS: dict[str, Method] = {}


def register_method(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in _METHODS:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _METHODS[method.name] = method
    return method


def get_method(name: str) -> Method:
    """The registered method ``name``; :class:`ConfigError` names the known ones otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"invalid value for 'method': {name!r}; allowed: {', '.join(_METHODS)}") from None


def method_names() -> tuple[str, ...]:
    """Every registered method, in registration order."""
    return tuple(_METHODS)


def adapter_forms() -> tuple[str, ...]:
    """The methods an adapter file can record: those that bring their own layer."""
    return tuple(m.name for m in _METHODS.values() if m.layer is not None and m.form == m.name)


def form_of(layer: AdaptedLinear) -> Method:
    """The method whose adapter file holds layers like ``layer``."""
    for name in adapter_forms():
        if type(layer) is _METHODS[name].layer:
            return _METHODS[name]
    raise TypeError(f"no registered method saves {type(layer).__name__} adapters")


register_method(
    Method(
        "elalora",
        "ElaLoRA",
        layer=SVDLinear,
        allocator=RankAllocator,
        orth_reg=True,
        rank_help="initial rank",
    )
)
register_method(Method("lora", "LoRA", layer=LoRALinear, rank_help="fixed rank"))
register_method(
    Method(
        "adalora",
        "AdaLoRA",
        layer=SVDLinear,
        adapter_form="elalora",
        allocator=AdaLoRAAllocator,
        init_rank_factor=1.5,
        orth_reg=True,
        rank_help="final rank",
    )
)
register_method(Method("full", "full fine-tuning", trains="all"))
register_method(Method("linear", "linear probing", trains="head"))
