"""SIGKILL at points a seeded generator chooses, during ``vtab-report`` and ``export``, then
the same command again: the result equals an uninterrupted one's, and nothing half-written
is ever left where a reader looks (every output is written to a temporary name, fsynced and
renamed; the report holds its folder's lock)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from elalora_vit.sweep import plan_sweep, run_sweep

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_sweep import TINY, table_without_wall_time, write_task  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("kill-points")
    for task in ("dtd", "eurosat"):
        write_task(root / "data", task)
    sweep = root / "sweep"
    runs = plan_sweep(("dtd", "eurosat"), ("elalora", "lora"), (0,), output=sweep,
                      overrides={**TINY, "data.data_dir": str(root / "data")})
    assert run_sweep(runs, report_dir=sweep).ok
    return sweep


def _killed_at(command: list[str], delay: float) -> int:
    process = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    return process.wait()


def _no_half_written(folder: Path) -> None:
    leftovers = [p for p in folder.rglob("*") if ".tmp" in p.name]
    assert not leftovers, leftovers


def test_report_killed_at_seeded_points_then_rerun_equals_the_uninterrupted_report(finished_sweep):
    reference = table_without_wall_time(finished_sweep)
    command = [sys.executable, "-m", "elalora_vit.cli", "vtab-report", str(finished_sweep)]
    rng = random.Random(2024)
    for delay in sorted(rng.uniform(0.2, 4.0) for _ in range(4)):
        _killed_at(command, delay)
        if (finished_sweep / "results.csv").exists():  # the old or the new file, never a part of one
            assert table_without_wall_time(finished_sweep) == reference
    assert subprocess.run(command, cwd=REPO, env=ENV, capture_output=True).returncode == 0
    assert table_without_wall_time(finished_sweep) == reference


def test_export_killed_at_seeded_points_then_rerun_equals_the_uninterrupted_export(finished_sweep, tmp_path):
    run = finished_sweep / "dtd" / "elalora" / "seed0"
    reference, out = tmp_path / "reference", tmp_path / "out"
    base = [sys.executable, "-m", "elalora_vit.cli", "export", str(run), "--format", "timm"]
    assert subprocess.run([*base, "--out", str(reference)], cwd=REPO, env=ENV, capture_output=True).returncode == 0
    rng = random.Random(7)
    for delay in sorted(rng.uniform(0.5, 6.0) for _ in range(3)):
        _killed_at([*base, "--out", str(out), "--overwrite"], delay)
        if out.exists():  # an export, whole: the earlier one or the new one
            assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in reference.iterdir())
    done = subprocess.run([*base, "--out", str(out), "--overwrite"], cwd=REPO, env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # killed exports' leftovers cleared
    _no_half_written(tmp_path)
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for name in files:
        assert (reference / name).read_bytes() == (out / name).read_bytes(), name


def test_an_export_killed_between_its_two_renames_gets_the_old_export_back(tmp_path):
    from elalora_vit.export.staging import staged_folder

    out = tmp_path / "exported"
    (tmp_path / ".exported.old-4242").mkdir()  # what a kill after the first rename leaves
    (tmp_path / ".exported.old-4242" / "model.safetensors").write_text("the earlier export")
    (tmp_path / ".exported.staging-abc").mkdir()  # and its staging folder
    with pytest.raises(RuntimeError):
        with staged_folder(out, overwrite=True):
            raise RuntimeError("this export fails")
    assert (out / "model.safetensors").read_text() == "the earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]
