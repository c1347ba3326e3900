"""Fine-tuning a timm ViT on a VTAB-1k task with any of the five methods."""

from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..config import METHODS, AdapterConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig, load_config
from .errors import RunInterrupted, RunInUse, TrainingError
from .loop import train
from .run_files import RunFiles
from .runtime import evaluate
from .state import RunState

__all__ = [
    "METHODS",
    "AdapterConfig",
    "CheckpointError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunFiles",
    "RunInUse",
    "RunInterrupted",
    "RunState",
    "TrainConfig",
    "TrainingError",
    "evaluate",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
]
