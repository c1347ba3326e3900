"""Ctrl-C (SIGINT) and SIGTERM: a stop that every command obeys the same way, and that a
run's steps note and obey between two steps.

Every ``elalora-vit`` command holds :class:`StopSignals` while it runs, so SIGTERM (a
scheduler pre-empting the job, ``kill``, ``timeout``) stops it as Ctrl-C does, with the
same line saying where it stopped and exit code 143 instead of a silent death. Standard
library only: the command line uses it without importing the training code.

A signal that raised ``KeyboardInterrupt`` at once would land anywhere in a step (between the
optimizer's update and the allocator's, say), so the run could keep nothing of the epoch in
progress: with checkpoints every ~2% of a run, a stop would lose minutes. Noted instead, the
loop finishes the step, writes a checkpoint of exactly that step (the epoch in progress
included) and stops; ``--resume`` continues from that step as if nothing had happened.

- A second signal of the same kind (Ctrl-C twice) stops at once, as Ctrl-C always did, except
  under a launcher (torchrun, accelerate launch): it passes the terminal's Ctrl-C on to its
  processes, which got it already, and kills them itself if they are slow (after 30 s).
- Outside the steps (building, evaluating, writing a checkpoint) a signal stops at once.
- In a multi-process run the processes learn of a signal any of them got through the
  reduction they already make every step (``finite_on_every_process``), so all stop at the
  same step, even when only one was signalled.
"""

from __future__ import annotations

import os
import signal
from types import FrameType

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Hold SIGINT / SIGTERM handlers for the ``with`` block (main thread only; elsewhere the
    process keeps its handlers and a signal stops as before). ``deferring`` says whether a
    first signal is noted (``requested``) or stops at once; the loop sets it while steps run."""

    def __init__(self) -> None:
        self.signum: int | None = None  # the signal noted (None: none)
        self.received: set[int] = set()  # every signal that came, noted or stopping at once
        self.deferring = False
        self._repeat_stops = not launched()
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopSignals":
        for signum in STOP_SIGNALS:
            try:
                self._previous[signum] = signal.signal(signum, self._received)
            except ValueError:  # not the main thread: no handler can be set here
                break
        return self

    def __exit__(self, *exc) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, signal.SIG_DFL if previous is None else previous)
        self._previous.clear()

    def _received(self, signum: int, frame: FrameType | None) -> None:
        repeat = signum in self.received
        self.received.add(signum)
        if self.deferring and (not repeat or not self._repeat_stops):  # under a launcher, a repeat is
            if self.signum is None:  # the launcher passing the first one on
                self.signum = signum  # the loop stops after this step, with a checkpoint of it
            return
        raise SignalStop(self.signum or signum)


def launched() -> bool:
    """Whether a launcher that forwards signals (torchrun's agent) started this process."""
    return "TORCHELASTIC_RUN_ID" in os.environ or int(os.environ.get("WORLD_SIZE", "1")) > 1


class SignalStop(KeyboardInterrupt):
    """A signal that stops at once (outside the steps, or the second of its kind): a
    KeyboardInterrupt, as Ctrl-C's default, that knows which signal it was."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
