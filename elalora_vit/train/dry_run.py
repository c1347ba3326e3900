"""``elalora-vit train --dry-run``: everything a run needs, checked, and its plan, printed;
nothing trained, nothing written.

Checked: the settings, the output folder (the rules of ``run_folder.py``, and that it
can be written), the backbone's weights (the model is built as the run builds it),
the input size, and the data: both splits' list files and every image looked at (not
empty, a header that decodes), without decoding or caching the training images.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

from ..core.schedule import adjustment_steps, ranks_to_move
from ..data import resolve_task
from ..data.load import open_source
from ..vit import check_input_size, create_run_backbone, resolve_data_config
from ..config import TrainConfig
from ..config.checks import check_batch_fits
from .errors import TrainingError
from .methods import setup_method, total_rank, trainable_parameter_count
from .run_files import RunFiles
from .run_folder import FINISHED, NOTHING_TO_RESUME, OVERWRITE, RESUME, run_folder_action
from .runtime import resolve_precision

FOLDER_PLANS = {
    FINISHED: "a finished run with these settings: --resume gives its result back",
    RESUME: "continue from its checkpoint (--resume)",
    NOTHING_TO_RESUME: "no checkpoint to resume: a fresh run",
    OVERWRITE: "delete the earlier run's files, then a fresh run (--overwrite)",
}


def dry_run(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False) -> list[str]:
    """Check that ``train(cfg, resume=, overwrite=)`` can start, and describe the run.

    Raises what the run would raise at its start: ``ConfigError``, ``DataError``,
    ``BackboneError`` or ``TrainingError`` (a folder the flags do not allow).
    """
    cfg.validate()
    files = RunFiles(cfg.resolved_output_dir())
    action = run_folder_action(files, cfg.to_dict(), resume=resume, overwrite=overwrite)
    check_writable(files.root)
    task = resolve_task(cfg.data.task, cfg.data.source)
    check_batch_against_split(cfg, task, int(os.environ.get("WORLD_SIZE", "1")))
    model = create_run_backbone(cfg.model, task.num_classes)
    spec = resolve_data_config(model, cfg.data)
    check_input_size(model, spec.image_size, cfg.model.name)
    sizes = check_run_splits(task, cfg)
    steps_per_epoch = math.ceil(sizes["train"] / cfg.optim.batch_size)
    total_steps = steps_per_epoch * cfg.optim.epochs
    method = setup_method(model, cfg, total_steps)
    lines = [
        f"dry run: {cfg.data.task} / {cfg.method} (seed {cfg.seed}); nothing is trained",
        f"  output: {files.root}: {FOLDER_PLANS.get(action, 'a fresh run')}",
        f"  model: {cfg.model.name} ({weights_source(cfg)}), input {spec.image_size} x {spec.image_size}",
        f"  data: {cfg.data.source} {task.name}: {sizes['train']} {cfg.data.train_split} images for training, "
        f"{sizes['eval']} {cfg.data.eval_split} for evaluation (files checked)",
        f"  steps: {steps_per_epoch} per epoch x {cfg.optim.epochs} epochs = {total_steps} "
        f"(batch {cfg.optim.batch_size} per process; with N processes, 1/N of the steps)",
        f"  trainable parameters: {trainable_parameter_count(model):,}"
        + (f"; total rank {total_rank(model)}" if total_rank(model) is not None else ""),
        *schedule_lines(method.allocator, total_steps),
        f"  memory: about {format_bytes(memory_estimate(model, cfg, spec.image_size))} per process "
        "(weights, gradients, AdamW and allocator state, activations; a rough estimate)",
    ]
    return lines


def check_writable(root: Path) -> None:
    """Prove the output folder can hold the run: create it (and its missing parents), write a
    file in it, then remove what this created.  So the dry run fails exactly when the run
    would (``/proc/...``, a read-only mount, a file in the way), whatever ``os.access`` says."""
    created = [p for p in (root, *root.parents) if not p.exists()]
    probe = root / f".elalora-dry-run.{os.getpid()}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as err:
        raise TrainingError(f"cannot write the output folder {root} ({err.strerror or err}); "
                            "choose another --output") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        for folder in created:  # innermost first: only the folders this call made, if still empty
            try:
                folder.rmdir()
            except OSError:
                break


def check_batch_against_split(cfg: TrainConfig, task, processes: int) -> None:
    """``optim.batch_size`` against the training split's size, from its list alone (no
    image is read), so a batch it cannot fill is refused before any model or data work."""
    source = open_source(task, cfg.data.train_split, cfg.data.source, cfg.data.data_dir, cfg.data.tfds_dir)
    check_batch_fits(cfg.optim.batch_size, len(source), processes, cfg.data.train_split)


def check_run_splits(task, cfg: TrainConfig) -> dict[str, int]:
    """Open both splits as the run would, look at every folder image; their sizes."""
    sizes = {}
    for role, split in (("eval", cfg.data.eval_split), ("train", cfg.data.train_split)):
        source = open_source(task, split, cfg.data.source, cfg.data.data_dir, cfg.data.tfds_dir)
        if hasattr(source, "check_files"):
            source.check_files()
        sizes[role] = len(source)
    return sizes


def weights_source(cfg: TrainConfig) -> str:
    if cfg.model.checkpoint:
        return f"weights from {cfg.model.checkpoint}"
    return "pretrained weights" if cfg.model.pretrained else "random weights (--no-pretrained)"


def schedule_lines(allocator, total_steps: int) -> list[str]:
    """The allocator's phases and rounds, or that ranks are fixed."""
    if allocator is None:
        return ["  ranks: fixed (no allocation rounds)"]
    c = allocator.config
    rounds = [t for t in adjustment_steps(total_steps, c) if ranks_to_move(t, total_steps, c) > 0]  # b_t = 0: no round
    return [
        f"  schedule: warm-up steps 1-{c.warmup_steps}, adjustment to step {total_steps - c.stabilize_steps} "
        f"(a round every {c.adjust_interval} steps), then {c.stabilize_steps} steps with ranks frozen",
        f"  rounds: {len(rounds)}" + (f" (steps {rounds[0]} ... {rounds[-1]})" if rounds else ""),
    ]


def format_bytes(count: float) -> str:
    return f"{count / 2**30:.1f} GiB" if count >= 2**30 else f"{count / 2**20:.0f} MiB"


def memory_estimate(model, cfg: TrainConfig, image_size: int) -> float:
    """Weights (fp32), gradients and AdamW moments of the trainable parameters, two
    importance EMAs per adapter parameter, and a transformer's activations for one
    batch (Korthikanti et al. 2022: s b h (34 + 5 a s / h) bytes per layer at 16 bits)."""
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    state_bytes = 4 * params + 12 * trainable + 8 * trainable
    return state_bytes + activation_bytes(model, cfg, image_size)


def activation_bytes(model, cfg: TrainConfig, image_size: int) -> float:
    blocks, embed = getattr(model, "blocks", None), getattr(model, "patch_embed", None)
    if blocks is None or embed is None or not hasattr(model, "embed_dim"):
        return 0.0  # not a timm ViT: weights and optimizer state only
    patch = embed.patch_size[0] if isinstance(embed.patch_size, (tuple, list)) else embed.patch_size
    tokens = (image_size // patch) ** 2 + 1
    heads = getattr(blocks[0].attn, "num_heads", 1)
    per_layer = tokens * cfg.optim.batch_size * model.embed_dim * (34 + 5 * heads * tokens / model.embed_dim)
    scale = 2.0 if resolve_precision(cfg.precision) == "fp32" else 1.0  # the formula counts 16-bit activations
    return len(blocks) * per_layer * scale
