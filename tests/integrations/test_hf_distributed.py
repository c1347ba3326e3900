"""HF ``Trainer`` + ``ElaLoRACallback`` under DDP: every process makes the same rank
decisions and holds the same model, and a checkpoint taken under DDP resumes to them.

Two CPU processes (gloo) run tests/integrations/hf_ddp_worker.py under ``torchrun``; each
is fed its own half of every step's samples, and one of them scores the ranks differently
(its scores are negated), as a process whose scores diverged would.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from tests.integrations import hf_ddp_worker  # noqa: E402
from tests.integrations.test_hf import STEPS  # noqa: E402
from tests.reliability.conftest import REPO, run_torchrun  # noqa: E402

WORKER = REPO / "tests" / "integrations" / "hf_ddp_worker.py"


@pytest.fixture(scope="module")
def processes(tmp_path_factory) -> tuple[dict, dict]:
    """What each of the two processes recorded (see hf_ddp_worker.py)."""
    dumps = tmp_path_factory.mktemp("hf_ddp")
    # About 15 s alone on two cores; a hang (a process waiting in a collective the other
    # never joined) stops torchrun and fails the test.
    done = run_torchrun([str(WORKER), str(dumps), "--skew-scores-on", "1"], dumps, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    p0, p1 = (torch.load(dumps / f"process{r}.pt", weights_only=True) for r in (0, 1))
    assert p0["world"] == p1["world"] == 2
    return p0, p1


def _rows(batch: torch.Tensor) -> list:
    return sorted(map(tuple, batch.tolist()))


def _decided(run: dict) -> list:
    return [(r["step"], r["pruned"], r["expanded"]) for r in run["history"]]


def test_trainer_processes_whose_scores_differ_make_identical_decisions(processes):
    p0, p1 = (p["full"] for p in processes)
    assert p0["wrapped"] == p1["wrapped"] == "DistributedDataParallel"
    assert p0["step_count"] == p1["step_count"] == STEPS
    # each process its own data...
    assert len(p0["batches"]) == len(p1["batches"]) == STEPS
    assert all(not set(_rows(a)) & set(_rows(b)) for a, b in zip(p0["batches"], p1["batches"]))
    # ...and its own scores at every round...
    assert len(p0["local_scores"]) == len(p1["local_scores"]) >= 3
    for a, b in zip(p0["local_scores"], p1["local_scores"]):
        finite = torch.isfinite(a)
        assert not torch.equal(a[finite], b[finite])
    # ...yet the same rounds, prunes and growths, rank pattern and tensors (bit for bit)
    decided = _decided(p0)
    assert any(pruned for _, pruned, _ in decided) and any(grown for _, _, grown in decided)
    assert p0["history"] == p1["history"]
    assert p0["rank_pattern"] == p1["rank_pattern"]
    assert p0["state"].keys() == p1["state"].keys()
    for key in p0["state"]:
        assert torch.equal(p0["state"][key], p1["state"][key]), key


def test_a_checkpoint_taken_under_ddp_resumes_to_the_same_decisions(processes):
    for p in processes:
        full, resumed = p["full"], p["resumed"]
        assert resumed["step_count"] == STEPS and len(resumed["batches"]) == STEPS - hf_ddp_worker.CHECKPOINT_STEP
        assert any(step > hf_ddp_worker.CHECKPOINT_STEP for step, _, _ in _decided(full))
        assert resumed["history"] == full["history"]
        for key in full["state"]:
            torch.testing.assert_close(resumed["state"][key], full["state"][key], rtol=1e-4, atol=1e-5, msg=key)
    # Without the skew, DDP's averaged gradients give every process the same scores.
    a, b = (p["resumed"]["local_scores"] for p in processes)
    assert len(a) == len(b) >= 1 and all(torch.equal(x, y) for x, y in zip(a, b))


def test_two_processes_decide_as_one_process_on_both_shards(processes, tmp_path):
    """The regulariser reaches the loss through DDP's wrapper once per step: two processes
    on half a batch each decide as one process on the whole batch. (Trainer's default
    multiplies BERT's loss by the number of processes, so this run turns that off.)"""
    torch.set_num_threads(1)
    one = hf_ddp_worker.train(tmp_path / "one", per_device_train_batch_size=16)
    p0, p1 = (p["one_process_recipe"] for p in processes)
    assert [sorted(_rows(a) + _rows(b)) for a, b in zip(p0["batches"], p1["batches"])] == [
        _rows(batch) for batch in one["batches"]
    ]
    assert len(one["history"]) >= 3
    assert _decided(p0) == _decided(p1) == _decided(one)
    assert p0["rank_pattern"] == one["rank_pattern"]
