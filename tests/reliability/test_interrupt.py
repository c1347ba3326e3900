"""Ctrl-C and SIGTERM: the run stops after the step the signal came in, with a checkpoint of
that step; a real ``elalora-vit train`` process prints one line saying where it stopped and
the command that continues it, exits with 130 (SIGINT) or 143 (SIGTERM), and that command
ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

from elalora_vit.train import RunInterrupted, load_checkpoint, load_config, train
from elalora_vit.train import loop
from elalora_vit.stopping import StopSignals
from tests.reliability.conftest import (REPO, THREADS, assert_same_outputs, child_env, cli_train_args, read_outputs,
                                        run_cli)
from tests.reliability.test_crash_resume import wait_for
from tests.train.conftest import tiny_overrides

LONG = {"optim.epochs": 8}  # 32 steps: long enough to stop a child process while it trains


@pytest.fixture(scope="module")
def long_reference(task_root, tmp_path_factory):
    """The uninterrupted 8-epoch run, trained in this process with the children's threads."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        out = tmp_path_factory.mktemp("long-reference") / "run"
        train(load_config(None, tiny_overrides(task_root, out, **LONG)))
    finally:
        torch.set_num_threads(before)
    return read_outputs(out)


@pytest.mark.parametrize("sent, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm"])
def test_a_stop_prints_where_it_stopped_and_how_to_continue(sent, code, task_root, tmp_path, long_reference):
    """Ctrl-C (SIGINT), or SIGTERM from a scheduler pre-empting the job: one line, its exit code,
    a checkpoint of the step it stopped after, and the printed command ends as an uninterrupted run."""
    out = tmp_path / "run"
    args = cli_train_args(tiny_overrides(task_root, out, **LONG))
    child = subprocess.Popen([sys.executable, "-m", "elalora_vit.cli", *args], cwd=REPO, env=child_env(THREADS),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: (out / "checkpoint.pt").exists(), child)
    child.send_signal(sent)
    stdout, stderr = child.communicate(timeout=120)
    assert child.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("stopped")]
    assert len(lines) == 1, stderr[-2000:]
    saved = load_checkpoint(out / "checkpoint.pt")
    # almost always the signal comes during the steps: it stops after the step, saved then;
    # in the moments between epochs (metrics, the cadence's checkpoint) it stops at once
    found = re.fullmatch(r"stopped during epoch (\d+) at step (\d+) of 32; saved at step \2; continue with `(.*)`",
                         lines[0])
    if found:
        running, step, command = int(found[1]), int(found[2]), shlex.split(found[3])
        assert saved["step"] == step and saved["epoch"] == running - 1 and step < 32
        assert saved["epoch_progress"]["steps"] == step - 4 * saved["epoch"]
    else:
        found = re.fullmatch(r"stopped during epoch (\d+); last checkpoint epoch (\d+); continue with `(.*)`", lines[0])
        assert found, lines[0]
        running, command = int(found[1]), shlex.split(found[3])
        assert running > int(found[2]) == saved["epoch"]
    assert command == ["elalora-vit", *args, "--resume"]

    resumed = run_cli(command[1:], threads=THREADS)  # the command it printed, as the user would paste it
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"resumed {out}" in resumed.stderr
    assert_same_outputs(read_outputs(out), long_reference)


def _signal_at(monkeypatch, at: int, *signals: int) -> None:
    """Send this process ``signals`` when the loop is about to take step ``at`` (0-based)."""
    real = loop._train_step

    def step(state, *args, **kwargs):
        if state.step == at:
            for signum in signals:
                os.kill(os.getpid(), signum)
        return real(state, *args, **kwargs)

    monkeypatch.setattr(loop, "_train_step", step)


def test_a_stop_mid_epoch_saves_that_step_and_resumes_to_the_uninterrupted_result(
        task_root, reference_run, reference_threads, tmp_path, monkeypatch):
    """The signal comes in the middle of epoch 2 (before step 6 of 12): that step completes,
    is checkpointed with the epoch's progress, and --resume ends bit for bit as the reference."""
    out, handlers = tmp_path / "run", (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    _signal_at(monkeypatch, 5, signal.SIGTERM)
    with pytest.raises(RunInterrupted) as stop:
        train(load_config(None, tiny_overrides(task_root, out)))
    assert (stop.value.signum, stop.value.epoch, stop.value.checkpoint_step) == (signal.SIGTERM, 2, 6)
    assert stop.value.where() == "stopped during epoch 2 at step 6 of 12; saved at step 6"
    saved = load_checkpoint(out / "checkpoint.pt")
    assert (saved["epoch"], saved["step"], saved["epoch_progress"]["steps"]) == (1, 6, 2)
    assert saved["epoch_progress"]["loss_count"] == 2 and saved["epoch_progress"]["loss_sum"] > 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers  # put back

    monkeypatch.undo()
    train(load_config(None, tiny_overrides(task_root, out)), resume=True)
    assert_same_outputs(read_outputs(out), read_outputs(reference_run))


def test_ctrl_c_twice_stops_at_once(task_root, tmp_path, monkeypatch):
    """The second Ctrl-C does not wait for the step: the checkpoint on disk stays epoch 1's."""
    out = tmp_path / "run"
    _signal_at(monkeypatch, 5, signal.SIGINT, signal.SIGINT)
    with pytest.raises(RunInterrupted) as stop:
        train(load_config(None, tiny_overrides(task_root, out)))
    assert (stop.value.checkpoint_step, stop.value.checkpoint_epoch, stop.value.signum) == (None, 1, signal.SIGINT)
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 4


def _stops(*sent: int) -> bool:
    """Send this process ``sent``; whether one of them stopped it (KeyboardInterrupt)."""
    try:
        for signum in sent:
            os.kill(os.getpid(), signum)
    except KeyboardInterrupt:
        return True
    return False


def test_under_a_launcher_a_repeated_signal_is_still_one_stop(monkeypatch):
    """torchrun passes the terminal's Ctrl-C on to processes that got it already: noted once,
    no immediate stop; without a launcher the repeat stops at once."""
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "test")
    with StopSignals() as signals:
        signals.deferring = True
        assert not _stops(signal.SIGINT, signal.SIGINT, signal.SIGTERM)
        assert signals.signum == signal.SIGINT
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    with StopSignals() as signals:
        signals.deferring = True
        assert not _stops(signal.SIGINT) and signals.requested
        assert _stops(signal.SIGINT)


def test_the_signal_handlers_are_put_back_after_a_command():
    from elalora_vit import cli

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["list-tasks"]) == 0
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize("sent, code", [(signal.SIGINT, 130), (signal.SIGTERM, 128 + signal.SIGTERM)],
                         ids=["ctrl-c", "sigterm"])
def test_a_signal_stops_any_command_with_one_line_and_its_exit_code(sent, code, monkeypatch, capsys):
    """Outside training too (here list-tasks): SIGTERM stops a command as Ctrl-C does, exit 143."""
    from elalora_vit import cli
    from elalora_vit.cli import data

    def signalled(args):
        os.kill(os.getpid(), sent)
        raise AssertionError("the signal did not stop the command")

    monkeypatch.setattr(data, "_list_tasks", signalled)
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    assert cli.main(["list-tasks"]) == code
    assert capsys.readouterr().err.strip() == "elalora-vit list-tasks: stopped (Ctrl-C)"
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
