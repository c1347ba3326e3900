"""The error that stops a training run."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); its last checkpoint is intact."""
