"""Two processes on one folder: every run has one owner (its folder lock), so two sweeps
started together train each run exactly once and end with the files of one sweep, and a
second ``train`` on a folder in use stops without touching it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import torch


from elalora_vit.cli import main
from elalora_vit.storage.lock import LOCK_NAME, FolderLock
from elalora_vit.sweep import plan_sweep, run_sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_sweep import TASK_NAMES, TINY, cli_set_flags, data_root, table_without_wall_time  # noqa: E402,F401

REPO = Path(__file__).resolve().parents[2]
TASKS = TASK_NAMES  # the tasks of test_sweep's data_root fixture, used here too
METHODS = ("elalora", "lora")
SEEDS = ("0", "1")
STARTED = re.compile(r"\] (\S+/seed\d+): (?:starting|resuming from its checkpoint)")


def _sweep_command(output: Path, data_root: Path) -> list[str]:
    return [sys.executable, "-m", "elalora_vit.cli", "vtab-sweep", "--tasks", *TASKS, "--methods", *METHODS,
            "--seeds", *SEEDS, "--output", str(output), "--no-progress", *cli_set_flags(data_root)]


def test_two_sweeps_on_one_folder_train_every_run_once_and_match_one_sweep(tmp_path, data_root):
    reference = tmp_path / "reference"
    plans = plan_sweep(TASKS, METHODS, [int(s) for s in SEEDS], output=reference,
                       overrides={**TINY, "data.data_dir": str(data_root)})
    assert run_sweep(plans, report_dir=reference).ok

    shared = tmp_path / "shared"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    processes = [subprocess.Popen(_sweep_command(shared, data_root), cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    started = [name for out in outputs for name in STARTED.findall(out)]
    names = sorted(f"{t}/{m}/seed{s}" for t in TASKS for m in METHODS for s in SEEDS)
    assert sorted(started) == names, outputs  # every run trained, none twice
    assert table_without_wall_time(shared) == table_without_wall_time(reference)
    for out in outputs:  # whatever one process skipped, it says so
        assert re.search(r"\d+ runs: \d+ trained, \d+ already done(, \d+ running elsewhere)?, 0 failed", out), out


def test_train_on_a_folder_in_use_stops_and_leaves_it_untouched(tmp_path, data_root, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1}\n')
    before = {p: p.read_bytes() for p in run.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom elalora_vit.storage.lock import LOCK_NAME, FolderLock\n"
        "lock = FolderLock(sys.argv[1], 'training').acquire()\nprint('held', flush=True)\ntime.sleep(60)"), str(run)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        code = main(["train", "--task", "dtd", "--output", str(run), "--overwrite", *cli_set_flags(data_root)])
        err = capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert code != 0
    assert f"{run} is in use by process {holder.pid}" in err and "(training)" in err, err
    after = {p: p.read_bytes() for p in run.iterdir() if p.name != LOCK_NAME}
    assert after == before  # --overwrite deleted nothing
    FolderLock(run).acquire().release()  # and the dead holder's lock is free


def _hold(folder: Path) -> subprocess.Popen:
    """A process holding ``folder``'s lock until killed (started once it holds it)."""
    folder.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom elalora_vit.storage.lock import FolderLock\n"
        "lock = FolderLock(sys.argv[1], 'training').acquire()\nprint('held', flush=True)\ntime.sleep(300)"),
        str(folder)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_multi_process_sweep_skips_a_run_held_elsewhere_on_every_process(tmp_path, data_root):
    """Under torchrun only the main process takes a run's lock; what it finds (held elsewhere,
    done) decides for all processes, so they skip and train the same runs together. Were the
    other process left to decide alone, it would train the held run while the main one trains
    the next, their gradients averaged across two runs: the next run would differ from the
    same run trained alone."""
    from safetensors.torch import load_file

    from tests.reliability.conftest import run_torchrun

    def sweep(output: Path, *seeds: str) -> list[str]:
        return ["-m", "elalora_vit.cli", "vtab-sweep", "--tasks", "dtd", "--methods", "elalora", "--seeds", *seeds,
                "--output", str(output), "--no-progress", *cli_set_flags(data_root)]

    alone = run_torchrun(sweep(tmp_path / "alone", "1"), tmp_path)
    assert alone.returncode == 0, alone.stderr[-3000:]
    held = tmp_path / "shared" / "dtd" / "elalora" / "seed0"
    holder = _hold(held)
    try:
        done = run_torchrun(sweep(tmp_path / "shared", "0", "1"), tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "dtd/elalora/seed0: running elsewhere" in done.stderr + done.stdout
    assert sorted(p.name for p in held.iterdir()) == [LOCK_NAME]  # untouched
    ours = load_file(str(tmp_path / "shared" / "dtd" / "elalora" / "seed1" / "adapter.safetensors"))
    reference = load_file(str(tmp_path / "alone" / "dtd" / "elalora" / "seed1" / "adapter.safetensors"))
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)
    # and both were real two-process runs: each step took a batch per process
    import json
    import math

    images = len((data_root / "dtd" / "train800val200.txt").read_text().splitlines())
    steps = json.loads((tmp_path / "shared" / "dtd" / "elalora" / "seed1" / "result.json").read_text())["steps"]
    assert steps == 2 * math.ceil(images / (2 * 16))  # 2 epochs of batch 16 per process


def test_a_multi_process_train_on_a_held_folder_stops_every_process_at_once(tmp_path, data_root):
    from tests.reliability.conftest import run_torchrun

    run = tmp_path / "run"
    holder = _hold(run)
    try:
        done = run_torchrun(["-m", "elalora_vit.cli", "train", "--task", "dtd", "--output", str(run), "--no-progress",
                             *cli_set_flags(data_root)], tmp_path, timeout=120)
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode != 0
    # both processes stop with the same one-line error, before either builds anything
    assert done.stderr.count(f"{run} is in use by process {holder.pid}") == 2, done.stderr[-3000:]
    assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]
