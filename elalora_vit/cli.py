"""The ``elalora-vit`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Callable, Sequence


def _inspect_adapter(args: argparse.Namespace) -> int:
    from .core import read_adapter_metadata

    meta = read_adapter_metadata(args.path)
    pattern = meta["rank_pattern"]
    print(f"method: {meta['method']}  adapters: {len(pattern)}  total rank: {sum(pattern.values())}")
    if meta["modules_to_save"]:
        print(f"also saved: {', '.join(meta['modules_to_save'])}")
    width = max(len(n) for n in pattern)
    for name, rank in pattern.items():
        print(f"  {name:<{width}}  {rank:>3}  {'#' * rank}")
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="elalora-vit",
        description="ElaLoRA: elastic low-rank adaptation of Vision Transformers (prune and expand ranks while training).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inspect = sub.add_parser(
        "inspect-adapter",
        help="show the rank pattern and metadata of a saved adapter file",
        description="Print the per-adapter ranks stored in an adapter .safetensors file.",
    )
    inspect.add_argument("path", help="adapter file written by training or save_adapters()")
    inspect.add_argument("--json", action="store_true", help="also print the full metadata as JSON")
    inspect.set_defaults(func=_inspect_adapter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"elalora-vit {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
