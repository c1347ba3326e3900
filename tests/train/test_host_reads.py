"""A training step of `elalora-vit train` reads no device value on the host: its finite
check, optimizer skip, allocator scores and loss stay on the device, and the loop reads the
losses and skip flags of many steps at once (``READ_EVERY``). Each read inside a step would
stall a GPU's queue every step."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import dispatch  # noqa: E402


def test_a_train_step_reads_no_device_value():
    assert dispatch.host_syncs_per_train_step() == {}
