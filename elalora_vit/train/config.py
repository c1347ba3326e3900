"""Configuration of a fine-tuning run: one dataclass per concern, loaded from YAML,
overridable from the command line.  Defaults live here and only here
(``configs/default.yaml`` mirrors them for reading).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
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
from ..config import ConfigInputError, YamlInputError, read_yaml_file, yaml_error_line
from ..config import load_yaml as _bounded_yaml
from ..core.registry import get_method, method_names
from ..data import SOURCES
from ..vit import DEFAULT_MODEL
from .tracking import TRACKERS

METHODS = method_names()  # the registry's, in registration order
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
"""``auto``: bf16 autocast on a CUDA GPU that supports it, fp32 elsewhere (``runtime.resolve_precision``)."""
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
    cache: bool = True  # decode each split once into the image cache, then read it memory-mapped
    cache_dir: str | None = None  # None: $ELALORA_VIT_CACHE, else ~/.cache/elalora-vit/images


@dataclass
class ModelConfig:
    name: str = DEFAULT_MODEL
    pretrained: bool = True
    checkpoint: str | None = None  # local .npz / .safetensors / .pth weights
    kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm.create_model arguments
    targets: list[str] | None = None  # None: q, k, v, attn.proj, mlp.fc1, mlp.fc2 of every block
    split: dict[str, list[str]] | None = None  # None with default targets: qkv -> q, k, v
    exclude: list[str] = field(default_factory=list)  # modules or parts (blocks.*.attn.qkv.k) left out


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
    precision: str = "auto"  # auto: bf16 on a CUDA GPU with bf16, fp32 elsewhere | fp32 | bf16 | fp16
    seed: int = 0
    output_dir: str = "runs/{task}/{method}/seed{seed}"
    eval_every: int = 0  # epochs between evaluations; 0 evaluates at the end only
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    progress: bool = True
    log_to: str = "none"  # none | tensorboard | wandb: also log scalars, ranks and figures there
    compile: bool = False  # torch.compile the model (shapes never change: traced once, rounds and all)
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


def steps_of(value: float, total_steps: int, key: str = "schedule length") -> int:
    """``value`` steps when >= 1, else that fraction of ``total_steps`` (rounded)."""
    if value >= 1:
        _check_whole_steps(value, key)
        return int(value)
    return int(math.floor(value * total_steps + 0.5))


def _check_whole_steps(value: float, key: str) -> None:
    # A length >= 1 counts steps, so it cannot hold a fraction of one.
    if value >= 1 and value != int(value):
        raise ConfigError(f"invalid value for '{key}': {value!r}; expected a whole number of steps (>= 1) "
                          "or a fraction of the run (< 1)")


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults, updated by the YAML file ``path`` (if any), then by ``overrides``
    (dotted keys such as ``{"optim.lr": 3e-3}``)."""
    values: dict[str, Any] = {}
    if path is not None:
        values = read_yaml(path)
    for dotted, value in (overrides or {}).items():
        _set_dotted(values, dotted, value)
    return TrainConfig.from_dict(values).validate()


def load_yaml(text: str) -> Any:
    """``text`` parsed by the bounded reader (``elalora_vit.config``), numbers spelled as Python spells them."""
    return _bounded_yaml(text)


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The mapping in the YAML file ``path``, merged over its ``base:`` file (if any,
    relative to ``path``, recursively)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}{_included_by(_chain)}")
    try:
        values = read_yaml_file(path) or {}
    except ConfigInputError as err:
        raise ConfigError(f"config file {err}{_included_by(_chain)}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not {type(values).__name__}")
    base = values.pop("base", None)
    if base is not None:  # presets build on another file, relative to this one
        merged = read_yaml(_base_path(path, base, _chain), (*_chain, path))
        _deep_update(merged, values)
        values = merged
    return values


def _base_path(path: Path, base: Any, chain: tuple[Path, ...]) -> Path:
    if not isinstance(base, str) or not base.strip():
        raise ConfigError(f"config file {path}: 'base' must name a YAML file (relative to {path.parent}), not {base!r}")
    resolved = (path.parent / base).resolve()
    if resolved in {p.resolve() for p in (*chain, path)}:
        raise ConfigError(f"config file {path}: 'base: {base}' includes itself (through {' -> '.join(map(str, chain))})")
    return resolved


