"""The protocol of a run: everything besides the method's own settings that decides
what its accuracy means, recorded in ``result.json`` under ``"protocol"``.

A flat mapping of dotted keys, so that two protocols are compared key by key
(:func:`differing_keys`) and a report can say exactly what differs:

- ``data.*``: source and format, train and eval split names, and a fingerprint of
  each split's data (:mod:`elalora_vit.data.fingerprint`);
- ``input.*``: image size, interpolation, mean/std, augmentation (none: the loader has none);
- ``backbone.*``: model name, where the weights came from and the SHA-256 of the
  backbone's tensors as built, before any adapter is added (the fresh head left out);
- ``optim.*`` and ``precision``: epochs, batch size, LR schedule;
- ``versions.*``: torch, timm, elalora-vit.

The learning rate and the adapter settings are the method's hyper-parameters, not
the protocol: they live in config.yaml and may differ per task and method.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Mapping

from torch import nn

from ..core.fingerprint import backbone_fingerprint
from ..data.fingerprint import FORMATS, split_fingerprint
from ..vit import resolve_data_config
from ..vit.facts import head_names_present
from ..config import TrainConfig
from .runtime import resolve_precision

TASK_KEYS = ("data.train_fingerprint", "data.eval_fingerprint")
"""Keys that differ between tasks by nature; compared within a task only."""
UNRECORDED = "unrecorded"


def run_protocol(cfg: TrainConfig, model: nn.Module, task: Any) -> dict[str, Any]:
    """The protocol of a run of ``cfg`` on ``task``, with ``model`` as built (unpatched)."""
    spec = resolve_data_config(model, cfg.data)
    d, o = cfg.data, cfg.optim
    protocol = {
        "data.source": d.source,
        "data.format": FORMATS.get(d.source, d.source),
        "data.train_split": d.train_split,
        "data.eval_split": d.eval_split,
        "data.train_fingerprint": split_fingerprint(task, d.train_split, d.source, d.data_dir, d.tfds_dir),
        "data.eval_fingerprint": split_fingerprint(task, d.eval_split, d.source, d.data_dir, d.tfds_dir),
        "input.image_size": spec.image_size,
        "input.interpolation": spec.interpolation,
        "input.mean": [round(x, 6) for x in spec.mean],
        "input.std": [round(x, 6) for x in spec.std],
        "input.augmentation": "none",
        "backbone.name": cfg.model.name,
        **backbone_weights(cfg, model),
        "optim.epochs": o.epochs,
        "optim.batch_size": o.batch_size,
        "optim.lr_schedule": f"{o.lr_schedule}, {o.warmup_epochs:g} warm-up epochs, min lr {o.min_lr:g}",
        "precision": resolve_precision(cfg.precision),  # as this machine ran it: auto is bf16 or fp32
        **package_versions(),
    }
    return protocol


def backbone_weights(cfg: TrainConfig, model: nn.Module) -> dict[str, Any]:
    """Where the backbone's weights came from, and their hash (None for random weights,
    which differ with every seed and so pin nothing)."""
    if cfg.model.checkpoint:
        source = f"checkpoint {cfg.model.checkpoint}"
    elif cfg.model.pretrained:
        source = "timm pretrained"
    else:
        return {"backbone.weights": "random (not pre-trained)", "backbone.sha256": None}
    return {"backbone.weights": source, "backbone.sha256": backbone_sha256(model)}


def backbone_sha256(model: nn.Module) -> str:
    """The fingerprint of the backbone's frozen weights (:func:`backbone_fingerprint`), without
    the classifier head, whose size follows the task and whose values follow the seed: the
    same hash the run's weight files record."""
    return backbone_fingerprint(model, exclude=head_names_present(model))


def package_versions() -> dict[str, str]:
    """The versions of the packages a result depends on."""
    versions = {}
    for key, package in (("versions.torch", "torch"), ("versions.timm", "timm"), ("versions.elalora_vit", "elalora-vit")):
        try:
            versions[key] = metadata.version(package)
        except metadata.PackageNotFoundError:
            from .. import __version__

            versions[key] = __version__ if package == "elalora-vit" else "not installed"
    return versions


def differing_keys(protocols: list[Mapping[str, Any] | None], ignore: tuple[str, ...] = ()) -> dict[str, list[Any]]:
    """``{key: [distinct values]}`` for every key on which ``protocols`` disagree
    (an unrecorded protocol differs from a recorded one on every key)."""
    recorded = [p for p in protocols if p is not None]
    if recorded and len(recorded) < len(protocols):
        return {"protocol": [UNRECORDED, "recorded"]}
    keys = sorted({k for p in recorded for k in p} - set(ignore))
    differing = {}
    for key in keys:
        values = []
        for p in recorded:
            if p.get(key) not in values:
                values.append(p.get(key))
        if len(values) > 1:
            differing[key] = values
    return differing
