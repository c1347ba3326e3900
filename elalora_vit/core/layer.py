"""Adapter layers that wrap a frozen ``nn.Linear`` (or a transformers ``Conv1D``, GPT-2's
linear with its weight stored transposed, or an ungrouped ``nn.Conv2d``), and finding them
in a model.

A ``Conv2d`` with ``C_in`` input channels and a ``kh x kw`` kernel is adapted as the linear
map it applies to each patch, ``d_in = C_in * kh * kw``: ``Q`` becomes ``R`` kernels of the
base layer's size, stride, padding and dilation, ``P`` a 1 x 1 convolution (PEFT's conv
LoRA), so ranks, scores and rounds are those of any other adapter.

A wrapped linear may be adapted as one block or as several equal row blocks
("parts", e.g. q, k and v of a fused ``qkv`` projection).  Every part is an
independent adapter with its own rank; the parts of one layer are stored stacked
along a leading dimension so that the forward pass costs two batched matmuls
whatever the number of parts.

A part may be *excluded* (e.g. k, for the usual q/v-only LoRA): it keeps its
slot in the stack, so the shapes stay those of the full split, but its factors
are zero, its scale is zero and it has no active slot, so its rows of the output
are the base layer's.  It is not an adapter: :func:`find_adapters` leaves it
out, so the allocators never see it (it can neither gain nor lose rank), and it
counts in no rank, budget or parameter count.

Shapes, with ``n`` parts, ``R`` slots (capacity), ``d_in`` inputs and
``d_part = out_features / n`` outputs per part:

    lora_A  (n, R, d_in)     Q  (right singular vectors, rows)
    lora_theta (n, R)        theta, with lambda = lambda_scale * theta   [SVD form only]
    lora_B  (n, d_part, R)   P  (left singular vectors, columns)
    rank_mask (n, R) bool    active slots                      [SVD form only]
    lambda_scale () float    s, fixed: lambda = s * theta      [SVD form only]

Why lambda is stored as ``s * theta``: under Adam every parameter moves by about
the learning rate per step, whatever its gradient's size.  ``lambda`` starts at
zero and *is* the magnitude of the update, while every entry of LoRA's ``B``
moves by ``lr``; training ``theta`` makes ``lambda`` move ``s`` times faster
under any optimizer, learning-rate schedule or trainer built over
``model.parameters()``.  The importance score is unchanged by this:
``|theta * dL/dtheta| = |(lambda / s) * (s * dL/dlambda)| = |lambda * dL/dlambda|``.
(Format history: before the state-dict format 2 of this layer, ``lora_E`` held
``lambda`` itself and the speed-up came from an optimizer parameter group;
:meth:`SVDLinear._load_from_state_dict` converts such state dicts.)
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import INITS, ElaLoRAConfig


class MergedTrainingWarning(UserWarning):
    """Training through merged adapters: their parameters get no gradient."""


def is_conv1d(module: nn.Module) -> bool:
    """A transformers ``Conv1D`` (GPT-2's ``c_attn``, ``c_proj``, ``c_fc``): a linear layer
    computing ``x @ W + b`` with ``W`` of shape (in, out).  Recognised by its shape and
    attributes, so ``transformers`` need not be imported."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(weight, Tensor) and weight.dim() == 2
            and getattr(module, "nf", None) == weight.shape[1])


def is_adaptable_conv2d(module: nn.Module) -> bool:
    """An ``nn.Conv2d`` adapters can wrap: ungrouped (a grouped or depthwise convolution is
    not one linear map of its patches)."""
    return isinstance(module, nn.Conv2d) and module.groups == 1


