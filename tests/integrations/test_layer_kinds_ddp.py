"""Every kind of adapted layer (Embedding, Conv1D, Conv2d, Linear) under DDP: two processes on
different batches make the same rank decisions and end with bit-identical adapters."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")


def test_every_layer_kind_decides_and_trains_identically_on_both_processes(tmp_path):
    from tests.reliability.conftest import run_torchrun

    worker = Path(__file__).with_name("layer_kinds_ddp_worker.py")
    done = run_torchrun([str(worker), str(tmp_path)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    decisions = ranks[0]["decisions"]
    assert decisions and any(pruned for _, pruned, _ in decisions), "rounds must move ranks for the test to mean anything"
    assert decisions == ranks[1]["decisions"]
    assert ranks[0]["ranks"] == ranks[1]["ranks"] and set(ranks[0]["ranks"]) == {"embed", "conv", "c_fc", "proj"}
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(value, ranks[1]["state"][key], rtol=0, atol=0, msg=key)
