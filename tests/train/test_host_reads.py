"""A training step of `elalora-vit train` reads one device value on the host (the finite
check every process agrees on); each further read would stall a GPU's queue every step."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import dispatch  # noqa: E402


def test_a_train_step_reads_one_device_value():
    reads = dispatch.host_syncs_per_train_step()
    device_reads = {k: n for k, n in reads.items() if k != "optimizer-step-counter"}
    assert device_reads == {"__bool__": 1}, reads
