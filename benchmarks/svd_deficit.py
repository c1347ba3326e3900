"""Why the SVD form trails LoRA with no reallocation (``b = 0``): each candidate cause,
changed alone, on the transfer benchmark of ``benchmarks/transfer.py`` (issue 24).

    python benchmarks/svd_deficit.py --width 64 --variants lora peft b0 b0-theta-grad \\
        --lrs 5e-3 7e-3 1e-2 --seeds 0 1 2 3 4 --out w64.jsonl       # ~8 s per run on one core
    python benchmarks/svd_deficit.py --summarise w64.jsonl             # the table, paired 95% intervals
    # the paper's headline: ElaLoRA at rank r against the others at rank 2 r (tags keep them apart;
    # benchmarks/half_rank.py does all of it in one command)
    python benchmarks/svd_deficit.py --rank 4 --variants elalora --tag @4 --out half.jsonl
    python benchmarks/svd_deficit.py --rank 8 --variants lora peft adalora --tag @8 --out half.jsonl
    python benchmarks/svd_deficit.py --summarise half.jsonl --opponents lora@8 peft@8

    # the second family (structured: counting dots), defaults chosen on digits, reported here
    python benchmarks/svd_deficit.py --family counting --variants lora peft elalora b0 \\
        --lrs 3e-3 5e-3 1e-2 2e-2 --seeds 0 1 2 3 4 --out count_w64.jsonl

The protocol is ``transfer.py``'s (digits 0-4 pre-training, digits 5-9 adaptation, 100
training images, 300 validation images, rank 8 on q, k, v, proj, fc1, fc2, AdamW with the
training config's defaults, 50 epochs); each variant runs on the same seeds and rates, the
rate of each variant is chosen on validation, and differences are paired by seed.

Variants:

- ``lora``, ``peft``: our LoRA and PEFT's ``LoraConfig`` (the opponents); ``elalora``: the
  defaults, reallocation on; ``b0``: the defaults with no reallocation; ``adalora``: our
  AdaLoRA (1.5 r pruned to r) on the same adapters;
- ``--defaults previous`` runs every variant from the defaults before issue 24's fourth round
  (``init="orthogonal"``: orthonormal P and Q, lambda = 0; ``lambda_lr_multiplier=20``):
  the first round, the ladder and the tables made before it were measured so.

The first round (``--defaults previous``): each one change to ``b0``:

- ``b0-theta-grad``: theta's gradient is lambda's, not ``lambda_scale`` times it (a
  straight-through scale), so theta no longer dominates the clipped gradient norm: the
  "share of the gradient norm under clipping" candidate;
- ``b0-squared-reg``: the regulariser with squared Frobenius norms (the paper's), smooth at
  orthonormality where the plain norm's gradient keeps a unit size;
- ``b0-lora-start``: LoRA's start in SVD form (P = 0, lambda = 1) at the 20x speed-up: P has
  a gradient at step 1, as LoRA's B has (the "lambda = 0 start" candidate);
- ``b0-no-decay``: weight decay 0 on every parameter (AdamW's 1e-4 otherwise);
- ``b0-unit-norm``: P's columns and Q's rows divided by their norms in the forward (the
  magnitude lives in lambda alone);
- ``b0-aligned``: ``b0-unit-norm``, with P and Q set at the first step to the top singular
  vectors of that step's gradient of W (a gradient-aligned start, as LoRA-GA).

The ladder from LoRA to ``b0`` (third round, ``--defaults previous``): Q's active rows are drawn as our LoRA's
A (same distribution, same generator and seed, but in module order where ``patch_model`` draws
in target order, so only the first layer's draws coincide: paired by seed, not common random
numbers): ``ladder-1-as-lora`` (LoRA in the SVD layer: P = 0, lambda fixed at 1, no
regulariser), ``ladder-2-lambda`` (+ lambda trained at the 20x speed-up), ``ladder-2r-reg``
(rung 1 + the regulariser), ``ladder-3-lambda-reg`` (both), ``ladder-2-s1`` / ``ladder-3-s1``
(rungs 2 / 3 with lambda at s = 1), ``ladder-4-no-reg`` (``b0-previous`` without the
regulariser); ``b0-s5``, ``b0-lora-rate`` (smaller speed-ups from the previous start);
``elalora-lora-start-s1``: the candidate with reallocation as measured then (LoRA's start,
lambda at s = 1, grown ranks started as LoRA's: P's column 0, lambda 1), which became the
package's ``init="lora"`` and ``lambda_lr_multiplier=1`` (the package draws Q exactly as our
LoRA draws A, and draws no discarded P direction when a rank grows).

Fifth round: ``b0-no-reg`` and ``b0-frozen-lambda`` (``b0`` without the regulariser, or with lambda
kept at 1: what ``b0`` pays at width 384); ``elalora-fused`` / ``lora-fused``, the defaults with the fused qkv adapted as one
layer of rank r, as PEFT adapts it (``peft`` gives it rank 1.5 r); not adopted (BENCHMARKS.md,
"The fused qkv as one adapter").

Apart from the package's settings, the variants are changes to this process's copy of the layer
(monkeypatches, undone after each run). The first round's six closed nothing; the ladder found
the cost in lambda's speed-up; BENCHMARKS.md, "Where the SVD form loses", has every table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import transfer as T  # noqa: E402
from elalora_vit.core import layer as L  # noqa: E402
from elalora_vit.core.allocator import RankAllocator  # noqa: E402
from elalora_vit.sweep.stats import t_interval  # noqa: E402

_ORIGINAL_EXPAND = RankAllocator._expand


class _ForwardScale(torch.autograd.Function):
    """``theta * s`` forward; the gradient passes unscaled (theta's gradient is lambda's)."""

    @staticmethod
    def forward(ctx, theta, s):
        return theta * s

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def _theta_grad_slot_scale(self):
    return _ForwardScale.apply(self.lora_theta, self.lambda_scale) * self.rank_mask * self.scaling


def _unit_norm_slot_scale(self):
    norms = self.lora_A.norm(dim=2) * self.lora_B.norm(dim=1)
    return self.lora_theta * self.lambda_scale * self.rank_mask * self.scaling / norms.clamp_min(1e-6)


def _squared_regularizer(model):
    total, count = 0.0, 0
    for _, layer in L.adapted_layers(model):
        mask = layer.rank_mask.to(layer.lora_A.dtype)
        both, eye = mask.unsqueeze(2) * mask.unsqueeze(1), torch.diag_embed(mask)
        total = total + ((layer.lora_A @ layer.lora_A.mT) * both - eye).pow(2).sum()
        total = total + ((layer.lora_B.mT @ layer.lora_B) * both - eye).pow(2).sum()
        count += layer.n_parts
    return total / (2 * count)


def _lora_start_setup(setup):
    def patched(model, cfg, total_steps):
        method = setup(model, cfg, total_steps)
        with torch.no_grad():
            for _, layer in L.adapted_layers(model):
                layer.lora_B.zero_()
                layer.lora_theta.fill_(1.0 / float(layer.lambda_scale))  # lambda = 1
        return method
    return patched


def _aligned_setup(setup):
    """After the first optimizer step, P and Q become the top singular vectors of that step's
    gradient of each W (captured by hooks), theta 0, and their AdamW moments zero."""
    def patched(model, cfg, total_steps):
        method = setup(model, cfg, total_steps)
        layers = [layer for _, layer in L.adapted_layers(model)]
        grads, hooks = {}, []

        def capture(layer, inputs, output):
            x = inputs[0].detach()
            if output.requires_grad:
                def grad_hook(g):
                    gx = g.detach().reshape(-1, g.shape[-1]).T @ x.reshape(-1, x.shape[-1])
                    grads[layer] = grads.get(layer, 0) + gx
                output.register_hook(grad_hook)

        hooks = [layer.register_forward_hook(capture) for layer in layers]
        allocator, first = method.allocator, {"pending": True}
        allocator_step = allocator.step

        def step(optimizer=None, **kwargs):
            if first["pending"]:
                first["pending"] = False
                for hook in hooks:
                    hook.remove()
                with torch.no_grad():
                    for layer in layers:
                        G = grads[layer].reshape(layer.n_parts, layer.part_features, layer.in_features)
                        for part in range(layer.n_parts):
                            U, _, Vh = torch.linalg.svd(G[part], full_matrices=False)
                            layer.lora_A[part].copy_(Vh[: layer.capacity])
                            layer.lora_B[part].copy_(U[:, : layer.capacity])
                        layer.lora_theta.zero_()
                        for tensor in (layer.lora_A, layer.lora_B, layer.lora_theta):
                            for key in ("exp_avg", "exp_avg_sq"):
                                if key in optimizer.state.get(tensor, {}):
                                    optimizer.state[tensor][key].zero_()
            return allocator_step(optimizer, **kwargs)

        allocator.step = step
        return method
    return patched


def _as_lora_setup(train_lambda: bool):
    """LoRA's start and dynamics in the SVD layer: Q is LoRA's A (the same draws), P = 0 as
    LoRA's B, lambda = 1; theta frozen unless ``train_lambda``.
    With theta frozen and no regulariser the layer *is* LoRA (B = P, A = Q): the first rung
    of the ladder from LoRA to ``b0``."""
    def wrap(setup):
        def patched(model, cfg, total_steps):
            method = setup(model, cfg, total_steps)
            # The draws of our LoRA's A, in its order, from the generator patch_model seeds:
            # the active slots' Q is exactly LoRA's A on the same seed (common random numbers).
            generator = torch.Generator().manual_seed(method.adapter_config.seed)
            with torch.no_grad():
                for _, layer in L.adapted_layers(model):
                    bound = 1.0 / layer.in_features ** 0.5
                    n, rank = layer.n_parts, cfg.adapter.rank
                    layer.lora_A.zero_()
                    layer.lora_A[:, :rank] = (torch.rand((n, rank, layer.in_features), generator=generator) * 2 - 1) * bound
                    layer.lora_B.zero_()
                    layer.lora_theta.fill_(1.0 / float(layer.lambda_scale))  # lambda = 1
                    layer._zero_excluded_factors()
                    layer.lora_theta.requires_grad_(train_lambda)
            return method
        return patched
    return wrap


def _lora_rate_setup(setup):
    """lambda_scale of each layer set to sqrt(d_part / 3): the SVD update's first steps grow at
    LoRA's rate.  (Under Adam LoRA's B column moves by lr * sqrt(d_out) a step against an A
    row of norm 1 / sqrt(3); with unit P and Q, lambda moves by lambda_scale * lr.)"""
    def patched(model, cfg, total_steps):
        method = setup(model, cfg, total_steps)
        with torch.no_grad():
            for _, layer in L.adapted_layers(model):
                lam = layer.lambdas()
                layer.lambda_scale.fill_((layer.part_features / 3) ** 0.5)
                layer.set_lambdas(lam)
        return method
    return patched


def _frozen_lambda_setup(setup):
    """lambda kept at its start (1, the defaults' init): theta gets no gradient, so the SVD layer
    differs from LoRA only by its regulariser and its parameterisation P, Q."""
    def patched(model, cfg, total_steps):
        method = setup(model, cfg, total_steps)
        for _, layer in L.adapted_layers(model):
            layer.lora_theta.requires_grad_(False)
        return method
    return patched


FUSED_TARGETS = ["blocks.*.attn.qkv", "blocks.*.attn.proj", "blocks.*.mlp.fc1", "blocks.*.mlp.fc2"]


def _fused_qkv_setup(setup):
    """The fused qkv adapted as one layer, as PEFT adapts it, at rank r (so 4 d r parameters
    there against three parts' 6 d r: fewer in all, not more; PEFT's `peft` variant gets 1.5 r)."""
    def patched(model, cfg, total_steps):
        cfg.model.targets, cfg.model.split = list(FUSED_TARGETS), None
        return setup(model, cfg, total_steps)
    return patched


def _lora_like_expand(self, adapter, optimizer):
    """A grown rank started as LoRA starts one: Q a unit row orthogonal to the active ones,
    P's column 0 and lambda 1 (the function does not jump: P's column is 0)."""
    slot = _ORIGINAL_EXPAND(self, adapter, optimizer)
    li, part = self._owner[adapter]
    layer = self.layers[li]
    with torch.no_grad():
        layer.lora_B[part, :, slot] = 0.0
        layer.lora_theta[part, slot] = 1.0 / float(layer.lambda_scale)
    return slot


def _lora_start_reallocation_setup(setup):
    as_lora = _as_lora_setup(True)(setup)

    def patched(model, cfg, total_steps):
        method = as_lora(model, cfg, total_steps)
        allocator = method.allocator
        allocator._expand = _lora_like_expand.__get__(allocator)
        return method
    return patched


# name -> (kind, adapter overrides, changes: slot_scale / regularizer / setup / optim overrides)
VARIANTS: dict[str, tuple[str, dict, dict]] = {
    "lora": ("lora", {}, {}),
    "peft": ("peft-lora", {}, {}),
    "elalora": ("elalora", {}, {}),  # the defaults (LoRA's start, lambda at s = 1)
    "adalora": ("adalora", {}, {}),
    "b0": ("elalora", {"b": 0}, {}),  # the defaults with no reallocation
    # First round: one change each to b0 (run with --defaults previous).
    "b0-theta-grad": ("elalora", {"b": 0}, {"slot_scale": _theta_grad_slot_scale}),
    "b0-squared-reg": ("elalora", {"b": 0}, {"regularizer": _squared_regularizer}),
    "b0-lora-start": ("elalora", {"b": 0}, {"setup": _lora_start_setup}),
    "b0-no-decay": ("elalora", {"b": 0}, {"optim": {"weight_decay": 0.0}}),
    "b0-unit-norm": ("elalora", {"b": 0}, {"slot_scale": _unit_norm_slot_scale}),
    "b0-aligned": ("elalora", {"b": 0}, {"slot_scale": _unit_norm_slot_scale, "setup": _aligned_setup}),
    # The ladder from LoRA to b0 (issue 24, third round, --defaults previous): one change of the SVD form at a time.
    "ladder-1-as-lora": ("elalora", {"b": 0, "orth_reg_weight": 0.0}, {"setup": _as_lora_setup(False)}),
    "ladder-2-lambda": ("elalora", {"b": 0, "orth_reg_weight": 0.0}, {"setup": _as_lora_setup(True)}),
    "ladder-2r-reg": ("elalora", {"b": 0}, {"setup": _as_lora_setup(False)}),
    "ladder-3-lambda-reg": ("elalora", {"b": 0}, {"setup": _as_lora_setup(True)}),
    "ladder-4-no-reg": ("elalora", {"b": 0, "orth_reg_weight": 0.0}, {}),
    # Candidate fixes of the rung the ladder points at (lambda's speed-up)
    "b0-s5": ("elalora", {"b": 0, "lambda_lr_multiplier": 5.0}, {}),
    "b0-lora-rate": ("elalora", {"b": 0}, {"setup": _lora_rate_setup}),
    "elalora-lora-rate": ("elalora", {}, {"setup": _lora_rate_setup}),
    "ladder-2-s1": ("elalora", {"b": 0, "orth_reg_weight": 0.0, "lambda_lr_multiplier": 1.0},
                    {"setup": _as_lora_setup(True)}),
    "ladder-3-s1": ("elalora", {"b": 0, "lambda_lr_multiplier": 1.0}, {"setup": _as_lora_setup(True)}),
    # issue 24, fifth round: what b0 pays at width 384, one part at a time (the defaults otherwise)
    "b0-no-reg": ("elalora", {"b": 0, "orth_reg_weight": 0.0}, {}),
    "b0-frozen-lambda": ("elalora", {"b": 0}, {"setup": _frozen_lambda_setup}),
    # issue 24, fifth round: the fused qkv as one adapter (PEFT's form), the defaults otherwise
    "elalora-fused": ("elalora", {}, {"setup": _fused_qkv_setup}),
    "lora-fused": ("lora", {}, {"setup": _fused_qkv_setup}),
    # the candidate with reallocation, as measured before it became the package's init="lora"
    # (its Q draws in module order, and a discarded P draw at each expansion)
    "elalora-lora-start-s1": ("elalora", {"lambda_lr_multiplier": 1.0},
                              {"setup": _lora_start_reallocation_setup}),
}


@contextlib.contextmanager
def applied(changes: dict):
    saved = (L.SVDLinear.slot_scale, T.orthogonal_regularization, T.setup_method, T.run_config)
    try:
        if "slot_scale" in changes:
            L.SVDLinear.slot_scale = changes["slot_scale"]
        if "regularizer" in changes:
            T.orthogonal_regularization = changes["regularizer"]
        if "setup" in changes:
            T.setup_method = changes["setup"](saved[2])
        if "optim" in changes:
            def run_config(*args, **kwargs):
                cfg = saved[3](*args, **kwargs)
                for key, value in changes["optim"].items():
                    setattr(cfg.optim, key, value)
                return cfg
            T.run_config = run_config
        yield
    finally:
        L.SVDLinear.slot_scale, T.orthogonal_regularization, T.setup_method, T.run_config = saved


def run(args) -> None:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # b = 0 runs warn that no rank moves: that is the point
    settings = T.Settings(model=dict(T.FULL_MODEL), rank=args.rank, shots_val=60, family=args.family,
                          adapter_defaults=dict(T.ADAPTER_DEFAULTS[args.defaults]))
    settings.model.update(embed_dim=args.width, num_heads=max(1, args.width // 64))
    data = T.task_data(settings.family, settings.shots_train, settings.shots_val)
    backbone, _ = T.pretrained_backbone(settings, data, Path(args.cache_dir), print)
    for seed in args.seeds:
        for lr in args.lrs:
            for name in args.variants:
                kind, overrides, changes = VARIANTS[name]
                with applied(changes):
                    result = T.train_one(kind, overrides, settings, lr, seed, backbone, data)
                record = {"method": name + args.tag, "family": args.family, "width": args.width, "rank": args.rank, "lr": lr, "seed": seed,
                          **{k: result[k] for k in ("val_acc", "val_loss", "test_acc", "trainable_params", "seconds")}}
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"  {name:<16} lr {lr:<7g} seed {seed}: val {result['val_acc']:5.1f} test {result['test_acc']:5.2f}",
                      flush=True)


def summarise(paths: list[str], lrs: list[float] | None, opponents=("lora", "peft"),
              variants: list[str] | None = None) -> str:
    """Markdown: per variant, test accuracy by rate, the val-chosen rate, and the paired
    difference to each opponent at each one's val-chosen rate (95% t-interval)."""
    runs = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    if lrs:
        runs = [r for r in runs if r["lr"] in set(lrs)]
    if variants:
        runs = [r for r in runs if r["method"] in set(variants)]
    methods = list(dict.fromkeys(r["method"] for r in runs))
    grid = sorted({r["lr"] for r in runs})
    cell = {(r["method"], r["lr"], r["seed"]): r for r in runs}
    seeds = sorted(s for s in {r["seed"] for r in runs} if all((m, lr, s) in cell for m in methods for lr in grid))
    if not seeds:
        return "no seed has every variant at every rate"
    chosen = {}
    for m in methods:
        chosen[m] = max(grid, key=lambda lr: (statistics.mean(cell[m, lr, s]["val_acc"] for s in seeds),
                                              -statistics.mean(cell[m, lr, s]["val_loss"] for s in seeds)))
    present = [o for o in opponents if o in methods]
    lines = [f"{len(seeds)} seeds ({seeds[0]}-{seeds[-1]}); grid {' '.join(f'{lr:g}' for lr in grid)}", "",
             "| variant | trainable params | " + " | ".join(f"test at {lr:g}" for lr in grid) + " | LR (val-chosen) | "
             + " | ".join(f"− {o}, paired [95% interval]" for o in present) + " |",
             "|---|---:|" + "---:|" * len(grid) + "---:|" + "---|" * len(present)]
    for m in methods:
        means = [statistics.mean(cell[m, lr, s]["test_acc"] for s in seeds) for lr in grid]
        diffs = []
        for o in present:
            if o == m:
                diffs.append("-")
                continue
            ci = t_interval([cell[m, chosen[m], s]["test_acc"] - cell[o, chosen[o], s]["test_acc"] for s in seeds])
            diffs.append(f"{ci.mean:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]" if ci.low is not None else f"{ci.mean:+.2f}")
        params = round(statistics.mean(cell[m, chosen[m], s]["trainable_params"] for s in seeds))
        lines.append(f"| {m} | {params:,} | " + " | ".join(f"{v:.2f}" for v in means) + f" | {chosen[m]:g} | " + " | ".join(diffs) + " |")
    return "\n".join(lines)


