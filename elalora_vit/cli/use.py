"""The commands that use a trained run or its weight file: ``inspect-adapter``,
``evaluate``, ``predict`` and ``export``."""

from __future__ import annotations

import argparse
import json
import math
import sys


def _allocator_line(steps: int | None, rounds: int | None) -> str:
    if steps is None:
        return "allocator: not recorded (file written before allocator steps were saved)"
    line = f"allocator: {steps} steps, {rounds} rounds"
    if steps == 0:
        line += " (the ranks never moved: was RankAllocator.step called after each optimizer step?)"
    return line


def _inspect_adapter(args: argparse.Namespace) -> int:
    from ..core.adapter_io import excluded_part_names
    from ..core.registry import get_method, method_names
    from ..use.rebuild import read_weights_metadata

    meta = read_weights_metadata(args.path)
    pattern = meta.get("rank_pattern")
    if pattern is not None:
        print(f"method: {meta['method']}  adapters: {len(pattern)}  total rank: {sum(pattern.values())}")
    else:
        count = sum(math.prod(shape) for shape in meta["tensors"].values())
        print(f"method: {meta['method']}  trained weights: {len(meta['tensors'])} tensors, {count} parameters")
    if meta.get("timm_name"):
        print(f"model: {meta['timm_name']} {meta['model_kwargs']}  classes: {meta['num_classes']}  task: {meta['task']}")
    if meta.get("backbone_fingerprint"):
        print(f"backbone fingerprint: {meta['backbone_fingerprint']}")
    if meta["modules_to_save"]:
        print(f"also saved: {', '.join(meta['modules_to_save'])}")
    layers = meta.get("layers") if isinstance(meta.get("layers"), dict) else {}  # adapter files only
    excluded = excluded_part_names(layers)
    if excluded:
        print(f"excluded parts (not adapted, rank 0): {', '.join(excluded)}")
    if meta["method"] in method_names() and get_method(meta["method"]).allocator is not None:  # ranks move
        print(_allocator_line(meta.get("allocator_steps"), meta.get("allocator_rounds")))
    width = max((len(n) for n in pattern or ()), default=0)
    for name, rank in (pattern or {}).items():
        print(f"  {name:<{width}}  {rank:>3}  {'#' * rank}")
    if args.json:
        print(json.dumps(meta, indent=2))
    return 0


def _add_inspect(sub) -> None:
    inspect = sub.add_parser(
        "inspect-adapter",
        help="show the method, rank pattern and metadata of a run's weight file",
        description=("Print the method, the model it rebuilds on, the backbone fingerprint and the per-adapter "
                     "ranks of an adapter .safetensors file, or the tensors of a full/linear run's "
                     "trained.safetensors."),
    )
    inspect.add_argument("path", help="adapter.safetensors or trained.safetensors written by training, or save_adapters()")
    inspect.add_argument("--json", action="store_true", help="also print the full metadata as JSON")
    inspect.set_defaults(func=_inspect_adapter)


def _evaluate(args: argparse.Namespace) -> int:
    from ..use import evaluate_run

    result = evaluate_run(args.run_dir, split=args.split, source=args.data_source, data_dir=args.data_dir,
                          tfds_dir=args.tfds_dir, num_workers=args.num_workers)
    print(json.dumps(result))
    return 0


def _predict(args: argparse.Namespace) -> int:
    from ..use import predict_images

    predictions = predict_images(args.run_dir, args.images, top_k=args.top_k)
    for p in predictions:
        if args.json:
            print(json.dumps(p.to_dict()))
        elif p.error:
            print(f"error: {p.error}", file=sys.stderr)
        else:
            best = ", ".join(f"{c['name']} {c['probability']:.3f}" for c in p.top_k)
            print(f"{p.image}: {best}")
    return 1 if any(p.error for p in predictions) else 0


def _export(args: argparse.Namespace) -> int:
    from ..export import export_run

    out = export_run(args.run_dir, args.out, args.format, overwrite=args.overwrite)
    print(f"wrote {args.format} export to {out}")
    return 0


def _add_use(sub) -> None:
    from ..export import FORMATS

    e = sub.add_parser(
        "evaluate", help="top-1 of a finished run on a split (writes eval-<split>.json)",
        description=("Rebuild the run's model from RUN_DIR/config.yaml and its saved weights, evaluate top-1 on "
                     "the split, print one JSON line and write RUN_DIR/eval-<split>.json (result.json is never "
                     "touched). Data flags default to the run's own."),
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output folder")
    e.add_argument("--split", help="train800, val200, train800val200 or test (default: the run's eval split)")
    e.add_argument("--data-source", choices=("folder", "tfds", "digits"), help="where images come from")
    e.add_argument("--data-dir", metavar="DIR", help="root of the VTAB-1k folder layout")
    e.add_argument("--tfds-dir", metavar="DIR", help="tensorflow-datasets data_dir for --data-source tfds")
    e.add_argument("--num-workers", type=int, help="data loader workers")
    e.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "predict", help="top-k classes of a finished run for image files",
        description=("Top-k classes with probabilities (and class names where the task has them) for each image, "
                     "preprocessed as the run was trained. An image that cannot be read is reported, naming the "
                     "file, and the others are still predicted (exit code 1 if any failed)."),
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output folder")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    p.add_argument("--top-k", type=int, default=5, metavar="K", help="classes per image (default 5)")
    p.add_argument("--json", action="store_true", help="one JSON object per image")
    p.set_defaults(func=_predict)

    x = sub.add_parser(
        "export", help="a finished run as a plain timm model folder or a PEFT LoRA adapter",
        description=("--format timm: the merged backbone and head in timm's own layout (config.json + "
                     "model.safetensors), loaded with timm.create_model('local-dir:DIR', pretrained=True). "
                     "--format peft: adapter_config.json + adapter_model.safetensors, loaded onto the unpatched "
                     "backbone with peft.PeftModel.from_pretrained(base, DIR) (adapter methods only)."),
    )
    x.add_argument("run_dir", metavar="RUN_DIR", help="a finished run's output folder")
    x.add_argument("--format", required=True, choices=FORMATS, help="timm or peft")
    x.add_argument("--out", required=True, metavar="DIR", help="output folder (must be empty or absent)")
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    x.set_defaults(func=_export)
