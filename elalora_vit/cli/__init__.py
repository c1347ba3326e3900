"""The ``elalora-vit`` command line.

    elalora-vit train --task cifar100 --rank 8
    elalora-vit prepare-vtab --tasks natural --data-dir data/vtab-1k
    elalora-vit list-tasks
    elalora-vit inspect-adapter runs/cifar/elalora/seed0/adapter.safetensors
    elalora-vit evaluate runs/cifar/elalora/seed0 --split val200
    elalora-vit predict runs/cifar/elalora/seed0 photo.jpg --top-k 3
    elalora-vit export runs/cifar/elalora/seed0 --format timm --out exported/cifar-timm

Several GPUs: ``accelerate launch --multi_gpu --num_processes N -m elalora_vit.cli train ...``;
several CPU processes: ``torchrun --standalone --nproc_per_node N -m elalora_vit.cli train ...``.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Callable, Sequence

from ..stopping import StopSignals
from .common import _ExactFlags, _is_main_process, _is_user_error, resume_command, stopped_line
from .data import _add_check_data, _add_list_tasks, _add_prepare
from .sweep import SWEEP_EXAMPLES, _add_sweep, _add_tune
from .train import EXAMPLES, RESULT_LINE_KEYS, _add_train, _train_overrides  # noqa: F401  (tests import it from here)
from .use import _add_inspect, _add_use

__all__ = ["EXAMPLES", "RESULT_LINE_KEYS", "SWEEP_EXAMPLES", "build_parser", "main", "resume_command", "stopped_line"]


def build_parser() -> argparse.ArgumentParser:
    parser = _ExactFlags(
        prog="elalora-vit",
        description="ElaLoRA: elastic low-rank adaptation of Vision Transformers (prune and expand ranks while training).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_ExactFlags)
    _add_train(sub)
    _add_prepare(sub)
    _add_check_data(sub)
    _add_sweep(sub)
    _add_tune(sub)
    _add_use(sub)
    _add_list_tasks(sub)
    _add_inspect(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    # Under torchrun / accelerate, only the main process reports; the others say only errors.
    level = logging.DEBUG if args.verbose else logging.INFO if _is_main_process() else logging.ERROR
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    # SIGTERM stops a command as Ctrl-C does: the same line, exit code 143; handlers put back after
    signals = StopSignals()
    try:
        with signals:
            return func(args)
    except KeyboardInterrupt as stop:
        if _is_main_process():
            print(stopped_line(args.command, args.argv, stop), file=sys.stderr)
        terminated = signal.SIGTERM in signals.received or getattr(stop, "signum", None) == signal.SIGTERM
        return 128 + signal.SIGTERM if terminated else 130
    except Exception as err:
        if args.verbose or not _is_user_error(err):
            raise
        print(f"elalora-vit {args.command}: error: {err}", file=sys.stderr)
        return 2

