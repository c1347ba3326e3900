"""What every command shares: the parser class, which process prints, and how a
command's end is reported (the Ctrl-C line and the one-line user errors)."""

from __future__ import annotations

import argparse
from typing import Sequence


class _ExactFlags(argparse.ArgumentParser):
    """A parser that takes flags only as spelled: argparse's default accepts any
    unambiguous prefix (``--stag`` for ``--stage``), so a misspelt command in a
    script or a doc would run, and a later flag sharing the prefix would break it."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def _is_main_process() -> bool:
    from ..sweep.runner import is_main_process

    return is_main_process()


def stopped_line(command: str, argv: Sequence[str], stop: KeyboardInterrupt) -> str:
    """The one line Ctrl-C prints: where the run stopped and the command that continues it."""
    import shlex

    from ..train.errors import RunInterrupted

    where = stop.where() if isinstance(stop, RunInterrupted) else "stopped (Ctrl-C)"
    if command == "train":
        return f"{where}; continue with `{resume_command(argv)}`"
    if command == "vtab-sweep":
        return (f"{where}; continue with `{shlex.join(['elalora-vit', *argv])}` "
                "(finished runs are skipped, the interrupted one resumes)")
    return f"elalora-vit {command}: {where}"


def resume_command(argv: Sequence[str]) -> str:
    """The command line the user typed, with ``--resume`` (and without ``--overwrite``)."""
    import shlex

    args = [a for a in argv if a != "--overwrite"]
    return shlex.join(["elalora-vit", *args, *([] if "--resume" in args else ["--resume"])])


def _is_user_error(err: Exception) -> bool:
    """Errors that explain themselves (bad input, missing files, a run that had to stop):
    printed as one line instead of a traceback."""
    from ..train.loop import TrainingError

    return isinstance(err, (ValueError, OSError, TrainingError))
