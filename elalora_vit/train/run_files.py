"""The files of one training run: the only place that names them.

The loop writes them, and the sweep reads them (is a run done, resumable, what did
it score) through :class:`RunFiles`, so a file is renamed here or nowhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..storage.lock import LOCK_NAME


@dataclass
class RunFiles:
    """Paths of the files a run keeps in its output folder ``root``."""

    root: Path
    config: Path = field(init=False)  # the settings the run was started with (YAML)
    metrics: Path = field(init=False)  # one JSON line per finished epoch
    result: Path = field(init=False)  # top-1 and the run's summary: its presence marks a finished run
    history: Path = field(init=False)  # every rank-allocation round (adapter methods)
    heatmap: Path = field(init=False)  # final rank per adapter, drawn (ViT adapter methods)
    rank_evolution: Path = field(init=False)  # every adapter's rank over the steps (ElaLoRA, AdaLoRA)
    importance_scores: Path = field(init=False)  # the scores each round decided on (ElaLoRA, AdaLoRA)
    adapter: Path = field(init=False)  # the trained adapters and head (adapter methods)
    weights: Path = field(init=False)  # the trained parameters (full fine-tuning, linear probing)
    checkpoint: Path = field(init=False)  # per checkpoint_every, and on Ctrl-C / SIGTERM; --resume reads it
    lock: Path = field(init=False)  # the folder lock's file (storage/lock.py): who holds the run

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.result = self.root / "result.json"
        self.history = self.root / "rank_history.json"
        self.heatmap = self.root / "rank_heatmap.png"
        self.rank_evolution = self.root / "rank_evolution.png"
        self.importance_scores = self.root / "importance_scores.png"
        self.adapter = self.root / "adapter.safetensors"
        self.weights = self.root / "trained.safetensors"
        self.checkpoint = self.root / "checkpoint.pt"
        self.lock = self.root / LOCK_NAME
