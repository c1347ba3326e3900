"""The schema of a fine-tuning run's configuration: one dataclass per concern, with every
default declared here and only here (``configs/default.yaml`` mirrors them for reading), and
the run's validation (:mod:`.checks` holds the rules, :mod:`.convert` the type conversion).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..core.config import ElaLoRAConfig, document_fields, setting, upgrade_schedule_key
from ..core.registry import get_method, method_names
from ..data import SOURCES
from ..vit import DEFAULT_MODEL
from .checks import MAX_EPOCHS, _allowed, _check_adapter, _normalise, _positive_int, check_value, steps_of
from .convert import _build

TRACKERS = ("none", "tensorboard", "wandb")
"""Where a run also logs its scalars, ranks and figures (``log_to``; ``train/tracking.py``)."""

METHODS = method_names()  # the registry's, in registration order
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere (``runtime.resolve_precision``)."""
LR_SCHEDULES = ("cosine", "linear", "constant")
ADAPTER_METHODS = tuple(m for m in METHODS if get_method(m).saves_adapters)


def _listed(factory, doc: str) -> Any:
    """A documented field whose default is a fresh ``factory()`` (a list or a mapping)."""
    return field(default_factory=factory, metadata={"doc": doc})


@dataclass
class DataConfig:
    task: str = setting("cifar", "the VTAB-1k task (`elalora-vit list-tasks`); aliases cifar100, oxford_pet")
    source: str = setting("folder", "where images come from: folder | tfds | digits (the offline quick start)")
    data_dir: str = setting("data/vtab-1k", "root of the folder layout (source: folder)")
    tfds_dir: str | None = setting(None, "tensorflow-datasets data_dir (source: tfds); None: TFDS's default")
    train_split: str = setting("train800val200", "the training split; train800 (with eval_split val200) for "
                                                 "choosing hyper-parameters")
    eval_split: str = setting("test", "the split evaluated at the end and every eval_every epochs")
    image_size: int | None = setting(None, "input size in pixels; None: the model's input size (224)")
    mean: list[float] | None = setting(None, "per-channel normalisation mean; None: the model's pretrained config")
    std: list[float] | None = setting(None, "per-channel normalisation std (each > 0); None: the model's pretrained config")
    num_workers: int = setting(2, "evaluation loader worker processes (when the image cache is off)")
    cache: bool = setting(True, "decode each split once into the image cache, then read it memory-mapped")
    cache_dir: str | None = setting(None, "the image cache's folder; None: $ELALORA_VIT_CACHE, else "
                                          "~/.cache/elalora-vit/images")


@dataclass
class ModelConfig:
    name: str = setting(DEFAULT_MODEL, "the timm model; the default is the VTAB-1k protocol's ViT-B/16 (ImageNet-21k)")
    pretrained: bool = setting(True, "load timm's pretrained weights (offline: give checkpoint)")
    checkpoint: str | None = setting(None, "local backbone weights: .npz (Google's), .safetensors or .pth")
    kwargs: dict[str, Any] = _listed(dict, "extra timm.create_model arguments (img_size, depth, drop_path_rate, ...)")
    targets: list[str] | None = setting(None, "modules to adapt (globs, re: patterns); None: q, k, v, attn.proj, "
                                              "mlp.fc1, mlp.fc2 of every block")
    split: dict[str, list[str]] | None = setting(None, "fused layers adapted as parts; None with the default "
                                                       "targets: attn.qkv -> q, k, v")
    exclude: list[str] = _listed(list, "modules, or parts of a split layer (blocks.*.attn.qkv.k), left out")


