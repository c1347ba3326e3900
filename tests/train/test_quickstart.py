"""The README's offline quick start, shortened to 6 of its 20 epochs."""

import json
from pathlib import Path

from elalora_vit.cli import main
from elalora_vit.train.run_figures import by_kind, rank_series, score_series

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_config_learns_and_moves_ranks(tmp_path, capsys):
    code = main([
        "train", "--config", str(ROOT / "configs/quickstart-digits.yaml"),
        "--output", str(tmp_path / "qs"), "--no-progress",
        "--set", "optim.epochs=6", "--set", "eval_every=0",
    ])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.splitlines()[-1])  # the JSON line comes last, after the summary
    assert summary["task"] == "digits" and summary["method"] == "elalora"
    assert summary["accuracy"] > 40.0  # 10 classes: chance is 10%
    result = json.loads((tmp_path / "qs" / "result.json").read_text())
    ranks = set(result["rank_pattern"].values())
    assert ranks != {4} and result["total_rank"] == 24 * 4
    assert (tmp_path / "qs" / "rank_heatmap.png").stat().st_size > 5000
    assert (tmp_path / "qs" / "adapter.safetensors").is_file()
    _check_rank_figures(tmp_path / "qs", result)


def _check_rank_figures(out, result):
    """The quick start's rank_evolution.png and importance_scores.png draw its 24 adapters
    (4 blocks x q, k, v, proj, fc1, fc2) at its rounds, which lie between the phase boundaries."""
    for name in ("rank_evolution.png", "importance_scores.png"):
        assert (out / name).stat().st_size > 5000, name
    history = json.loads((out / "rank_history.json").read_text())
    total = result["steps"]
    series = rank_series(history, result["rank_pattern"], total)
    panels = by_kind(list(series))
    assert list(panels) == ["q", "k", "v", "proj", "fc1", "fc2"]
    assert all([block for block, _ in members] == [0, 1, 2, 3] for members in panels.values())
    warmup, stabilize = round(0.15 * total), round(0.3 * total)  # the config's fractions
    assert all(warmup < r["step"] <= total - stabilize for r in history)
    assert all(steps == [0, *(r["step"] for r in history), total] for steps, _ in series.values())
    assert list(score_series(history)) == ["q", "k", "v", "proj", "fc1", "fc2"]


def test_train_help_explains_the_flags(capsys):
    try:
        main(["train", "--help"])
    except SystemExit as exit:
        assert exit.code == 0
    text = capsys.readouterr().out
    for flag in ("--task", "--method", "--rank", "--checkpoint", "--no-pretrained", "--resume", "--set", "--precision"):
        assert flag in text


def test_bad_flags_give_one_line_errors(tmp_path, capsys):
    assert main(["train", "--task", "imagenet", "--output", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown task 'imagenet'" in err.lower() or "imagenet" in err
    assert "Traceback" not in err
    assert main(["train", "--set", "optim.lr=-1", "--output", str(tmp_path / "y")]) == 2
    assert "'optim.lr'" in capsys.readouterr().err
