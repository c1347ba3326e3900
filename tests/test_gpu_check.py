"""The prepared GPU check runs end to end: ``QUICK=1 bash benchmarks/gpu_check.sh`` (its
CPU smoke mode, tiny sizes) finishes every step and prints what the GPU run is for: the
train runs' wall times and their share of step time spent getting batches."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_every_step_in_its_quick_mode(tmp_path):
    env = dict(os.environ, QUICK="1", OUT=str(tmp_path / "out"), WORK=str(tmp_path / "work"), PYTHON=sys.executable,
               OMP_NUM_THREADS="1")
    done = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "FAILED" not in log, log[-3000:]
    for run in ("first", "second", "compiled"):
        assert re.search(rf"  {run} run: [\d.]+ s wall", log), log[-3000:]
        assert re.search(rf"  {run} run: waiting on data [\d.]+% of the training steps' time", log), log[-3000:]
    assert re.search(r"from the cache: +[\d.]+ images/s", log)
    assert (tmp_path / "out" / "gpu_check.log").exists()