def _included_by(chain: tuple[Path, ...]) -> str:
    if not chain:
        return ""
    return f" (the 'base:' of {chain[-1]}; 'base:' paths are relative to the file that names them)"


def parse_override(text: str) -> tuple[str, Any]:
    """``"optim.lr=3e-3"`` -> ``("optim.lr", 0.003)``; values are parsed as YAML
    (``[0.5, 0.5, 0.5]``, ``{img_size: 32}``, ``null``), numbers in any spelling
    Python's ``float()`` takes."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=3e-3")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except YamlInputError as err:
        raise ConfigError(f"override {text!r}: {err.rule}") from None
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_line(err, f"override {text!r}")) from None
    return key.strip(), value


def _set_dotted(values: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = values
    for i, part in enumerate(parents):
        if node.get(part) is None:  # absent, or left empty in a file (`data:`)
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            section = ".".join(parents[: i + 1])
            raise ConfigError(f"cannot set {dotted!r}: {section!r} holds {node!r}, not a section of keys")
    node[last] = value


def _deep_update(base: dict, update: Mapping) -> None:
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value


def _build(cls, values: Mapping[str, Any], prefix: str):
    if not isinstance(values, Mapping):
        raise ConfigError(f"invalid value for '{prefix.rstrip('.') or 'config'}': {values!r}; expected a section (a mapping of keys to values)")
    hints = field_types(cls)
    unknown = sorted(set(values) - set(hints), key=str)
    if unknown:
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"unknown config key(s) {[prefix + str(k) for k in unknown]} in {where}; allowed: {sorted(hints)}")
    kwargs = {}
    for name, value in values.items():
        if dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], {} if value is None else value, f"{prefix}{name}.")
        else:
            kwargs[name] = _typed(prefix + name, value, hints[name])
    return cls(**kwargs)


# ----------------------------------------------------------------------------- types
LIST_LENGTHS = {"data.mean": 3, "data.std": 3}
"""List keys of a fixed length (one value per RGB channel)."""


def field_types(cls) -> dict[str, Any]:
    """The resolved type annotations of a config dataclass's fields, by field name:
    the one source of what each key accepts."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


class _Mismatch(Exception):
    """A value that does not fit a type; the message, if any, says more than the type."""


