"""Shared pieces of the reliability tests: a tiny folder task, tiny runs, and running the
command line in a child process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.train.conftest import tiny_overrides, write_folder_task

REPO = Path(__file__).resolve().parents[2]
# Torch threads of the reference run and of every run compared with it bit for bit: the
# thread count changes how CPU kernels split their reductions, so 1 and 2 threads give
# results that differ in the last bits (tests/conftest.py sets 1 for every other test).
THREADS = 2


def child_env(threads: int = 1) -> dict[str, str]:
    """Environment for child processes: this checkout importable, ``threads`` threads each
    (the machine is shared)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = str(threads)
    return env


def cli_train_args(overrides: dict) -> list[str]:
    """``elalora-vit train`` arguments equivalent to the dotted ``overrides`` (values as JSON, which is YAML)."""
    args = ["train"]
    for key, value in overrides.items():
        if key == "progress":
            if not value:
                args.append("--no-progress")
            continue
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def run_cli(args: list[str], threads: int = 1, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "elalora_vit.cli", *args],
        cwd=REPO,
        env=child_env(threads),
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


# ``torchrun --standalone --nproc_per_node 2``: two processes on this machine, a free port.
# (``accelerate launch --cpu --num_processes 2`` starts a single process unless mpirun is used.)
LAUNCH = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def run_torchrun(args: list[str], folder: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``torchrun`` with two processes running ``args``, its output read back as text.

    A process left waiting in a collective its peer never joins hangs rather than fails.
    Then torchrun is stopped (it stops its workers, where ``subprocess.run``'s timeout
    would kill torchrun alone and leave the workers running) and the test fails with the
    output's tail.  Output goes to files in ``folder``, not pipes, so nothing waits on a
    pipe a stray worker still holds.
    """
    out_path, err_path = folder / "torchrun.out", folder / "torchrun.err"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        launcher = subprocess.Popen([*LAUNCH, *args], cwd=REPO, env=child_env(), stdout=out, stderr=err)
        try:
            launcher.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            launcher.terminate()
            try:
                launcher.wait(timeout=60)
            except subprocess.TimeoutExpired:
                launcher.kill()
                launcher.wait()
            pytest.fail(f"the processes hung for {timeout:.0f} s (one waits in a collective the other never "
                        "joined):\n" + err_path.read_text()[-3000:])
    return subprocess.CompletedProcess(launcher.args, launcher.returncode, out_path.read_text(), err_path.read_text())


@pytest.fixture(scope="session")
def task_root(tmp_path_factory) -> Path:
    """A 4-class folder task: 24 + 6 training images, 16 test images."""
    return write_folder_task(tmp_path_factory.mktemp("vtab"), train=24, test=16)


@pytest.fixture(scope="session")
def reference_run(task_root, tmp_path_factory) -> Path:
    """The output folder of an uninterrupted, clean run trained in this process: tiny ViT
    (depth 1), 3 epochs of 4 steps, ElaLoRA rounds every 2 steps after warm-up."""
    from elalora_vit.train import load_config, train

    torch.set_num_threads(THREADS)
    out = tmp_path_factory.mktemp("reference") / "run"
    train(load_config(None, tiny_overrides(task_root, out)))
    return out


@pytest.fixture
def reference_threads():
    """Run this test's in-process training with the reference run's thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield THREADS
    torch.set_num_threads(before)


def read_outputs(out: Path) -> dict:
    """What a finished run leaves that must not depend on interruptions: the result, the
    round history, the adapter tensors, and the metrics without wall-clock times."""
    from safetensors.torch import load_file

    result = json.loads((out / "result.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {
        "result": {k: v for k, v in result.items() if k not in ("wall_time_s", "data_wait_share", "output_dir")},
        "history": json.loads((out / "rank_history.json").read_text()),
        "adapter": load_file(str(out / "adapter.safetensors")),
        "metrics": [{k: v for k, v in m.items() if k not in ("time_s", "steps_s", "data_s")} for m in metrics],
    }


def assert_same_outputs(a: dict, b: dict) -> None:
    assert a["result"] == b["result"]
    assert a["history"] == b["history"]
    assert a["metrics"] == b["metrics"]
    assert a["adapter"].keys() == b["adapter"].keys()
    for name in a["adapter"]:
        assert torch.equal(a["adapter"][name], b["adapter"][name]), name
