"""The error that stops a training run."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); its last checkpoint is intact."""


class RunInUse(TrainingError):
    """Another live process owns the run's output folder (its lock); nothing was changed."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; says where (``epoch`` was running, ``checkpoint_epoch``
    is the last checkpoint on disk, None if none). A KeyboardInterrupt, so that code
    that survives a failing run (the sweep) still stops."""

    def __init__(self, output_dir, epoch: int | None, checkpoint_epoch: int | None, final_evaluation: bool = False):
        super().__init__(output_dir, epoch, checkpoint_epoch)
        self.output_dir = output_dir
        self.epoch = epoch
        self.checkpoint_epoch = checkpoint_epoch
        self.final_evaluation = final_evaluation

    def where(self) -> str:
        """``stopped during epoch N; last checkpoint epoch M``, as the command line prints it."""
        if self.final_evaluation:
            during = "stopped during the final evaluation"
        elif self.epoch is None:
            during = "stopped before training started"
        else:
            during = f"stopped during epoch {self.epoch}"
        saved = "no checkpoint yet" if self.checkpoint_epoch is None else f"last checkpoint epoch {self.checkpoint_epoch}"
        return f"{during}; {saved}"