def _typed(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the annotated type ``hint`` of the config key ``key`` (its
    full dotted name), or a ``ConfigError`` naming the key, the value and what is allowed.
    Numbers may be spelled any way ``float()`` takes (``3e-3``, ``1e2``, ``.5``, ``1_000``);
    an integer key takes a whole float (``1e2`` -> 100); one string is a one-element list."""
    try:
        return _convert(value, hint, LIST_LENGTHS.get(key))
    except _Mismatch as why:
        reason = f" ({why})" if str(why) else ""
        raise ConfigError(f"invalid value for '{key}': {value!r}; expected {describe_type(hint, key)}{reason}") from None


def _convert(value: Any, hint: Any, length: int | None = None) -> Any:
    args = typing.get_args(hint)
    if type(None) in args:  # Optional[X]
        return None if value is None else _convert(value, _without_none(hint), length)
    if value is None:
        raise _Mismatch("null is not allowed here")
    origin = typing.get_origin(hint)
    if hint is Any:
        return value
    if hint in _SCALARS:
        return _SCALARS[hint](value)
    if origin is list:
        if isinstance(value, str) and args[0] is str:
            value = [value]  # a single target name is a list of one
        if not isinstance(value, (list, tuple)):
            raise _Mismatch()
        if length is not None and len(value) != length:
            raise _Mismatch(f"{len(value)} value(s) given")
        return [_convert(item, args[0]) for item in value]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _Mismatch()
        return {k: _convert(v, args[1]) for k, v in value.items()}
    raise TypeError(f"config type {hint!r} has no converter; add one to _convert")


def _to_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Mismatch()
    return value


def _to_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Mismatch()
    try:
        number = float(value)
    except ValueError:
        raise _Mismatch() from None
    if not math.isfinite(number):
        raise _Mismatch("it is not finite")
    return number


def _to_int(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    number = _to_float(value)
    if number != int(number):
        raise _Mismatch(f"{number:g} is not a whole number")
    return int(number)


def _to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Mismatch("quote it to pass it as text" if isinstance(value, (bool, int, float)) else "")
    return value


_SCALARS = {bool: _to_bool, int: _to_int, float: _to_float, str: _to_str}


def _without_none(hint: Any) -> Any:
    rest = tuple(arg for arg in typing.get_args(hint) if arg is not type(None))
    return rest[0] if len(rest) == 1 else typing.Union[rest]


def describe_type(hint: Any, key: str | None = None) -> str:
    """What a key of type ``hint`` accepts, in words (``"a list of 3 numbers, or null"``)."""
    if type(None) in typing.get_args(hint):
        return f"{describe_type(_without_none(hint), key)}, or null"
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Any: "any value"}
    if hint in words:
        return words[hint]
    args = typing.get_args(hint)
    if typing.get_origin(hint) is list:
        count = LIST_LENGTHS.get(key or "")
        items = {float: "numbers", int: "integers", str: "strings"}.get(args[0], describe_type(args[0]))
        if count:
            return f"a list of {count} {items}, e.g. [{', '.join(['0.5'] * count)}]"
        return f"a string or a list of {items}" if args[0] is str else f"a list of {items}"
    if typing.get_origin(hint) is dict:
        if args[1] is Any:
            return "a mapping of names to values, e.g. {img_size: 32}"
        if typing.get_args(args[1]) == (str,):
            return "a mapping of names to lists of strings, e.g. {qkv: [q, k, v]}"
        return f"a mapping of names to {args[1]}"
    return repr(hint)


def _check_adapter(cfg: TrainConfig) -> None:
    """The core's checks of the adapter values, its errors naming the config keys
    (``adapter.rank``, not the core's ``rank``)."""
    for name in ("warmup", "adjust_interval", "stabilize"):
        _check_whole_steps(getattr(cfg.adapter, name), f"adapter.{name}")
    try:
        check_adapter_values(cfg.adapter)
    except ConfigError as err:
        match = re.match(r"invalid value for '(\w+)'", str(err))
        if match is None:
            raise
        # check_adapter_values names the adapter fields, each adapter.<field> here
        raise ConfigError(str(err).replace(f"'{match[1]}'", f"'adapter.{match[1]}'", 1)) from None


def _normalise(cfg: TrainConfig) -> None:
    """Type-check and convert every key of ``cfg`` in place (a config built in Python,
    not through ``from_dict``, gets the same checks), and name the task canonically."""
    _convert_fields(cfg, "")
    if cfg.data.source in ("folder", "tfds", "digits"):  # a bad source is reported by validate()
        cfg.data.task = canonical_task(cfg.data.task, cfg.data.source)


def _convert_fields(section: Any, prefix: str) -> None:
    for name, hint in field_types(type(section)).items():
        value = getattr(section, name)
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, hint):
                raise ConfigError(f"invalid value for '{prefix}{name}': {value!r}; expected a {hint.__name__}")
            _convert_fields(value, f"{prefix}{name}.")
        else:
            setattr(section, name, _typed(prefix + name, value, hint))


def canonical_task(name: str, source: str = "folder") -> str:
    """The folder name of the task ``name`` (an alias such as ``cifar100`` -> ``cifar``), so
    output folders and results use one name per task whatever the user typed."""
    from ..data import UnknownTaskError, resolve_task  # the data layer (torch, PIL) only when needed

    try:
        return resolve_task(name, source).name
    except UnknownTaskError as err:
        raise UnknownTaskError(f"invalid value for 'data.task': {err}") from None


def _allowed(key: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"invalid value for '{key}': {value!r}; allowed: {', '.join(allowed)}")


MAX_EPOCHS = 100_000
"""More epochs than any run needs: a bound, so that a typo (``1e30``) is refused, not planned."""


def _positive_int(key: str, value: Any) -> None:
    check_value(isinstance(value, int) and value >= 1, key, value, "an integer >= 1")