def linear_features(module: nn.Module) -> tuple[int, int] | None:
    """``(in_features, out_features)`` of a module adapters can wrap (``nn.Linear``,
    ``Conv1D``, an ungrouped ``nn.Conv2d``: its inputs per patch, ``C_in * kh * kw``, or an
    ``nn.Embedding``: a linear map of the one-hot token, ``num_embeddings`` in), or None for
    any other module."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if isinstance(module, nn.Embedding):
        return module.num_embeddings, module.embedding_dim
    if is_adaptable_conv2d(module):
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw, module.out_channels
    if is_conv1d(module):
        d_in, d_out = module.weight.shape
        return int(d_in), int(d_out)
    return None


class AdaptedLinear(nn.Module):
    """Common part of the adapter layers: a frozen base ``nn.Linear`` plus a
    low-rank update ``left @ diag(scale) @ right`` per part."""

    def __init__(
        self,
        base_layer: nn.Linear,
        parts: Sequence[str] | None,
        capacity: int,
        dropout: float,
        excluded: Sequence[str] = (),
    ):
        super().__init__()
        features = linear_features(base_layer)
        if features is None:
            raise TypeError(f"adapters wrap nn.Linear, Conv1D, ungrouped nn.Conv2d or nn.Embedding modules, "
                            f"got {type(base_layer).__name__}")
        n_parts = len(parts) if parts else 1
        if features[1] % n_parts:
            raise ValueError(
                f"cannot split a Linear with {features[1]} outputs into "
                f"{n_parts} equal parts {list(parts or [])}"
            )
        self.base_layer = base_layer
        self._features = features
        # Conv1D stores its weight as (in, out): the update is merged transposed (PEFT's fan_in_fan_out).
        self.fan_in_fan_out = is_conv1d(base_layer)
        self.conv = isinstance(base_layer, nn.Conv2d)  # Q as kernels, P as a 1 x 1 convolution
        # an Embedding: Q's columns are looked up by token (Q times the one-hot input); its weight
        # is (num_embeddings, dim), the update's transpose, as PEFT's Embedding LoRA has it
        self.embedding = isinstance(base_layer, nn.Embedding)
        self.part_names: tuple[str | None, ...] = tuple(parts) if parts else (None,)
        self.excluded_parts: tuple[str, ...] = _checked_exclusion(self.part_names, excluded)
        self.capacity = capacity
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.merged = False
        self.disabled = False  # set by disable_adapter(): the base layer's output alone
        # set by merged_inference(): W0 + the update as one weight, the parameters untouched
        self._inference_weight: Tensor | None = None
        self.adapter_config: ElaLoRAConfig | None = None  # what patch_model built it from
        base_layer.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    # Expose the wrapped layer's attributes so code that reads them keeps working.
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return getattr(self.base_layer, "bias", None)  # an Embedding has none

    @property
    def in_features(self) -> int:
        return self._features[0]

    @property
    def out_features(self) -> int:
        return self._features[1]

    @property
    def n_parts(self) -> int:
        return len(self.part_names)

    @property
    def part_features(self) -> int:
        return self.out_features // self.n_parts

    def is_excluded(self, part: int) -> bool:
        """Whether part ``part`` is excluded: a zero slot of the stack, never an adapter."""
        return self.part_names[part] in self.excluded_parts

    def part_inclusion(self) -> Tensor:
        """(n,) bool: True for the parts that are adapted, False for excluded ones."""
        return torch.tensor([not self.is_excluded(p) for p in range(self.n_parts)], device=self.lora_A.device)

    @torch.no_grad()
    def _zero_excluded_factors(self) -> None:
        # Zero factors and a zero scale: an excluded part adds nothing and gets zero gradients.
        for part in range(self.n_parts):
            if self.is_excluded(part):
                self.lora_A[part].zero_()
                self.lora_B[part].zero_()

    def slot_scale(self) -> Tensor:
        """Per-slot multiplier of shape (n, R): what multiplies ``right @ x``."""
        raise NotImplementedError

    def scale_slots(self, z: Tensor, dim: int) -> Tensor:
        """``z * slot_scale()``, the (n * R) slots along dimension ``dim`` of ``z``.  Under
        autocast the fp32 scale is cast to ``z``'s half precision, so the activations are not
        promoted back to fp32 (the scale's gradient comes back to fp32 through the cast)."""
        scale = self.slot_scale().reshape([-1 if d == dim % z.dim() else 1 for d in range(z.dim())])
        return z * (scale if scale.dtype == z.dtype else scale.to(z.dtype))

    def active_slots(self, part: int) -> Tensor:
        """Indices of the active slots of part ``part``, shape (rank,); none for an excluded part."""
        return torch.arange(0 if self.is_excluded(part) else self.capacity, device=self.lora_A.device)

    @classmethod
    def from_config(
        cls,
        base_layer: nn.Linear,
        parts: Sequence[str] | None,
        config: ElaLoRAConfig,
        generator: torch.Generator,
        excluded: Sequence[str] = (),
    ) -> "AdaptedLinear":
        """The layer :func:`patch_model` builds around ``base_layer`` for ``config``,
        with the parts named in ``excluded`` left out."""
        raise NotImplementedError

    @staticmethod
    def capacity_for(config: ElaLoRAConfig) -> int:
        """Slots per adapter of a layer built from ``config``."""
        raise NotImplementedError

    def delta_weight(self) -> Tensor:
        """The update ``scaling * P diag(lambda) Q`` as an (out, in) matrix."""
        left = self.lora_B * self.slot_scale().unsqueeze(1)  # (n, d_part, R)
        return torch.bmm(left, self.lora_A).reshape(self.out_features, self.in_features)

    def _delta_in_weight_layout(self) -> Tensor:
        delta = self.delta_weight()
        if self.conv:
            return delta.reshape(self.base_layer.weight.shape)
        return delta.T if self.fan_in_fan_out or self.embedding else delta

    def forward(self, x: Tensor) -> Tensor:
        if self._inference_weight is not None:
            return self._forward_with(x, self._inference_weight)
        result = self.base_layer(x)
        if self.merged:
            if self.training and torch.is_grad_enabled() and self.lora_A.requires_grad:
                warnings.warn(
                    "ElaLoRA: a forward pass in training mode through merged adapters: the update lives in the "
                    "base weight, so the adapter parameters get no gradient and will not learn. Call "
                    "unmerge_adapters(model) before training (merge only for inference).",
                    MergedTrainingWarning, stacklevel=2)
            return result
        if self.disabled:
            return result
        right = self.lora_A
        n, capacity, d_in = right.shape
        if self.embedding:  # Q times the one-hot token: Q's column of the token (no dropout on an index)
            z = F.embedding(x, right.reshape(n * capacity, d_in).T, padding_idx=self.base_layer.padding_idx)
        else:
            if not torch.is_autocast_enabled() and x.dtype != right.dtype:
                x = x.to(right.dtype)
            if self.conv:
                return result + self._conv_delta(x).to(result.dtype)
            # z = Q x for every slot of every part, then scaled by lambda * mask * alpha / r.
            z = F.linear(self.dropout(x), right.reshape(n * capacity, d_in))
        z = self.scale_slots(z, -1)
        if n == 1:
            delta = F.linear(z, self.lora_B[0])
        else:
            lead = z.shape[:-1]
            z = z.reshape(-1, n, capacity).transpose(0, 1)  # (n, N, R)
            delta = torch.bmm(z, self.lora_B.transpose(1, 2))  # (n, N, d_part)
            delta = delta.transpose(0, 1).reshape(*lead, n * self.part_features)
        return result + delta.to(result.dtype)

    def _conv_delta(self, x: Tensor) -> Tensor:
        """The update of a ``Conv2d``: ``Q`` as ``n * R`` kernels with the base layer's geometry,
        the slot scale, then ``P`` as a 1 x 1 convolution, one group per part."""
        conv = self.base_layer
        n, capacity, _ = self.lora_A.shape
        kernels = self.lora_A.reshape(n * capacity, conv.in_channels, *conv.kernel_size)
        padding = conv.padding
        if conv.padding_mode != "zeros":  # padded as nn.Conv2d pads it, then convolved unpadded
            x, padding = F.pad(x, conv._reversed_padding_repeated_twice, mode=conv.padding_mode), 0
        z = F.conv2d(self.dropout(x), kernels, None, conv.stride, padding, conv.dilation)
        z = self.scale_slots(z, 1)
        left = self.lora_B.reshape(n * self.part_features, capacity, 1, 1)
        return F.conv2d(z, left, groups=n)

    def _forward_with(self, x: Tensor, weight: Tensor) -> Tensor:
        """The base layer's computation with ``weight`` (in the base layer's layout) in place of its own."""
        bias = self.bias
        if self.conv:
            return self.base_layer._conv_forward(x, weight, bias)
        if self.embedding:
            e = self.base_layer
            return F.embedding(x, weight, e.padding_idx, e.max_norm, e.norm_type, e.scale_grad_by_freq, e.sparse)
        if not self.fan_in_fan_out:
            return F.linear(x, weight, bias)
        out = x.reshape(-1, weight.shape[0]) @ weight  # Conv1D: (in, out)
        out = out if bias is None else out + bias
        return out.reshape(*x.shape[:-1], weight.shape[1])

    @torch.no_grad()
    def begin_merged_inference(self) -> None:
        """Until :meth:`end_merged_inference`, compute as a merged layer (one matmul) from a
        separate merged weight; the base weight and the adapter are left as they are."""
        if not self.merged and not self.disabled:
            weight = self.base_layer.weight
            self._inference_weight = weight + self._delta_in_weight_layout().to(weight.dtype)

    def end_merged_inference(self) -> None:
        self._inference_weight = None

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the update into the base weight (zero inference overhead)."""
        if self.merged:
            return
        weight = self.base_layer.weight
        weight += self._delta_in_weight_layout().to(weight.dtype)
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge`."""
        if not self.merged:
            return
        weight = self.base_layer.weight
        weight -= self._delta_in_weight_layout().to(weight.dtype)
        self.merged = False

    def extra_repr(self) -> str:
        parts = ",".join(p for p in self.part_names if p) or "-"
        excluded = f", excluded={','.join(self.excluded_parts)}" if self.excluded_parts else ""
        return f"in={self.in_features}, out={self.out_features}, parts={parts}{excluded}, capacity={self.capacity}"


def _checked_exclusion(part_names: tuple[str | None, ...], excluded: Sequence[str]) -> tuple[str, ...]:
    """``excluded`` in part order, after checking that it names some, not all, of the parts."""
    excluded = set(excluded)
    if not excluded:
        return ()
    if part_names == (None,):
        raise ValueError(f"cannot exclude parts {sorted(excluded)} of a layer that is not split into parts")
    unknown = sorted(excluded - set(part_names))
    if unknown:
        raise ValueError(f"cannot exclude parts {unknown}: the layer's parts are {list(part_names)}")
    if excluded >= set(part_names):
        raise ValueError(f"every part {list(part_names)} is excluded: leave the layer out instead")
    return tuple(p for p in part_names if p in excluded)


class SVDLinear(AdaptedLinear):
    """``W0 + P diag(lambda) Q * alpha / r`` with a fixed capacity and a mask of
    active slots (METHOD.md sections 1 and 5).

    ``lambda`` starts at zero, so a freshly wrapped layer computes exactly what
    the base layer computes.  Shapes never change: pruning clears a mask bit,
    expansion sets one and re-initialises that slot.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        parts: Sequence[str] | None,
        rank: int,
        capacity: int,
        scaling: float,
        dropout: float = 0.0,
        init: str = "gaussian",
        init_std: float = 0.02,
        generator: torch.Generator | None = None,
        lambda_scale: float = 1.0,
        excluded: Sequence[str] = (),
    ):
        super().__init__(base_layer, parts, capacity, dropout, excluded)
        if not lambda_scale > 0:
            raise ValueError(f"lambda_scale must be > 0, got {lambda_scale!r}")
        n, d_in, d_part = self.n_parts, self.in_features, self.part_features
        factory = {"device": base_layer.weight.device, "dtype": _adapter_dtype(base_layer.weight)}
        self.scaling = float(scaling)
        self.lora_A = nn.Parameter(torch.empty(n, capacity, d_in, **factory))
        self.lora_theta = nn.Parameter(torch.zeros(n, capacity, **factory))
        self.lora_B = nn.Parameter(torch.empty(n, d_part, capacity, **factory))
        mask = torch.zeros(n, capacity, dtype=torch.bool, device=factory["device"])
        mask[:, :rank] = True
        mask &= self.part_inclusion().unsqueeze(1)  # an excluded part never has a rank
        self.register_buffer("rank_mask", mask)
        self.register_buffer("lambda_scale", torch.tensor(float(lambda_scale), **factory))
        self.reset_factors(init, init_std, generator)

    @classmethod
    def from_config(cls, base_layer, parts, config, generator, excluded=()) -> "SVDLinear":
        return cls(
            base_layer,
            parts,
            rank=config.rank,
            capacity=config.max_rank,
            scaling=config.scaling,
            dropout=config.dropout,
            init=config.init,
            init_std=config.init_std,
            generator=generator,
            lambda_scale=config.lambda_lr_multiplier,
            excluded=excluded,
        )

    @staticmethod
    def capacity_for(config: ElaLoRAConfig) -> int:
        return config.max_rank

    @torch.no_grad()
    def reset_factors(self, init: str, init_std: float, generator: torch.Generator | None) -> None:
        if init == "gaussian":
            self.lora_A.copy_(_randn(self.lora_A.shape, generator) * init_std)
            self.lora_B.copy_(_randn(self.lora_B.shape, generator) * init_std)
        elif init == "orthogonal":
            for p in range(self.n_parts):
                self.lora_A[p].copy_(_orthonormal_rows(self.capacity, self.in_features, generator))
                self.lora_B[p].copy_(_orthonormal_rows(self.capacity, self.part_features, generator).T)
        elif init == "lora":
            # LoRA's start in SVD form: Q's active rows are LoRA's A (the same draws from the same
            # generator), P = 0 as LoRA's B, lambda = 1. P has a gradient from the first step, as
            # B has; the function is unchanged because P is 0.
            rank = int(self.rank_mask.any(dim=0).sum())
            self.lora_A.zero_()
            self.lora_A[:, :rank] = _lora_a_init(self.n_parts, rank, self.in_features, generator)
            self.lora_B.zero_()
            self.lora_theta.copy_(self.rank_mask / self.lambda_scale)
            self._zero_excluded_factors()
            return
        else:
            raise ValueError(f"unknown init {init!r}; expected one of {list(INITS)}")
        self.lora_theta.zero_()
        self._zero_excluded_factors()

    def lambdas(self) -> Tensor:
        """The singular values ``lambda = lambda_scale * theta``, shape (n, R), inactive slots included."""
        return self.lora_theta * self.lambda_scale

    @torch.no_grad()
    def set_lambdas(self, values: Tensor, index: tuple = (...,)) -> None:
        """Write singular values (not ``theta``): ``lambdas()[index] = values``."""
        self.lora_theta[index] = torch.as_tensor(values).to(self.lora_theta) / self.lambda_scale

    def slot_scale(self) -> Tensor:
        if torch.compiler.is_compiling():  # the compiler fuses the product: nothing to cache
            return self.lora_theta * (self.lambda_scale * self.rank_mask * self.scaling)
        return self.lora_theta * self.slot_factor()

    def slot_factor(self) -> Tensor:
        """``lambda_scale * rank_mask * scaling``, shape (n, R): the constant part of the slot
        scale, recomputed only when the mask, ``lambda_scale`` or ``scaling`` changed (a round, a
        load: torch counts every in-place write in a tensor's version), so a step skips the
        mask's conversion and two multiplies."""
        key = (id(self.rank_mask), self.rank_mask._version, id(self.lambda_scale), self.lambda_scale._version,
               self.scaling, self.lora_theta.dtype, self.lora_theta.device)
        if getattr(self, "_slot_factor_key", None) != key:
            with torch.no_grad():
                self._slot_factor = self.lambda_scale * self.rank_mask.to(self.lora_theta.dtype) * self.scaling
            self._slot_factor_key = key
        return self._slot_factor

    # State-dict format 2: ``lora_theta`` and ``lambda_scale`` replace format 1's ``lora_E`` (= lambda).
    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors):
        old_key = prefix + "lora_E"
        if old_key in state_dict and prefix + "lora_theta" not in state_dict:
            # A format-1 state dict (elalora-vit before lambda = s * theta): lora_E is lambda itself.
            lam = state_dict.pop(old_key)
            state_dict[prefix + "lora_theta"] = lam / self.lambda_scale.to(lam)
            state_dict[prefix + "lambda_scale"] = self.lambda_scale.detach().clone()
            _warn_converted()
        mask = state_dict.get(prefix + "rank_mask")
        if mask is not None and mask.shape == self.rank_mask.shape and self._activates_excluded(mask):
            errors.append(
                f"{prefix}rank_mask activates excluded parts {list(self.excluded_parts)}: the state dict was saved "
                "from a model that adapts them; patch the model with the same exclusions as the saved one"
            )
            return
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def _activates_excluded(self, mask: Tensor) -> bool:
        return bool((mask & ~self.part_inclusion().to(mask.device).unsqueeze(1)).any())

    def active_slots(self, part: int) -> Tensor:
        return self.rank_mask[part].nonzero().flatten()

    def ranks(self) -> list[int]:
        return [int(r) for r in self.rank_mask.sum(dim=1).tolist()]


class LoRALinear(AdaptedLinear):
    """Fixed-rank LoRA in ``B A`` form (the baseline): ``W0 + B A * alpha / r``.

    ``B`` starts at zero, ``A`` uniformly (Kaiming), as in LoRA and PEFT.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        parts: Sequence[str] | None,
        rank: int,
        scaling: float,
        dropout: float = 0.0,
        generator: torch.Generator | None = None,
        excluded: Sequence[str] = (),
    ):
        super().__init__(base_layer, parts, rank, dropout, excluded)
        n, d_in, d_part = self.n_parts, self.in_features, self.part_features
        factory = {"device": base_layer.weight.device, "dtype": _adapter_dtype(base_layer.weight)}
        self.scaling = float(scaling)
        self.lora_A = nn.Parameter(_lora_a_init(n, rank, d_in, generator).to(**factory))
        self.lora_B = nn.Parameter(torch.zeros(n, d_part, rank, **factory))
        scale = torch.full((n, rank), self.scaling, **factory) * self.part_inclusion().unsqueeze(1)
        self.register_buffer("_scale", scale, persistent=False)  # 0 for an excluded part
        self._zero_excluded_factors()

    @classmethod
    def from_config(cls, base_layer, parts, config, generator, excluded=()) -> "LoRALinear":
        return cls(base_layer, parts, config.rank, config.scaling, config.dropout, generator, excluded)

    @staticmethod
    def capacity_for(config: ElaLoRAConfig) -> int:
        return config.rank

    def slot_scale(self) -> Tensor:
        return self._scale

    def ranks(self) -> list[int]:
        return [0 if self.is_excluded(p) else self.capacity for p in range(self.n_parts)]


@dataclass(frozen=True)
class AdapterRef:
    """One adapter: part ``part`` of the layer ``layer``, named ``name``.

    ``<module name>`` for an unsplit layer, ``<module name>.<part name>`` for a
    part of a fused projection (e.g. ``blocks.3.attn.qkv.v``).
    """

    name: str
    layer: AdaptedLinear
    part: int

    @property
    def rank(self) -> int:
        return self.layer.ranks()[self.part]

    @property
    def active_slots(self) -> Tensor:
        """Indices of the active slots, shape (rank,)."""
        return self.layer.active_slots(self.part)

    @property
    def P(self) -> Tensor:
        """Active columns of P (``lora_B``), shape (d_part, rank)."""
        return self.layer.lora_B[self.part][:, self.active_slots]

    @property
    def Q(self) -> Tensor:
        """Active rows of Q (``lora_A``), shape (rank, d_in)."""
        return self.layer.lora_A[self.part][self.active_slots]

    @property
    def lam(self) -> Tensor:
        """Active singular values ``lambda`` (``lambda_scale * lora_theta``), shape (rank,)."""
        if not isinstance(self.layer, SVDLinear):
            raise AttributeError("fixed-rank LoRA adapters have no singular values")
        return self.layer.lambdas()[self.part][self.active_slots]


_converted_warned = False


def _warn_converted() -> None:
    global _converted_warned
    if not _converted_warned:
        _converted_warned = True
        warnings.warn(
            "loaded an SVDLinear state dict of format 1 (key 'lora_E' = lambda, written by elalora-vit "
            "before lambda was stored as lambda_scale * lora_theta); it was converted to format 2. "
            "Save it again to store the new format.",
            stacklevel=3,
        )


def find_adapters(model: nn.Module, kind: type = AdaptedLinear) -> list[AdapterRef]:
    """Every adapter of ``model`` whose layer is a ``kind``, in model order, named
    ``<module>`` or ``<module>.<part>`` (the one place adapters are named).
    Excluded parts are not adapters and are left out."""
    refs = []
    for name, layer in _adapted_layers(unwrap_model(model)):
        if not isinstance(layer, kind):
            continue
        for index, part in enumerate(layer.part_names):
            if layer.is_excluded(index):
                continue
            refs.append(AdapterRef(name if part is None else f"{name}.{part}", layer, index))
    return refs


def adapted_layers(model: nn.Module) -> list[tuple[str, AdaptedLinear]]:
    """``(module name, layer)`` for every adapter layer of ``model``."""
    return list(_adapted_layers(unwrap_model(model)))


def _adapted_layers(model: nn.Module) -> Iterator[tuple[str, AdaptedLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, AdaptedLinear):
            yield name, module


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / ``torch.compile`` wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        else:
            return model


def _adapter_dtype(weight: Tensor) -> torch.dtype:
    # Adapters train in fp32 even when the frozen base is stored in half precision.
    return weight.dtype if weight.dtype == torch.float64 else torch.float32


def _randn(shape: torch.Size, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator)


def _lora_a_init(n: int, rank: int, d_in: int, generator: torch.Generator | None) -> Tensor:
    """LoRA's (and PEFT's) A: ``kaiming_uniform_(a=sqrt(5))`` on each (rank, d_in) matrix,
    i.e. uniform in +-1 / sqrt(d_in); shape (n, rank, d_in)."""
    bound = 1.0 / math.sqrt(d_in)
    return (torch.rand((n, rank, d_in), generator=generator) * 2 - 1) * bound


def _orthonormal_rows(rows: int, cols: int, generator: torch.Generator | None) -> Tensor:
    """A (rows, cols) matrix whose rows are orthonormal (or columns, if rows > cols)."""
    g = _randn(torch.Size((max(rows, cols), min(rows, cols))), generator)
    q, r = torch.linalg.qr(g)
    q = q * torch.sign(torch.diagonal(r)).unsqueeze(0)
    return q.T if rows <= cols else q
