"""Multi-process data parallel training: every process makes the same rank decisions
and holds the same adapters after every round.

Two CPU processes (gloo) run the real command line under ``torchrun``; each
feeds on its own half of every batch, and one of them meets a NaN batch.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import torch

from tests.reliability.conftest import REPO, cli_train_args, run_torchrun
from tests.train.conftest import tiny_overrides

WORKER = REPO / "tests" / "reliability" / "dist_worker.py"


def launch(task_root, tmp_path, *faults: str) -> tuple[dict, dict, Path, subprocess.CompletedProcess]:
    """Train under torchrun with two processes and the worker's ``faults``; returns what
    each process recorded, the output folder and the finished command (its output)."""
    out, dumps = tmp_path / "run", tmp_path / "dumps"
    dumps.mkdir()
    overrides = tiny_overrides(task_root, out, **{"optim.epochs": 4, "optim.batch_size": 4, "optim.grad_clip": 0})
    done = run_torchrun([str(WORKER), str(dumps), *faults, "--", *cli_train_args(overrides)], dumps)
    assert done.returncode == 0, done.stderr[-3000:]
    p0, p1 = (torch.load(dumps / f"process{r}.pt", weights_only=True) for r in (0, 1))
    assert p0["world"] == p1["world"] == 2
    assert any(not torch.equal(a, b) for a, b in zip(p0["labels"], p1["labels"]))  # each its own data
    return p0, p1, out, done


def assert_identical_rounds_and_adapters(p0: dict, p1: dict) -> None:
    """The same rounds, decided identically, leaving bit-identical adapters and scores."""
    assert len(p0["rounds"]) == len(p1["rounds"]) >= 3
    assert any(r["record"]["pruned"] for r in p0["rounds"])
    for a, b in zip(p0["rounds"], p1["rounds"]):
        assert a["record"] == b["record"]
        assert a["adapters"].keys() == b["adapters"].keys()
        for name in a["adapters"]:
            assert torch.equal(a["adapters"][name], b["adapters"][name]), (a["record"]["step"], name)
    f0, f1 = p0["final"], p1["final"]
    assert f0["history"] == f1["history"] and f0["rank_pattern"] == f1["rank_pattern"]
    for kind in ("adapters", "head"):
        assert all(torch.equal(f0[kind][k], f1[kind][k]) for k in f0[kind]), kind
    for kind in ("ibar", "ubar"):
        assert all(torch.equal(x, y) for x, y in zip(f0["importance"][kind], f1["importance"][kind]))
        assert all(bool(torch.isfinite(x).all()) for x in f0["importance"][kind])
    assert all(bool(torch.isfinite(t).all()) for t in f0["adapters"].values())
    assert [s["skipped"] for s in p0["steps"]] == [s["skipped"] for s in p1["steps"]]


def test_two_processes_make_identical_decisions_and_hold_identical_adapters(task_root, tmp_path):
    p0, p1, out, done = launch(task_root, tmp_path, "--nan-at", "5", "--nan-on", "1")
    assert_identical_rounds_and_adapters(p0, p1)
    f0, f1 = p0["final"], p1["final"]
    # the NaN batch on process 1 made both processes skip the same step, nothing else
    assert f0["loop_skipped"] == f1["loop_skipped"] == 1
    assert f0["allocator_skipped"] == f1["allocator_skipped"] == 1

    # the main process wrote the outputs, and they describe that common state
    result = json.loads((out / "result.json").read_text())
    assert result["rank_pattern"] == f0["rank_pattern"] and result["skipped_steps"] == 1
    assert json.loads((out / "rank_history.json").read_text()) == f0["history"]
    # only the main process reports: one summary, one result line, one warning for the skipped step
    assert sum(line.startswith('{"task"') for line in done.stdout.splitlines()) == 1, done.stdout
    assert done.stdout.count("outputs in ") == 1, done.stdout
    assert done.stderr.count("non-finite loss or gradient, step skipped") == 1, done.stderr[-3000:]


def test_a_non_finite_loss_on_one_process_makes_every_process_skip_the_step(task_root, tmp_path):
    """Process 1's loss is NaN while every gradient stays finite, so DDP's all-reduce
    spreads nothing: only the loop's cross-process check can make process 0 skip too."""
    p0, p1, _, _ = launch(task_root, tmp_path, "--nan-loss-at", "5", "--nan-loss-on", "1")
    assert p1["steps"][4] == {"skipped": True, "grads_finite": True}  # step 5: the fault as intended
    assert p0["steps"][4] == {"skipped": True, "grads_finite": True}
    assert [i for i, s in enumerate(p0["steps"]) if s["skipped"]] == [4]
    assert p0["final"]["loop_skipped"] == p1["final"]["loop_skipped"] == 1
    assert_identical_rounds_and_adapters(p0, p1)


