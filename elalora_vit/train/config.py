"""Configuration of a fine-tuning run: one dataclass per concern, loaded from YAML,
overridable from the command line.  Defaults live here and only here
(``configs/default.yaml`` mirrors them for reading).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from ..core.config import (
    ConfigError,
    ElaLoRAConfig,
    check_adapter_values,
    check_value,
    document_fields,
    setting,
    upgrade_schedule_key,
)
from ..core.registry import get_method, method_names
from ..data import SOURCES
from ..vit import DEFAULT_MODEL
from .tracking import TRACKERS

METHODS = method_names()  # the registry's, in registration order
PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "linear", "constant")
ADAPTER_METHODS = tuple(m for m in METHODS if get_method(m).saves_adapters)


@dataclass
class DataConfig:
    task: str = "cifar"
    source: str = "folder"  # one of data.SOURCES: folder | tfds | digits
    data_dir: str = "data/vtab-1k"
    tfds_dir: str | None = None
    train_split: str = "train800val200"
    eval_split: str = "test"
    image_size: int | None = None  # None: the model's input size
    mean: list[float] | None = None  # None: from the model's pretrained config
    std: list[float] | None = None
    num_workers: int = 2  # evaluation loader workers


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL
    pretrained: bool = True
    checkpoint: str | None = None  # local .npz / .safetensors / .pth weights
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    targets: list[str] | None = None  # None: q, k, v, attn.proj, mlp.fc1, mlp.fc2 of every block
    split: dict[str, list[str]] | None = None  # None with default targets: qkv -> q, k, v


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
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    epochs: int = 100
    warmup_epochs: float = 10.0
    lr_schedule: str = "cosine"
    min_lr: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class TrainConfig:
    method: str = "elalora"
    precision: str = "fp32"
    seed: int = 0
    output_dir: str = "runs/{task}/{method}/seed{seed}"
    eval_every: int = 0  # epochs between evaluations; 0 evaluates at the end only
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    progress: bool = True
    log_to: str = "none"  # none | tensorboard | wandb: also log scalars, ranks and figures there
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
        _allowed("method", self.method, METHODS)
        _allowed("precision", self.precision, PRECISIONS)
        _allowed("log_to", self.log_to, TRACKERS)
        _allowed("optim.lr_schedule", self.optim.lr_schedule, LR_SCHEDULES)
        _allowed("data.source", self.data.source, SOURCES)
        _positive_int("optim.batch_size", self.optim.batch_size)
        _positive_int("optim.epochs", self.optim.epochs)
        _positive_int("max_bad_steps", self.max_bad_steps)
        check_value(self.optim.lr > 0, "optim.lr", self.optim.lr, "a number > 0")
        check_value(self.optim.weight_decay >= 0, "optim.weight_decay", self.optim.weight_decay, "a number >= 0")
        check_value(self.optim.warmup_epochs >= 0, "optim.warmup_epochs", self.optim.warmup_epochs, "a number >= 0")
        check_value(self.optim.grad_clip >= 0, "optim.grad_clip", self.optim.grad_clip, "a number >= 0 (0 disables)")
        check_value(self.eval_every >= 0, "eval_every", self.eval_every, "an integer >= 0")
        check_value(self.adapter.lr_multiplier > 0, "adapter.lr_multiplier", self.adapter.lr_multiplier, "a number > 0")
        if self.data.image_size is not None:
            _positive_int("data.image_size", self.data.image_size)
        schedule = {name: getattr(self.adapter, name) for name, _ in _SCHEDULE.values()}
        for name, value in schedule.items():
            check_value(value >= 0, f"adapter.{name}", value, "steps (>= 1) or a fraction of the run (< 1)")
        if self.method in ADAPTER_METHODS:
            for value in schedule.values():
                _check_whole_steps(value)
            check_adapter_values(self.adapter)
        return self

    def core_config(self, total_steps: int, rank: int | None = None, max_rank: int | None = None) -> ElaLoRAConfig:
        """The core's :class:`ElaLoRAConfig` with the schedule resolved for ``total_steps``."""
        a = self.adapter
        shared = {name: getattr(a, name) for name in SHARED_ADAPTER_FIELDS}
        shared["rank"] = rank or a.rank
        shared["max_rank"] = max_rank if max_rank is not None else a.max_rank
        return ElaLoRAConfig(
            **shared,
            warmup_steps=steps_of(a.warmup, total_steps),
            adjust_interval=max(1, steps_of(a.adjust_interval, total_steps)),
            stabilize_steps=steps_of(a.stabilize, total_steps),
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


def steps_of(value: float, total_steps: int) -> int:
    """``value`` steps when >= 1, else that fraction of ``total_steps`` (rounded)."""
    if value >= 1:
        _check_whole_steps(value)
        return int(value)
    return int(math.floor(value * total_steps + 0.5))


def _check_whole_steps(value: float) -> None:
    # A length >= 1 counts steps, so it cannot hold a fraction of one.
    if value >= 1 and value != int(value):
        raise ConfigError(f"schedule length {value} must be a whole number of steps, or a fraction < 1")


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, updated by the YAML file ``path`` (if any), then by ``overrides``
    (dotted keys such as ``{"optim.lr": 3e-3}``)."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(values, dotted, value)
    return TrainConfig.from_dict(values).validate()


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from err
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(values).__name__}")
    base = values.pop("base", None)
    if base is not None:  # presets build on another file, relative to this one
        merged = read_yaml((path.parent / base).resolve())
        _deep_update(merged, values)
        values = merged
    return values


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-3"`` -> ``("optim.lr", 0.003)``; values are parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=3e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from err
    return key.strip(), value


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = values
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {dotted!r}: {part!r} is not a section")
    node[last] = value


def _deep_update(base: dict, update: Mapping) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def _build(cls, values: Mapping[str, Any], prefix: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {[prefix + k for k in unknown]} in {where}; allowed: {sorted(fields)}")
    kwargs = {}
    for name, value in values.items():
        default = fields[name].default_factory() if fields[name].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default):
            kwargs[name] = _build(type(default), value or {}, f"{prefix}{name}.")
        else:
            kwargs[name] = _typed(prefix + name, value, fields[name].default)
    return cls(**kwargs)


def _typed(key: str, value: Any, default: Any) -> Any:
    """Coerce YAML scalars to the default's type (int <-> float), and refuse clear mismatches."""
    if default is dataclasses.MISSING or default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"invalid value for '{key}': {value!r}; expected true or false")
        return value
    if isinstance(default, (int, float)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"invalid value for '{key}': {value!r}; expected a number")
        if isinstance(default, int) and not isinstance(default, bool) and float(value) != int(value):
            raise ConfigError(f"invalid value for '{key}': {value!r}; expected an integer")
        return type(default)(value)
    if isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"invalid value for '{key}': {value!r}; expected a string")
    return value


def _allowed(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"invalid value for '{key}': {value!r}; allowed: {', '.join(allowed)}")


def _positive_int(key: str, value: Any) -> None:
    check_value(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")


