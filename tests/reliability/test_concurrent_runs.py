"""Two processes on one folder: every run has one owner (its folder lock), so two sweeps
started together train each run exactly once and end with the files of one sweep, and a
second ``train`` on a folder in use stops without touching it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path


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
