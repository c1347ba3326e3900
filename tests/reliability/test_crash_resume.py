"""Crashes: a run killed with SIGKILL resumes from its last complete checkpoint and ends
exactly where the uninterrupted run ends; a kill during a checkpoint write leaves the
previous checkpoint loadable."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from elalora_vit.train import CheckpointError, load_checkpoint, save_checkpoint
from tests.reliability.conftest import (
    REPO,
    THREADS,
    assert_same_outputs,
    child_env,
    cli_train_args,
    read_outputs,
    run_cli,
)
from tests.train.conftest import tiny_overrides


def wait_for(condition, child: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"the child process ended (code {child.returncode}) before the moment to kill it")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("timed out waiting for the child process")
        time.sleep(0.01)


def test_sigkill_mid_run_then_resume_matches_the_uninterrupted_run(task_root, reference_run, tmp_path):
    out = tmp_path / "killed"
    args = cli_train_args(tiny_overrides(task_root, out))
    threads = THREADS  # as the reference run, so the arithmetic is the same
    with open(tmp_path / "stderr.txt", "w") as stderr:
        child = subprocess.Popen([sys.executable, "-m", "elalora_vit.cli", *args], cwd=REPO,
                                 env=child_env(threads), stdout=subprocess.DEVNULL, stderr=stderr)
        metrics = out / "metrics.jsonl"
        # after epoch 1 is checkpointed; epochs 2 and 3 (and their rounds) are still to come
        wait_for(lambda: (out / "checkpoint.pt").exists() and metrics.exists() and metrics.read_text().strip(), child)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    assert not (out / "result.json").exists()
    checkpoint = out / "checkpoint.pt"
    killed_after = load_checkpoint(checkpoint)["epoch"]
    # killed before the last epoch ended (3 epochs): the resumed run has epochs left to run
    assert killed_after in (1, 2), f"the kill came after epoch {killed_after}: nothing was left to resume"
    # what a kill can leave besides: a half-written temp checkpoint, a half-written metrics line
    (out / ".checkpoint.pt.tmp-999999").write_bytes(checkpoint.read_bytes()[:1000])
    with open(metrics, "a") as f:
        f.write('{"epoch": 2, "step": 8, "train_lo')

    resumed = run_cli([*args, "--resume"], threads=threads)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    outputs = read_outputs(out)
    assert_same_outputs(outputs, read_outputs(reference_run))
    assert len(outputs["history"]) >= 2


CHECKPOINT_WRITER = """
import io, sys, time
import torch
from elalora_vit.train import checkpoint

path, die_in = sys.argv[1], int(sys.argv[2])
real_save = torch.save

def save(obj, f):
    buffer = io.BytesIO()
    real_save(obj, buffer)
    data = buffer.getvalue()
    if obj["generation"] == die_in:  # half of this checkpoint reaches the disk, then the kill
        f.write(data[: len(data) // 2])
        f.flush()
        print("writing", flush=True)
        time.sleep(600)
    f.write(data)

if die_in:
    checkpoint.torch.save = save
payload = torch.arange(1_000_000, dtype=torch.float32)
generation = 0
while True:
    generation += 1
    checkpoint.save_checkpoint(path, {"generation": generation, "payload": payload + generation})
    print("saved", generation, flush=True)
"""


def start_writer(path, die_in: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHECKPOINT_WRITER, str(path), str(die_in)], cwd=REPO,
                            env=child_env(), stdout=subprocess.PIPE, text=True)


def test_kill_during_a_checkpoint_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writer = start_writer(path, die_in=3)
    assert [writer.stdout.readline().strip() for _ in range(3)] == ["saved 1", "saved 2", "writing"]
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)

    state = load_checkpoint(path)
    assert state["generation"] == 2 and torch.equal(state["payload"], torch.arange(1_000_000.0) + 2)
    partial = tmp_path / f".checkpoint.{writer.pid}.tmp.pt"
    assert partial.is_file() and 0 < partial.stat().st_size < path.stat().st_size
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(partial)
    save_checkpoint(path, {"generation": 3})  # the next write is unaffected by the leftover
    assert load_checkpoint(path)["generation"] == 3


def test_kill_at_a_random_moment_of_back_to_back_writes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    writer = start_writer(path, die_in=0)
    assert writer.stdout.readline().strip() == "saved 1"
    time.sleep(torch.rand(()).item() * 0.5)  # wherever that lands: in torch.save, fsync or rename
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=60)
    state = load_checkpoint(path)
    assert torch.equal(state["payload"], torch.arange(1_000_000.0) + state["generation"])
