"""The score summaries rounds record for importance_scores.png (core/score_summary.py)."""

import math
from collections import Counter

import pytest
import torch

from elalora_vit.core import RoundRecord
from elalora_vit.core.score_summary import QUANTILE_LEVELS, adapter_kind, summarize_scores
from tests.core.helpers import TOTAL, run, setup

NAMES = ["blocks.0.attn.qkv.q", "blocks.0.attn.qkv.v", "blocks.1.attn.qkv.q"]


def test_summary_separates_pruned_new_and_kept_ranks_by_kind():
    scores = torch.tensor([[1.0, 2.0, 3.0, 9.0], [5.0, 6.0, 7.0, 9.0], [0.5, 4.0, 8.0, 9.0]])
    masks = torch.tensor([[True, True, True, False], [True, True, False, False], [True, True, True, True]])
    summary = summarize_scores(scores, masks, NAMES, pruned=[(0, 0), (2, 0)], previously_grown=[(1, 1), (0, 3)])
    assert summary["pruned"] == [[NAMES[0], 0, 1.0], [NAMES[2], 0, 0.5]]
    assert summary["new"] == [[NAMES[1], 1, 6.0]]  # (0, 3) is no longer active
    assert summary["quantile_levels"] == list(QUANTILE_LEVELS)
    # kept q ranks: 2, 3 of block 0 and 4, 8, 9 of block 1
    assert summary["kept"]["q"] == {"count": 5, "quantiles": [2.0, 3.0, 4.0, 8.0, 9.0]}
    assert summary["kept"]["v"] == {"count": 1, "quantiles": [5.0] * 5}


def test_a_rank_grown_then_pruned_counts_as_pruned():
    scores, masks = torch.ones(1, 2), torch.ones(1, 2, dtype=torch.bool)
    summary = summarize_scores(scores, masks, NAMES[:1], pruned=[(0, 1)], previously_grown=[(0, 1)])
    assert summary["new"] == [] and [s[1] for s in summary["pruned"]] == [1]


def test_kind_is_the_last_name_part():
    assert [adapter_kind(n) for n in ("blocks.3.attn.qkv.v", "blocks.0.attn.proj", "encoder.layer.2.query")] == [
        "v", "proj", "query"]


@pytest.fixture(scope="module")
def history():
    model, opt, alloc, cfg = setup()
    run(model, opt, alloc, cfg, 0, TOTAL)
    return [r.to_dict() for r in alloc.history]


def test_every_round_records_the_scores_it_decided_on(history):
    assert len(history) >= 4
    previous_grown = []
    for record in history:
        scores = record["scores"]
        assert Counter(name for name, _, _ in scores["pruned"]) == Counter(record["pruned"])
        assert Counter(name for name, _ in scores["grown"]) == Counter(record["expanded"])
        assert set(scores["kept"]) == {"q", "k", "v", "proj", "fc1", "fc2"}
        active = sum(k["count"] for k in scores["kept"].values()) + len(scores["pruned"]) + len(scores["new"])
        assert active == 12 * 4  # every active rank before the round, once
        pruned_slots = {(n, s) for n, s, _ in scores["pruned"]}
        assert {(n, s) for n, s, _ in scores["new"]} == {tuple(g) for g in previous_grown} - pruned_slots
        for kept in scores["kept"].values():
            assert kept["quantiles"] == sorted(kept["quantiles"]) and all(math.isfinite(q) for q in kept["quantiles"])
        previous_grown = scores["grown"]


def test_history_of_an_older_version_still_loads():
    model, opt, alloc, cfg = setup()
    state = alloc.state_dict()
    state["history"] = [{"step": 7, "b": 4, "pruned": ["a"], "expanded": ["b"], "shortfall": 0, "rank_pattern": {}}]
    alloc.load_state_dict(state)
    assert alloc.history == [RoundRecord(step=7, b=4, pruned=["a"], expanded=["b"])]
    assert alloc._grown_last_round() == []