# The adapter section is ElaLoRAConfig's fields, with their defaults and docs, except:
# the schedule lengths, here steps when >= 1 or else fractions of the run's total steps
# (the core counts steps only); the seed, which is the run's; and two settings only a
# training run has.
_SCHEDULE = {  # core field -> (field here, default)
    "warmup_steps": ("warmup", 0.1),
    "adjust_interval": ("adjust_interval", 0.03),
    "stabilize_steps": ("stabilize", 0.3),
}
_IN_STEPS_OR_FRACTIONS = "; steps if >= 1, else a fraction of the run"
_FROM_RUN = ("seed",)
_DOC_IN_A_RUN = {  # where the core's words do not say what a run makes of the value
    "rank": ", ".join(f"{get_method(m).rank_help} ({get_method(m).title})" for m in ADAPTER_METHODS),
}
_RUN_ONLY = [
    (
        "adalora_init_rank",
        "int | None",
        setting(None, f"AdaLoRA's starting rank; {get_method('adalora').init_rank_factor:g} x rank when unset"),
    ),
    ("lr_multiplier", "float", setting(1.0, "adapter learning rate = optim.lr x lr_multiplier")),
]
SHARED_ADAPTER_FIELDS = tuple(
    f.name for f in dataclasses.fields(ElaLoRAConfig) if f.name not in _SCHEDULE and f.name not in _FROM_RUN
)


def _adapter_fields() -> list[tuple[str, str, Any]]:
    fields = []
    for f in dataclasses.fields(ElaLoRAConfig):
        if f.name in _SCHEDULE:
            name, default = _SCHEDULE[f.name]
            fields.append((name, "float", setting(default, f.metadata["doc"] + _IN_STEPS_OR_FRACTIONS)))
        elif f.name not in _FROM_RUN:
            fields.append((f.name, f.type, setting(f.default, _DOC_IN_A_RUN.get(f.name, f.metadata["doc"]))))
    return fields + _RUN_ONLY


AdapterConfig = document_fields(
    dataclasses.make_dataclass(
        "AdapterConfig",
        _adapter_fields(),
        namespace={
            "__module__": __name__,
            "__doc__": "The adapter section of a run (elalora, lora, adalora): derived from\n"
            "    :class:`ElaLoRAConfig`, see the comment above ``_SCHEDULE``.",
        },
    )
)


@dataclass
class OptimConfig:
    lr: float = setting(1e-3, "AdamW's learning rate (peak, after the warm-up)")
    weight_decay: float = setting(1e-4, "AdamW's weight decay")
    batch_size: int = setting(64, "images per step and process")
    epochs: int = setting(100, f"training epochs (at most {MAX_EPOCHS:,})")
    warmup_epochs: float = setting(10.0, "linear LR warm-up, in epochs")
    lr_schedule: str = setting("cosine", "the LR after the warm-up: cosine | linear | constant")
    min_lr: float = setting(0.0, "the LR the schedule ends at")
    grad_clip: float = setting(1.0, "gradient-norm clipping; 0 disables clipping")


