"""Mutation check: do the tests fail when the README's claims break?

Each mutation is one deliberate bug, a textual find/replace in one file of the
package. For every mutation the script copies the checkout to a temporary folder,
applies the bug there, runs the test files named for that behaviour against the
copy (``PYTHONPATH`` and the working directory point at the copy, so child
processes such as ``torchrun`` workers import the mutated code too), and reports
which tests failed: a mutation is *caught* when at least one did.

    python tests/mutations.py              # all mutations
    python tests/mutations.py --list       # what they are
    python tests/mutations.py --only plan-round-partial-growth load-checkpoint-swallows-errors

A mutation whose ``find`` text no longer occurs exactly once (the code was
refactored) is reported as *stale*: re-point it at the new code. The exit status
is 0 only when every mutation was caught.  It is not part of the pytest suite
(it runs the affected test files once per mutation: minutes, not seconds).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What a test run needs from the checkout (tests read README.md, benchmarks/, configs/).
COPIED = ("elalora_vit", "tests", "benchmarks", "configs", "docs", "tools", "README.md", "BENCHMARKS.md", "mkdocs.yml",
          "pyproject.toml")


@dataclass(frozen=True)
class Mutation:
    name: str
    bug: str  # the README claim it breaks, in words
    file: str  # relative to the checkout
    find: str  # must occur exactly once in ``file``
    replace: str
    tests: tuple[str, ...]  # test files (or pytest node ids) expected to catch it


MUTATIONS = [
    Mutation(
        "importance-ema-uses-beta2",
        "the sensitivity EMA uses beta2 where beta1 belongs",
        "elalora_vit/core/importance.py",
        "weight1, weight2 = ok * (1 - beta1), ok * (1 - beta2)",
        "weight1, weight2 = ok * (1 - beta2), ok * (1 - beta2)",
        ("tests/core/test_importance.py",),
    ),
    Mutation(
        "scores-take-in-a-masked-step",
        "a step the device-side flag masks still reaches the score EMAs (NaN * 0 = NaN)",
        "elalora_vit/core/importance.py",
        "            sensitivity.nan_to_num_(0.0, 0.0, 0.0)\n",
        "",
        ("tests/core/test_importance.py",),
    ),
    Mutation(
        "fused-step-not-skipped",
        "the fused AdamW is not told a step is non-finite: NaN gradients reach the weights",
        "elalora_vit/train/loop.py",
        "        optimizer.found_inf = skipped.float()",
        "        pass",
        ("tests/reliability/test_numerics.py",),
    ),
    Mutation(
        "directions-from-global-rng",
        "new directions drawn from the global RNG, not the allocator's generator",
        "elalora_vit/core/allocator.py",
        "v = torch.randn(d, generator=generator, dtype=torch.float64)",
        "v = torch.randn(d, dtype=torch.float64)",
        ("tests/core/test_allocator.py",),
    ),
    Mutation(
        "no-score-broadcast",
        "rank 0's scores are not broadcast: every process decides on its own scores",
        "elalora_vit/core/allocator.py",
        "if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:",
        "if False:",
        ("tests/reliability/test_distributed.py",),
    ),
    Mutation(
        "finite-check-local",  # train/runtime.py: finite_on_every_process
        "the cross-process finite check is local: one process skips a step the others take",
        "elalora_vit/train/runtime.py",
        'failed, stopping = accelerator.reduce(flags, reduction="sum")',
        "failed, stopping = flags",
        ("tests/reliability/test_distributed.py",),
    ),
    Mutation(
        "stop-flag-local",  # train/runtime.py: finite_on_every_process
        "a stop signal on one process is not reduced: the other trains on and waits in a collective",
        "elalora_vit/train/runtime.py",
        "return failed == 0, stopping > 0",
        "return failed == 0, flags[1] > 0",
        ("tests/reliability/test_distributed.py::test_a_signal_to_one_process_stops_every_process_after_the_same_step",),
    ),
    Mutation(
        "stop-not-deferred",  # stopping.py: StopSignals._received
        "Ctrl-C / SIGTERM during the steps stops at once, with no checkpoint of the step",
        "elalora_vit/stopping.py",
        "if self.deferring and (not repeat or not self._repeat_stops):",
        "if False:",
        ("tests/reliability/test_interrupt.py",),
    ),
    Mutation(
        "resume-restarts-the-epoch",  # train/loop.py: _train_epoch
        "a run resumed from a stop between two steps takes the epoch's first steps again",
        "elalora_vit/train/loop.py",
        "_train_batches(dataset, cfg, state.epoch, accelerator, start=done.steps)",
        "_train_batches(dataset, cfg, state.epoch, accelerator, start=0)",
        ("tests/reliability/test_interrupt.py",),
    ),
    Mutation(
        "loop-passes-no-optimizer",  # train/loop.py: the allocator.step call in _allocation_step
        "the training loop passes optimizer=None to allocator.step: no moment is ever reset",
        "elalora_vit/train/loop.py",
        "record = state.allocator.step(optimizer, skipped=skipped, finite_checked=True)",
        "record = state.allocator.step(None, skipped=skipped, finite_checked=True)",
        ("tests/train/test_rounds_in_training.py",),
    ),
    Mutation(
        "plan-round-partial-growth",
        "plan_round accepts a partial growth (prunes 2, grows 1, no shortfall): the total rank drops",
        "elalora_vit/core/allocator.py",
        "        if len(grow) == n:\n            return prune, grow, b - n",
        "        if grow:\n            return prune, grow, b - n",
        ("tests/core/test_allocator.py",),
    ),
    Mutation(
        "load-checkpoint-swallows-errors",
        "load_checkpoint swallows unpickling errors and returns an empty checkpoint",
        "elalora_vit/train/checkpoint.py",
        "    except Exception as err:  # damaged bytes fail anywhere in the unpickler",
        '    except Exception as err:  # damaged bytes fail anywhere in the unpickler\n        return {"format": FORMAT}  #',
        ("tests/reliability/test_hostile_files.py",),
    ),
    Mutation(
        "bf16-ignored",  # train/runtime.py: _mixed_precision
        "precision bf16 is ignored: the run trains in fp32",
        "elalora_vit/train/runtime.py",
        '"bf16": "bf16", "fp16": "fp16"}[precision]',
        '"bf16": "no", "fp16": "fp16"}[precision]',
        ("tests/train/test_train.py",),
    ),
    Mutation(
        "excluded-part-starts-with-rank",
        "an excluded part (k of q/v-only) starts with the rank of the others",
        "elalora_vit/core/layer.py",
        "mask &= self.part_inclusion().unsqueeze(1)",
        "mask |= False",
        ("tests/core/test_excluded_parts.py",),
    ),
    Mutation(
        "excluded-part-is-an-adapter",
        "the allocators see an excluded part as an adapter (a candidate, in the budget)",
        "elalora_vit/core/layer.py",
        "            if layer.is_excluded(index):\n                continue\n",
        "",
        ("tests/core/test_excluded_parts.py",),
    ),
    Mutation(
        "adapter-file-forgets-exclusion",
        "an adapter file of a q/v-only run does not record that k is excluded",
        "elalora_vit/core/adapter_io.py",
        'info["excluded_parts"] = list(layer.excluded_parts)',
        "pass",
        ("tests/core/test_excluded_parts.py",),
    ),
    Mutation(
        "grown-slot-second-moment-zeroed",
        "a grown rank's Adam second moment is zeroed (its steps then outrun the learning rate)",
        "elalora_vit/core/optim_state.py",
        "            if neighbours.numel():",
        "            if False:",
        ("tests/core/test_optim_state.py", "tests/core/test_allocator.py", "tests/train/test_rounds_in_training.py"),
    ),
    Mutation(
        "run-folder-unlocked",
        "a run does not hold its folder's lock: a second process resumes, overwrites or deletes it",
        "elalora_vit/train/loop.py",
        '            lock = FolderLock(files.root, "training").acquire()',
        "            lock = None",
        ("tests/reliability/test_concurrent_runs.py",),
    ),
    Mutation(
        "yaml-duplicate-keys-accepted",
        "a config naming a key twice is read silently, the last value winning",
        "elalora_vit/config/reading.py",
        "                    if key in seen:",
        "                    if False:",
        ("tests/reliability/test_hostile_config.py",),
    ),
]


def copy_checkout(into: Path) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif source.is_file():
            shutil.copy2(source, into / name)


def apply(mutation: Mutation, root: Path) -> None:
    path = root / mutation.file
    text = path.read_text()
    count = text.count(mutation.find)
    if count != 1:
        raise LookupError(f"found {count} times in {mutation.file} (expected once): re-point the mutation")
    path.write_text(text.replace(mutation.find, mutation.replace))


def run_tests(root: Path, target: str, timeout: float) -> tuple[str, list[str], float]:
    """Run one test file against the copy at ``root``: ('caught' | 'survived' | 'error', failed tests, seconds)."""
    env = dict(os.environ, PYTHONPATH=str(root), PYTHONDONTWRITEBYTECODE="1")
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rf", target]
    started = time.monotonic()
    try:
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "error", [f"timed out after {timeout:.0f} s"], time.monotonic() - started
    seconds = time.monotonic() - started
    failed = sorted(set(re.findall(r"^FAILED (.+?)(?: - .*)?$", done.stdout, flags=re.M)))
    if done.returncode == 0:
        return "survived", [], seconds
    if done.returncode == 1 and failed:
        return "caught", [f.split("::", 1)[-1] for f in failed], seconds
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [f"exit code {done.returncode}"]
    return "error", tail, seconds


def imported_from(root: Path) -> Path:
    """Where the copy's environment imports elalora_vit from (must be the copy)."""
    env = dict(os.environ, PYTHONPATH=str(root))
    out = subprocess.run([sys.executable, "-c", "import elalora_vit; print(elalora_vit.__file__)"],
                         cwd=root, env=env, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip()).resolve()


