"""Optional experiment tracking of a run: ``log_to: none | tensorboard | wandb``
(``--log-to``).  The per-step loss and learning rate, every epoch's metrics line,
the ranks after each allocation round and, at the end, the run's figures.

The tracker's library is imported only when it is chosen, so neither TensorBoard
nor Weights & Biases is a dependency; the files the run writes (metrics.jsonl,
rank_history.json, the figures) stay the record either way.  Only the main
process logs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from .errors import TrainingError

from ..config.schema import TRACKERS  # noqa: E402  (one list of trackers, in the schema)
FIGURES = {"heatmap": "rank_heatmap", "rank_evolution": "rank_evolution", "importance_scores": "importance_scores"}
"""RunFiles attribute -> tag of the figures logged at the end (those the run drew)."""


class Tracker:
    """Logs nothing (``log_to: none``); the base of the real trackers."""

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        """Log ``values`` (tag -> number) at optimizer step ``step``."""

    def log_image(self, tag: str, path: Path, step: int) -> None:
        """Log the PNG at ``path`` under ``tag``."""

    def close(self) -> None:
        """Flush and release the tracker's files."""

    # What the loop reports; each turns the run's records into scalars.
    def log_step(self, step: int, loss: float, lr: float, skipped: bool) -> None:
        if type(self) is not Tracker and not skipped:  # the loop passes the loss read in bulk (a float)
            self.log_scalars({"train/loss": float(loss), "train/lr": lr}, step)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")}
        self.log_scalars({f"epoch/{k}": float(v) for k, v in numbers.items()}, int(record["step"]))

    def log_round(self, step: int, rank_pattern: Mapping[str, int]) -> None:
        values = {f"rank/{name}": float(rank) for name, rank in rank_pattern.items()}
        self.log_scalars({"rank/total": float(sum(rank_pattern.values())), **values}, step)

    def log_figures(self, files: Any, step: int) -> None:
        for attribute, name in FIGURES.items():
            path = getattr(files, attribute)
            if path.is_file():
                self.log_image(f"figures/{name}", path, step)


class TensorBoardTracker(Tracker):
    """Event files in ``<run folder>/tensorboard`` (``tensorboard --logdir runs``)."""

    def __init__(self, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise TrainingError(f"log_to: tensorboard needs the tensorboard package ({err}); "
                                "pip install tensorboard, or choose --log-to none") from err
        self.writer = SummaryWriter(log_dir=str(folder))

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        import numpy as np
        from PIL import Image

        self.writer.add_image(tag, np.asarray(Image.open(path).convert("RGB")), step, dataformats="HWC")

    def close(self) -> None:
        self.writer.close()


class WandbTracker(Tracker):
    """A Weights & Biases run in ``<run folder>/wandb``, project ``elalora-vit``, named
    like the run's folder; ``WANDB_MODE=offline`` keeps it local."""

    def __init__(self, folder: Path, name: str, config: Mapping[str, Any]):
        try:
            import wandb
        except ImportError as err:
            raise TrainingError(f"log_to: wandb needs the wandb package ({err}); "
                                "pip install wandb, or choose --log-to none") from err
        folder.mkdir(parents=True, exist_ok=True)
        self.wandb = wandb
        self.run = wandb.init(project="elalora-vit", name=name, dir=str(folder), config=dict(config))

    def log_scalars(self, values: Mapping[str, float], step: int) -> None:
        self.run.log(dict(values), step=step)

    def log_image(self, tag: str, path: Path, step: int) -> None:
        self.run.log({tag: self.wandb.Image(str(path))}, step=step)

    def close(self) -> None:
        self.run.finish()


def make_tracker(log_to: str, root: Path, name: str, config: Mapping[str, Any], main_process: bool = True) -> Tracker:
    """The tracker ``log_to`` names, writing under the run folder ``root``; a silent
    :class:`Tracker` for ``none`` and on every process but the main one."""
    if log_to not in TRACKERS:
        raise TrainingError(f"unknown log_to {log_to!r}; choose one of {', '.join(TRACKERS)}")
    if log_to == "none" or not main_process:
        return Tracker()
    if log_to == "tensorboard":
        return TensorBoardTracker(Path(root) / "tensorboard")
    return WandbTracker(Path(root), name, config)
