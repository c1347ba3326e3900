"""Rebuild a finished run's model from its folder: ``config.yaml`` plus the saved weights.

The backbone is built the way training built it (same timm name, kwargs,
checkpoint or pre-trained weights, and the same seed, which is what makes a
random ``--no-pretrained`` backbone come out identical), then the run's weights
go on top: ``adapter.safetensors`` for elalora / lora / adalora,
``trained.safetensors`` for full / linear. The backbone fingerprint recorded
in those files is checked, so a backbone that differs from the trained one is
an error naming both fingerprints, never a silently wrong model.
"""

from __future__ import annotations

from ..config import ConfigInputError, read_yaml_file

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..core import check_backbone_fingerprint, load_adapters, merge_adapters, read_adapter_metadata
from ..data import Preprocess, resolve_task
from ..train import RunFiles, TrainConfig
from ..config import ADAPTER_METHODS
from ..train.provenance import TRAINED_FORMAT
from ..vit import create_backbone, head_module_names, resolve_data_config


class RunError(ValueError):
    """A run folder that cannot be used: missing, unfinished, or not a run folder."""


@dataclass
class RunModel:
    """A finished run, rebuilt: the model (eval mode) and how to feed it.

    ``model`` maps float images (N, 3, image_size, image_size), normalised with
    ``mean`` / ``std`` after a bicubic resize, to logits (N, num_classes).
    """

    model: nn.Module
    config: TrainConfig
    run_dir: Path
    weights_file: Path
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    head_names: list[str]
    class_names: list[str] | None

    @property
    def method(self) -> str:
        return self.config.method

    @property
    def preprocess(self) -> Preprocess:
        """The run's preprocessing: PIL image or uint8 (H, W, 3) array -> float (3, S, S)."""
        return Preprocess(self.image_size, self.mean, self.std, self.interpolation)

    def class_name(self, index: int) -> str:
        """The name of class ``index``, or the index itself when the task has no names."""
        names = self.class_names
        return names[index] if names and index < len(names) else str(index)


def load_run(run_dir: str | os.PathLike, *, check_backbone: bool = True, merge: bool = False) -> RunModel:
    """Rebuild the model of the finished run in ``run_dir``, in eval mode, on the CPU.

    Like training, it seeds the global random generators with the run's seed
    (``accelerate.utils.set_seed``) before building the backbone. With ``merge``, the
    adapters are folded into the base weights (``merge_adapters``): inference then costs
    what the base model's costs, and the logits equal the unmerged ones to float rounding;
    ``evaluate`` and ``predict`` load runs so. A merged model is for inference only (its
    adapters get no gradient; export it with ``export_run``, which loads the run itself).

    Raises:
        RunError: no such folder, no ``config.yaml``, or no finished model in it.
        BackboneMismatchError: the rebuilt backbone is not the one the run trained
            (e.g. other pre-trained weights in the cache, or another checkpoint file).
    """
    from accelerate.utils import set_seed

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    weights = finished_weights_file(run_dir, cfg)
    task = resolve_task(cfg.data.task, cfg.data.source)
    set_seed(cfg.seed)  # as train does before create_backbone: the same random init
    every_weight_saved = cfg.method == "full"  # no need for the pre-trained weights
    model = create_backbone(
        cfg.model.name,
        task.num_classes,
        pretrained=cfg.model.pretrained and not every_weight_saved,
        checkpoint=None if every_weight_saved else cfg.model.checkpoint,
        **cfg.model.kwargs,
    )
    heads = head_module_names(model)
    if cfg.method in ADAPTER_METHODS:
        load_adapters(model, weights, check_backbone=check_backbone)
        if merge:
            merge_adapters(model)
    else:
        load_trained_weights(model, weights, heads, check_backbone=check_backbone)
    model.eval()
    spec = resolve_data_config(model, cfg.data)  # as training resolved it
    return RunModel(model, cfg, run_dir, weights, task.num_classes, spec.image_size, spec.mean, spec.std,
                    spec.interpolation, heads, task_class_names(cfg, task))


def read_run_config(run_dir: Path) -> TrainConfig:
    """The run's ``TrainConfig``, from ``run_dir/config.yaml``."""
    if not run_dir.is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    path = RunFiles(run_dir).config
    if not path.is_file():
        raise RunError(f"{run_dir} is not a run folder: it has no {path.name} (written when training starts)")
    try:
        return TrainConfig.from_dict(read_yaml_file(path) or {})
    except ConfigInputError as err:
        raise RunError(f"cannot read {err}") from None
    except (ValueError, TypeError) as err:
        raise RunError(f"cannot read {path}: {err}") from err


def finished_weights_file(run_dir: Path, cfg: TrainConfig) -> Path:
    """The run's trained weights (adapter or trained file); ``RunError`` if training did not finish."""
    files = RunFiles(run_dir)
    path = files.adapter if cfg.method in ADAPTER_METHODS else files.weights
    if path.is_file():
        return path
    state = (
        f"training did not finish (no {files.result.name}); continue it with "
        f"'elalora-vit train --config {files.config} --resume'"
        if not files.result.is_file()
        else "the file was removed after training"
    )
    raise RunError(f"{run_dir} has no finished {cfg.method} model: {path.name} is missing ({state})")


def load_trained_weights(
    model: nn.Module, path: Path, head_names: list[str], *, check_backbone: bool = True
) -> nn.Module:
    """Load a ``full`` / ``linear`` run's ``trained.safetensors`` into ``model``, checked."""
    meta, tensors = read_trained_file(path)
    own = model.state_dict()
    unexpected = [k for k in tensors if k not in own]
    mismatched = [k for k in tensors if k in own and own[k].shape != tensors[k].shape]
    if unexpected or mismatched:
        raise RunError(
            f"{path} does not fit the rebuilt model: unknown weights {unexpected[:3]}, "
            f"other shapes {mismatched[:3]}; was config.yaml edited after training?"
        )
    if check_backbone:
        check_backbone_fingerprint(model, meta.get("backbone_fingerprint"), path, head_names)
    model.load_state_dict(tensors, strict=False)
    return model


def read_trained_file(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """(metadata, tensors) of a ``trained.safetensors`` file of a full / linear run."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise RunError(f"{path} is not a readable safetensors file ({err})") from err
    if meta.get("format", TRAINED_FORMAT) != TRAINED_FORMAT:
        raise RunError(f"{path} is not a trained-weights file of elalora-vit (format {meta.get('format')!r})")
    return meta, tensors


def read_weights_metadata(path: str | os.PathLike) -> dict:
    """Decoded header of any run weight file: an adapter file or a ``trained.safetensors``."""
    try:
        return read_adapter_metadata(path)
    except ValueError as adapter_error:
        try:
            meta, tensors = read_trained_file(path)
        except RunError:
            raise adapter_error from None
    meta["modules_to_save"] = json.loads(meta.get("modules_to_save", "[]"))
    meta["tensors"] = {k: list(v.shape) for k, v in tensors.items()}
    meta.setdefault("method", "full or linear (written before methods were recorded)")
    return meta


def task_class_names(cfg: TrainConfig, task) -> list[str] | None:
    """Class names: ``classes.txt`` beside the task's folder data (one name per line; prepare-vtab
    writes it), or TFDS's label names for the tfds source; ``None`` if the task has none."""
    if cfg.data.source == "tfds":
        from ..data.prepare import tfds_class_names

        return tfds_class_names(task, cfg.data.tfds_dir)
    if cfg.data.source != "folder":
        return None
    path = Path(cfg.data.data_dir) / task.name / "classes.txt"
    if not path.is_file():
        return None
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return names if len(names) == task.num_classes else None