def test_a_signal_to_one_process_stops_every_process_after_the_same_step(task_root, tmp_path):
    """Process 1 alone gets SIGTERM before step 5 (of 16, 4 an epoch): process 0 learns of it
    through the reduction every step makes, both stop after the same step (the next read of
    the device, at the end of epoch 2) with one checkpoint of it, and --resume under torchrun
    ends exactly where an uninterrupted run ends."""
    from elalora_vit.train import load_checkpoint
    from tests.reliability.conftest import assert_same_outputs, read_outputs

    (tmp_path / "uninterrupted").mkdir()
    _, _, reference, _ = launch(task_root, tmp_path / "uninterrupted")
    out, dumps = tmp_path / "run", tmp_path / "dumps"
    dumps.mkdir()
    overrides = tiny_overrides(task_root, out, **{"optim.epochs": 4, "optim.batch_size": 4, "optim.grad_clip": 0})
    done = run_torchrun([str(WORKER), str(dumps), "--signal-at", "5", "--signal-on", "1", "--",
                         *cli_train_args(overrides)], dumps)
    assert done.returncode != 0
    p0, p1 = (torch.load(dumps / f"process{r}.pt", weights_only=True) for r in (0, 1))
    assert len(p0["steps"]) == len(p1["steps"]) == 8, done.stderr[-3000:]
    saved = load_checkpoint(out / "checkpoint.pt")
    assert (saved["step"], saved["epoch"], saved["epoch_progress"]["steps"]) == (8, 1, 4)
    assert done.stderr.count("stopped during epoch 2 at step 8 of 16; saved at step 8") == 1, done.stderr[-3000:]

    resumed = run_torchrun([str(WORKER), str(dumps), "--", *cli_train_args(overrides), "--resume"], dumps)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_outputs(read_outputs(out), read_outputs(reference))


def test_processes_whose_scores_differ_take_the_main_process_decisions(task_root, tmp_path):
    """Process 1 scores the ranks differently from process 0 (its scores are negated: DDP
    cannot make them equal); the broadcast of rank 0's scores makes both decide alike."""
    p0, p1, _, _ = launch(task_root, tmp_path, "--skew-scores-on", "1")
    assert len(p0["local_scores"]) == len(p1["local_scores"]) >= 3
    for a, b in zip(p0["local_scores"], p1["local_scores"]):
        finite = torch.isfinite(a)
        assert not torch.equal(a[finite], b[finite])  # the processes disagree...
    assert_identical_rounds_and_adapters(p0, p1)  # ...yet decide alike


def test_rank_decisions_follow_the_main_process_scores(tmp_path):
    """Without DDP each process scores its own gradients; the broadcast of rank 0's scores
    still makes every process take the same decisions (and without it they differ)."""
    import torch.multiprocessing as mp

    from tests.reliability.dist_worker import allocator_rounds

    mp.spawn(allocator_rounds, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True)
    p0, p1 = (torch.load(tmp_path / f"allocator{r}.pt", weights_only=True) for r in (0, 1))
    assert not torch.equal(p0["broadcast"]["scores"], p1["broadcast"]["scores"])  # the processes disagree...
    assert len(p0["broadcast"]["history"]) >= 3
    assert p0["broadcast"]["history"] == p1["broadcast"]["history"]  # ...yet decide alike
    assert p0["local"]["history"] != p1["local"]["history"]  # the test would see a missing broadcast