@dataclass
class TrainConfig:
    method: str = setting("elalora", "elalora | lora | adalora | full | linear")
    precision: str = setting("auto", "auto (bf16 on a CUDA GPU with bf16, fp32 elsewhere) | fp32 | bf16 | "
                                     "fp16 (CUDA, GradScaler)")
    seed: int = setting(0, "the run's seed: initialisation, data order, new rank directions")
    output_dir: str = setting("runs/{task}/{method}/seed{seed}", "the run folder ({task}, {method}, {seed} filled in)")
    eval_every: int = setting(0, "also evaluate every N epochs; 0: at the end only")
    max_bad_steps: int = setting(20, "consecutive non-finite steps before the run stops")
    checkpoint_every: int | None = setting(None, "epochs between checkpoints; null (the default): as often as keeps "
                                                 "their writing under 2% of the run's time; 0: the last only; the last "
                                                 "epoch always gets one")
    progress: bool = setting(True, "progress bars")
    log_to: str = setting("none", "none | tensorboard | wandb: also log scalars, ranks and figures there")
    compile: bool = setting(False, "torch.compile the model (shapes never change: traced once, rounds and all)")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    # ------------------------------------------------------------------ I/O
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, warn: bool = True) -> "TrainConfig":
        """The config of ``values`` (as :meth:`to_dict` writes it); the deprecated
        ``adapter.cubic_schedule`` is read as ``adapter.schedule`` (quietly with ``warn=False``)."""
        return _build(cls, upgrade_deprecated_keys(values, warn=warn), "")

    def resolved_output_dir(self) -> Path:
        return Path(self.output_dir.format(task=self.data.task, method=self.method, seed=self.seed))

    # ---------------------------------------------------------- validation
    def validate(self) -> "TrainConfig":
        _normalise(self)
        _allowed("method", self.method, METHODS)
        _allowed("precision", self.precision, PRECISIONS)
        _allowed("log_to", self.log_to, TRACKERS)
        _allowed("optim.lr_schedule", self.optim.lr_schedule, LR_SCHEDULES)
        _allowed("data.source", self.data.source, SOURCES)
        _positive_int("optim.batch_size", self.optim.batch_size)
        _positive_int("optim.epochs", self.optim.epochs)
        check_value(self.optim.epochs <= MAX_EPOCHS, "optim.epochs", self.optim.epochs, f"at most {MAX_EPOCHS:,}")
        check_value(self.data.std is None or min(self.data.std) > 0, "data.std", self.data.std,
                    "3 numbers > 0 (each channel is divided by its std)")
        _positive_int("max_bad_steps", self.max_bad_steps)
        check_value(self.optim.lr > 0, "optim.lr", self.optim.lr, "a number > 0")
        check_value(self.optim.weight_decay >= 0, "optim.weight_decay", self.optim.weight_decay, "a number >= 0")
        check_value(self.optim.warmup_epochs >= 0, "optim.warmup_epochs", self.optim.warmup_epochs, "a number >= 0")
        check_value(self.optim.grad_clip >= 0, "optim.grad_clip", self.optim.grad_clip, "a number >= 0 (0 disables)")
        check_value(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0")
        check_value(self.checkpoint_every is None or self.checkpoint_every >= 0, "checkpoint_every",
                    self.checkpoint_every, "an integer >= 0 (0: a checkpoint after the last epoch only), or null "
                    "(as often as keeps their cost under 2% of the run's time)")
        check_value(self.adapter.lr_multiplier > 0, "adapter.lr_multiplier", self.adapter.lr_multiplier, "a number > 0")
        if self.data.image_size is not None:
            _positive_int("data.image_size", self.data.image_size)
        schedule = {name: getattr(self.adapter, name) for name, _ in _SCHEDULE.values()}
        for name, value in schedule.items():
            check_value(value >= 0, f"adapter.{name}", value, "steps (>= 1) or a fraction of the run (< 1)")
        if self.method in ADAPTER_METHODS:
            _check_adapter(self)
        return self

    def core_config(self, total_steps: int, rank: int | None = None, max_rank: int | None = None) -> ElaLoRAConfig:
        """The core's :class:`ElaLoRAConfig` with the schedule resolved for ``total_steps``."""
        a = self.adapter
        shared = {name: getattr(a, name) for name in SHARED_ADAPTER_FIELDS}
        shared["rank"] = rank or a.rank
        shared["max_rank"] = max_rank if max_rank is not None else a.max_rank
        return ElaLoRAConfig(
            **shared,
            warmup_steps=steps_of(a.warmup, total_steps, "adapter.warmup"),
            adjust_interval=max(1, steps_of(a.adjust_interval, total_steps, "adapter.adjust_interval")),
            stabilize_steps=steps_of(a.stabilize, total_steps, "adapter.stabilize"),
            seed=self.seed,
        )


def upgrade_deprecated_keys(values: Mapping[str, Any], *, warn: bool = True) -> dict[str, Any]:
    """A config mapping with deprecated keys replaced by their successors (see
    :func:`~elalora_vit.core.config.upgrade_schedule_key`): also reads old config.yaml
    files and checkpoints."""
    values = dict(values)
    if isinstance(values.get("adapter"), Mapping):
        values["adapter"] = upgrade_schedule_key(values["adapter"], warn=warn, where="adapter.")
    return values
