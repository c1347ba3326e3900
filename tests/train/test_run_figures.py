"""rank_evolution.png and importance_scores.png of a run whose ranks move: the files,
and what they draw (the series the plots call), not their pixels."""

import json

import pytest

from elalora_vit.core.schedule import adjustment_steps
from elalora_vit.train import load_config, train
from elalora_vit.train.run_figures import (
    by_kind,
    initial_pattern,
    phase_boundaries,
    plot_importance_scores,
    plot_rank_evolution,
    rank_series,
    score_series,
)
from tests.train.conftest import tiny_overrides

KINDS = ["q", "k", "v", "proj", "fc1", "fc2"]


@pytest.fixture(scope="module", params=["elalora", "adalora"])
def finished(request, folder_root, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    cfg = load_config(None, tiny_overrides(folder_root, out, method=request.param))
    result = train(cfg)
    history = json.loads((out / "rank_history.json").read_text())
    return cfg, result, history, out


def test_both_figures_are_in_the_run_folder(finished):
    _, result, history, out = finished
    assert result["rounds"] == len(history) > 0
    for name in ("rank_evolution.png", "importance_scores.png", "rank_heatmap.png"):
        assert (out / name).stat().st_size > 5000, name


def test_rank_evolution_draws_every_adapter_at_every_round_between_the_phase_boundaries(finished, tmp_path):
    cfg, result, history, _ = finished
    total = result["steps"]  # 5 batches x 3 epochs
    core = cfg.core_config(total)
    boundaries = phase_boundaries(core, total)
    assert boundaries == {"adjustment begins": 3, "stabilisation begins": 12}  # 0.2 and 1 - 0.2 of 15 steps
    series = plot_rank_evolution(history, result["rank_pattern"], total, boundaries, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 5000
    assert series == rank_series(history, result["rank_pattern"], total)
    assert set(series) == set(result["rank_pattern"]) and len(series) == 6  # depth 1: q, k, v, proj, fc1, fc2
    round_steps = [r["step"] for r in history]
    assert set(round_steps) <= set(adjustment_steps(total, core))  # rounds fall where the schedule puts them
    assert all(3 < step <= 12 for step in round_steps)
    for name, (steps, ranks) in series.items():
        assert steps == [0, *round_steps, total]
        assert ranks[-1] == result["rank_pattern"][name]
        assert ranks[1:-1] == [r["rank_pattern"][name] for r in history]
    initial = 2 if cfg.method == "elalora" else 3  # AdaLoRA starts at 1.5 x rank
    assert all(ranks[0] == initial for _, ranks in series.values())
    assert list(by_kind(list(series))) == KINDS


def test_importance_scores_draw_each_round_per_kind(finished, tmp_path):
    _, _, history, _ = finished
    series = plot_importance_scores(history, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 5000
    assert series == score_series(history) and list(series) == KINDS
    round_steps = [r["step"] for r in history]
    for data in series.values():  # (AdaLoRA may prune every rank of a kind: no kept ranks to draw)
        assert set(data["steps"]) <= set(round_steps) and all(len(q) == 5 for q in data["kept"])
    assert sorted({step for data in series.values() for step in data["steps"]}) == round_steps
    pruned = sorted((r["step"], name) for r in history for name in r["pruned"])
    drawn = sorted((step, kind) for kind, data in series.items() for step, _ in data["pruned"])
    assert drawn == sorted((step, name.rsplit(".", 1)[-1]) for step, name in pruned)


def test_initial_pattern_undoes_the_first_round():
    history = [{"step": 5, "pruned": ["a.q"], "expanded": ["a.v"], "rank_pattern": {"a.q": 1, "a.v": 3}}]
    assert initial_pattern(history, {"a.q": 2, "a.v": 2}) == {"a.q": 2, "a.v": 2}
    assert initial_pattern([], {"a.q": 4}) == {"a.q": 4}


def test_a_history_of_an_older_version_draws_ranks_but_no_scores(tmp_path):
    old = [{"step": 5, "b": 1, "pruned": ["a.q"], "expanded": ["a.v"], "shortfall": 0, "rank_pattern": {"a.q": 1, "a.v": 3}}]
    assert plot_importance_scores(old, tmp_path / "s.png") == {} and not (tmp_path / "s.png").exists()
    series = plot_rank_evolution(old, {"a.q": 1, "a.v": 3}, 10, {"adjustment begins": 2}, tmp_path / "r.png")
    assert series == {"a.q": ([0, 5, 10], [2, 1, 1]), "a.v": ([0, 5, 10], [2, 3, 3])}


def test_heatmap_title_gives_the_final_total_rank_and_the_capacity():
    from elalora_vit.core import ElaLoRAConfig, patch_model
    from elalora_vit.train.outputs import final_ranks_title
    from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit

    model = make_tiny_vit(depth=2)
    adapters = patch_model(model, VIT_TARGETS, ElaLoRAConfig(rank=3, max_rank=5), split=QKV_SPLIT)
    layer = adapters[0].layer
    layer.rank_mask[0, 0] = False  # one rank pruned
    assert final_ranks_title("dtd / elalora", model) == "dtd / elalora: final ranks, total 35 of capacity 60"
