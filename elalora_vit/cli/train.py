"""``elalora-vit train``: its flags, the config overrides they give, and the result it prints."""

from __future__ import annotations

import argparse
import json
from typing import Any

from .common import _is_main_process

EXAMPLES = """examples:
  elalora-vit train --task cifar100 --rank 8
  elalora-vit train --config configs/vtab/dtd.yaml --method lora --seed 1
  elalora-vit train --config configs/quickstart-digits.yaml          # offline demo
  elalora-vit train --task dtd --checkpoint ViT-B_16.npz --set adapter.b=2 --set optim.lr=3e-3
  accelerate launch --multi_gpu --num_processes 4 -m elalora_vit.cli train --task dtd   # 4 GPUs
"""


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags and --set give.  Numeric flags stay text here: the config
    converts them as it converts --set values (any float() spelling, ``--epochs 1e2``)
    and names the key when one does not fit."""
    from ..config import parse_override

    flags = {
        "data.task": args.task,
        "method": args.method,
        "adapter.rank": args.rank,
        "model.name": args.model,
        "model.checkpoint": args.checkpoint,
        "data.source": args.data_source,
        "data.data_dir": args.data_dir,
        "data.tfds_dir": args.tfds_dir,
        "data.image_size": args.image_size,
        "output_dir": args.output,
        "optim.epochs": args.epochs,
        "optim.batch_size": args.batch_size,
        "optim.lr": args.lr,
        "precision": args.precision,
        "seed": args.seed,
        "eval_every": args.eval_every,
        "checkpoint_every": args.checkpoint_every,
    }
    if args.compile:
        flags["compile"] = True
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.checkpoint_every is not None and args.checkpoint_every.strip().lower() == "auto":
        overrides["checkpoint_every"] = None  # the config's null: the cost-bounded cadence
    if args.no_pretrained:
        overrides["model.pretrained"] = False
    if args.no_progress:
        overrides["progress"] = False
    if args.log_to:
        overrides["log_to"] = args.log_to
    for text in args.set or []:
        key, value = parse_override(text)
        overrides[key] = value
    return overrides


def _train(args: argparse.Namespace) -> int:
    from ..train import load_config, train
    from ..train.summary import summary_lines

    cfg = load_config(args.config, _train_overrides(args))
    if args.dry_run:
        from ..train.dry_run import dry_run

        print("\n".join(dry_run(cfg, resume=args.resume, overwrite=args.overwrite)))
        return 0
    result = train(cfg, resume=args.resume, overwrite=args.overwrite)  # Ctrl-C: see stopped_line
    if _is_main_process():  # under torchrun / accelerate every process gets here; one prints
        print("\n".join(summary_lines(result)))
        print(json.dumps({k: result[k] for k in RESULT_LINE_KEYS}))
    return 0


RESULT_LINE_KEYS = ("task", "method", "seed", "eval_split", "accuracy", "trainable_params", "total_rank")


def _add_train(sub) -> None:
    from ..core.config import field_docs
    from ..data import SOURCES
    from ..config import METHODS, PRECISIONS, AdapterConfig
    from ..train.tracking import TRACKERS
    from ..vit import DEFAULT_MODEL

    p = sub.add_parser(
        "train",
        help="fine-tune a timm ViT on one VTAB-1k task",
        description=(
            "Fine-tune a timm ViT on one VTAB-1k task with ElaLoRA or a baseline, then evaluate "
            "top-1 accuracy. Settings come from the built-in defaults, then --config, then the flags "
            "below, then --set KEY=VALUE (any config key, e.g. adapter.b=2). Outputs go to "
            "runs/<task>/<method>/seed<seed> unless --output says otherwise: config.yaml, metrics.jsonl, "
            "result.json and checkpoint.pt (written as often as keeps its cost under 2% of the run, see "
            "--checkpoint-every; --resume continues from it); elalora, lora and "
            "adalora also write adapter.safetensors, rank_history.json and rank_heatmap.png (elalora and adalora "
            "also rank_evolution.png and importance_scores.png); full and linear "
            "write trained.safetensors. 'elalora-vit evaluate' adds eval-<split>.json. A folder holding a run is never overwritten "
            "without --resume or --overwrite, and a run holds .elalora.lock in its folder while it works: a second "
            "process on that folder stops instead of touching it. Ctrl-C during training finishes the current step, "
            "checkpoints it and stops with exit code 130 (SIGTERM: 143), printing the command that continues the "
            "run from that step; a second Ctrl-C stops at once."
        ),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (see configs/default.yaml for every key)")
    p.add_argument("--task", help="VTAB-1k task, e.g. cifar (alias cifar100: outputs use the name cifar), dtd, kitti; "
                                  "'elalora-vit list-tasks'")
    p.add_argument("--method", choices=METHODS, help="elalora (default), lora, adalora, full, linear")
    rank_doc, rank_default = field_docs(AdapterConfig)["rank"], AdapterConfig().rank
    p.add_argument("--rank", help=f"adapter rank r per adapter: {rank_doc}; default {rank_default}")
    p.add_argument("--model", help=f"timm model name (default {DEFAULT_MODEL})")
    p.add_argument("--checkpoint", metavar="PATH", help="local backbone weights (.npz, .safetensors, .pth) for offline machines")
    p.add_argument("--no-pretrained", action="store_true", help="random backbone weights (tests and demos only)")
    p.add_argument("--data-source", choices=SOURCES, help="where images come from (default folder)")
    p.add_argument("--data-dir", metavar="DIR", help="root of the VTAB-1k folder layout (default data/vtab-1k)")
    p.add_argument("--tfds-dir", metavar="DIR", help="tensorflow-datasets data_dir for --data-source tfds")
    p.add_argument("--image-size", help="input resolution (default: the model's, 224)")
    p.add_argument("--output", metavar="DIR", help="output folder (default runs/{task}/{method}/seed{seed})")
    p.add_argument("--epochs", help="training epochs (default 100)")
    p.add_argument("--batch-size", help="batch size per process and step (default 64); with N processes a step sees N x this")
    p.add_argument("--lr", help="peak learning rate (default 1e-3)")
    p.add_argument("--precision", choices=PRECISIONS, help="auto (default: bf16 on a CUDA GPU that has it, fp32 elsewhere), fp32, bf16, "
                   "or fp16 (CUDA, with a GradScaler)")
    p.add_argument("--seed", help="random seed (default 0)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model: faster steps on a GPU after a first compiled step; adapter "
                        "shapes never change, so rank changes do not recompile (config key: compile)")
    p.add_argument("--eval-every", metavar="N", help="also evaluate every N epochs (default: at the end only)")
    p.add_argument("--checkpoint-every", metavar="N|auto",
                   help="write checkpoint.pt every N epochs (0: after the last only; the last epoch always gets one). "
                        "Default auto: after the first epoch, then whenever the time since the last checkpoint is 49x "
                        "what writing it took, so checkpoints cost at most 2%% of the run: every epoch on a CPU, about "
                        "every 20th on a GPU, where a VTAB-1k epoch takes about a second and a fsynced ViT-B "
                        "checkpoint a third of one (config key: checkpoint_every, null for auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in the output folder from its checkpoint.pt; with no checkpoint there, "
                        "say so and start a fresh run; a finished run gives its result again (same settings only)")
    p.add_argument("--overwrite", action="store_true",
                   help="delete the run files in the output folder and start afresh (without --resume or "
                        "--overwrite, a folder holding a checkpoint, metrics or a result is refused)")
    p.add_argument("--dry-run", action="store_true",
                   help="check the config, data, weights and output folder and print the plan (steps, schedule, "
                        "rounds, trainable parameters, memory estimate); train nothing")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override any config key (repeatable); values are YAML, numbers in any spelling: "
                        "--set optim.lr=3e-3 --set optim.epochs=1e2 --set data.mean=[0.5,0.5,0.5]")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--log-to", choices=TRACKERS, help="also log the loss, LR, ranks and figures to tensorboard "
                   "(<output>/tensorboard) or wandb; imported only when chosen (default none)")
    p.set_defaults(func=_train)