def paired_by_rate(paths: list[str], base: str, variants: list[str]) -> str:
    """Markdown: each variant minus ``base`` at every rate, paired by seed, and pooled over the
    rates (each (rate, seed) pair once): how much one change costs, whatever rate a user picks."""
    runs = [json.loads(line) for p in paths for line in Path(p).read_text().splitlines() if line.strip()]
    cell = {(r["method"], r["lr"], r["seed"]): r["test_acc"] for r in runs}
    grid = sorted({r["lr"] for r in runs if r["method"] == base})
    seeds = sorted({r["seed"] for r in runs})
    lines = [f"| variant − {base} | " + " | ".join(f"at {lr:g}" for lr in grid) + " | pooled over the rates |",
             "|---|" + "---|" * (len(grid) + 1)]
    for m in variants:
        row, pooled = [], []
        for lr in grid:
            diffs = [cell[m, lr, s] - cell[base, lr, s] for s in seeds if (m, lr, s) in cell and (base, lr, s) in cell]
            pooled += diffs
            ci = t_interval(diffs) if len(diffs) > 1 else None
            row.append(f"{ci.mean:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}] (n {len(diffs)})" if ci else "-")
        ci = t_interval(pooled) if len(pooled) > 1 else None
        row.append(f"**{ci.mean:+.2f} [{ci.low:+.2f}, {ci.high:+.2f}]** (n {len(pooled)})" if ci else "-")
        lines.append(f"| {m} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=("digits", "counting"), default="digits",
                   help="the adaptation task (transfer.py --family): digits 5-9 or counting dots")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--variants", nargs="+", default=["lora", "peft", "b0"],
                   help=f"what to run, of {list(VARIANTS)} (with --summarise: which runs to tabulate)")
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-3, 7e-3, 1e-2])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--out", help="append one JSON line per run here")
    p.add_argument("--tag", default="", help="appended to each variant's name in --out (e.g. @8 for the rank)")
    p.add_argument("--opponents", nargs="+", default=["lora", "peft"], help="--summarise: the variants to pair against")
    p.add_argument("--summarise", nargs="+", metavar="JSONL", help="only print the table of earlier runs")
    p.add_argument("--paired-against", metavar="VARIANT",
                   help="--summarise: instead, each of --variants minus this one at every rate and pooled over them")
    p.add_argument("--cache-dir", default=T.parse_args([]).cache_dir, help="where pre-trained backbones are cached")
    p.add_argument("--threads", type=int, default=1)
    T.add_defaults_argument(p)
    args = p.parse_args(argv)
    if args.summarise and args.paired_against:
        print(paired_by_rate(args.summarise, args.paired_against, args.variants))
        return
    if args.summarise:
        given = argv or sys.argv
        print(summarise(args.summarise, args.lrs if "--lrs" in given else None, tuple(args.opponents),
                        args.variants if "--variants" in given else None))
        return
    if not args.out:
        p.error("--out is required to run (the runs are appended to it)")
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    run(args)


if __name__ == "__main__":
    main()