def check(mutation: Mutation, timeout: float) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix=f"mutation-{mutation.name}-") as tmp:
        root = Path(tmp)
        copy_checkout(root)
        try:
            apply(mutation, root)
        except LookupError as err:
            return [{"test": "-", "outcome": "stale", "failed": [str(err)], "seconds": 0.0}]
        if root.resolve() not in imported_from(root).parents:
            raise SystemExit(f"the copy's tests would not import the copy's package (PYTHONPATH={root})")
        rows = []
        for target in mutation.tests:
            outcome, failed, seconds = run_tests(root, target, timeout)
            rows.append({"test": target, "outcome": outcome, "failed": failed, "seconds": seconds})
        return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutations")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per test file (default 900)")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
    unknown = sorted(set(args.only or []) - {m.name for m in MUTATIONS})
    if unknown:
        parser.error(f"unknown mutation(s) {unknown}; --list shows them")
    if args.list:
        for m in chosen:
            print(f"{m.name}\n    bug:   {m.bug}\n    where: {m.file}\n    tests: {', '.join(m.tests)}")
        return 0

    started, all_caught = time.monotonic(), True
    print("| mutation | file | test file | outcome | failing tests | s |\n|---|---|---|---|---|---|", flush=True)
    for m in chosen:
        rows = check(m, args.timeout)
        caught = any(r["outcome"] == "caught" for r in rows)
        all_caught &= caught
        for r in rows:
            failed = ", ".join(r["failed"][:4]) + (f" (+{len(r['failed']) - 4})" if len(r["failed"]) > 4 else "")
            print(f"| {m.name} | {m.file} | {r['test']} | {r['outcome']} | {failed} | {r['seconds']:.0f} |", flush=True)
    minutes = (time.monotonic() - started) / 60
    print(f"\n{'every mutation was caught' if all_caught else 'NOT every mutation was caught'} "
          f"({len(chosen)} mutations, {minutes:.1f} min)")
    return 0 if all_caught else 1


if __name__ == "__main__":
    sys.exit(main())
