"""The error that stops a training run."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. too many non-finite steps); its last checkpoint is intact."""


class RunInUse(TrainingError):
    """Another live process owns the run's output folder (its lock); nothing was changed."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) stopped the run; says where (``epoch`` was running,
    ``checkpoint_epoch`` is the last checkpoint on disk, None if none, and
    ``checkpoint_step`` the step it holds when the stop came during the steps and was
    checkpointed then). A KeyboardInterrupt, so that code that survives a failing run (the
    sweep) still stops. ``signum``: the signal, where known."""

    def __init__(self, output_dir, epoch: int | None, checkpoint_epoch: int | None, final_evaluation: bool = False,
                 *, signum: int | None = None, checkpoint_step: int | None = None, total_steps: int | None = None):
        super().__init__(output_dir, epoch, checkpoint_epoch)
        self.output_dir = output_dir
        self.epoch = epoch
        self.checkpoint_epoch = checkpoint_epoch
        self.final_evaluation = final_evaluation
        self.signum = signum
        self.checkpoint_step = checkpoint_step
        self.total_steps = total_steps

    def where(self) -> str:
        """``stopped during epoch N; last checkpoint epoch M`` (or, stopped during the steps,
        ``stopped during epoch N at step S of T; saved at step S``), as the command line prints it."""
        if self.checkpoint_step is not None:
            of = f" of {self.total_steps}" if self.total_steps else ""
            return f"stopped during epoch {self.epoch} at step {self.checkpoint_step}{of}; saved at step {self.checkpoint_step}"
        if self.final_evaluation:
            during = "stopped during the final evaluation"
        elif self.epoch is None:
            during = "stopped before training started"
        else:
            during = f"stopped during epoch {self.epoch}"
        saved = "no checkpoint yet" if self.checkpoint_epoch is None else f"last checkpoint epoch {self.checkpoint_epoch}"
        return f"{during}; {saved}"
