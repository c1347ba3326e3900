"""The README's offline quick start, shortened to 6 of its 20 epochs."""

import json
from pathlib import Path

from elalora_vit.cli import main

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
