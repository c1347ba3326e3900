"""Ctrl-C: a real ``elalora-vit train`` process sent SIGINT (or SIGTERM) prints one line saying
where it stopped and the command that continues it, exits with 130 (143), and that command works."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys

import pytest

from elalora_vit.train import load_checkpoint
from tests.reliability.conftest import REPO, child_env, cli_train_args, run_cli
from tests.reliability.test_crash_resume import wait_for
from tests.train.conftest import tiny_overrides


@pytest.mark.parametrize("sent, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_prints_where_it_stopped_and_how_to_continue(sent, code, task_root, tmp_path):
    """Ctrl-C (SIGINT), or SIGTERM from a scheduler pre-empting the job: one line, its exit code,
    and the printed command continues the run."""
    out = tmp_path / "run"
    args = cli_train_args(tiny_overrides(task_root, out, **{"optim.epochs": 8}))
    child = subprocess.Popen([sys.executable, "-m", "elalora_vit.cli", *args], cwd=REPO, env=child_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "checkpoint.pt").exists(), child)
    child.send_signal(sent)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1, stderr[-2000:]
    found = re.fullmatch(r"stopped during epoch (\d+); last checkpoint epoch (\d+); continue with `(.*)`", lines[0])
    assert found, lines[0]
    running, saved, command = int(found[1]), int(found[2]), shlex.split(found[3])
    assert running > saved and saved == load_checkpoint(out / "checkpoint.pt")["epoch"]
    assert command == ["elalora-vit", *args, "--resume"]

    resumed = run_cli(command[1:])  # the command it printed, as the user would paste it
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {out} at epoch {saved}" in resumed.stderr


def test_the_sigterm_handler_is_put_back_after_a_command():
    from elalora_vit import cli

    before = signal.getsignal(signal.SIGTERM)
    assert cli.main(["list-tasks"]) == 0
    assert signal.getsignal(signal.SIGTERM) == before
