"""A run's folder across its life: an interrupted or finished run is never overwritten
by accident, --resume without a checkpoint says so, a finished run refuses new
settings, and the end of a run reports the final top-1 everywhere the same."""

from __future__ import annotations

import json
import logging

import pytest

from elalora_vit.core import RoundRecord
from elalora_vit.train import TrainingError, load_config, train
from elalora_vit.train.summary import summary_lines
from tests.train.conftest import tiny_overrides


def _cfg(root, out, **extra):
    return load_config(None, tiny_overrides(root, out, **{"optim.epochs": 2, **extra}))


def _snapshot(out):
    return {name: (out / name).read_bytes() for name in ("checkpoint.pt", "metrics.jsonl")}


def test_an_interrupted_run_is_not_overwritten_without_resume_or_overwrite(folder_root, tmp_path):
    out = tmp_path / "run"
    train(_cfg(folder_root, out), stop_after_epoch=1)
    before = _snapshot(out)
    with pytest.raises(TrainingError, match="unfinished run.*--resume.*--overwrite"):
        train(_cfg(folder_root, out))
    assert _snapshot(out) == before, "the refused run must not touch the folder"

    result = train(_cfg(folder_root, out), overwrite=True)  # explicitly: start afresh
    metrics = (out / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and result["steps"] == 2 * 5
    with pytest.raises(TrainingError, match="--resume.*--overwrite"):
        train(_cfg(folder_root, out), resume=True, overwrite=True)


def test_resume_without_a_checkpoint_says_so_and_starts_fresh(folder_root, tmp_path, caplog):
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        result = train(_cfg(folder_root, out), resume=True)
    assert any("nothing to resume" in r.getMessage() and "fresh run" in r.getMessage() for r in caplog.records)
    assert result["epochs"] == 2 and (out / "result.json").exists()


def test_resume_of_a_finished_run_refuses_new_settings(folder_root, tmp_path):
    out = tmp_path / "run"
    first = train(_cfg(folder_root, out))
    saved = (out / "result.json").read_bytes()
    assert train(_cfg(folder_root, out, progress=True), resume=True) == first  # same settings: the result again
    with pytest.raises(TrainingError, match=r"finished run.*optim\.epochs: 2 -> 5.*--output") as err:
        train(_cfg(folder_root, out, **{"optim.epochs": 5, "method": "lora"}), resume=True)
    assert "method: 'elalora' -> 'lora'" in str(err.value)
    with pytest.raises(TrainingError, match="finished run.*--overwrite"):
        train(_cfg(folder_root, out))
    assert (out / "result.json").read_bytes() == saved


def test_the_end_of_a_run_reports_one_final_accuracy(folder_root, tmp_path, capsys):
    out = tmp_path / "run"
    result = train(_cfg(folder_root, out, progress=True))  # no evaluation before the final one
    bar = capsys.readouterr().err
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["eval_acc"] == result["accuracy"] and last["epoch"] == 2
    assert bar.rsplit("acc=", 1)[1].startswith(f"{result['accuracy']:.1f}"), "the bar must end on the final top-1"
    assert result["best_epoch"] == 2
    assert result["ranks_moved"] == result["health"]["ranks_moved_net"] <= result["ranks_moved_gross"]

    text = "\n".join(summary_lines(result))
    assert f"top-1 {result['accuracy']:.2f}%" in text and "eurosat / elalora" in text
    assert f"{result['trainable_params']:,} trainable parameters" in text
    assert f"total rank {result['total_rank']}" in text and f"in {result['rounds']} rounds" in text
    assert str(out) in text

    # how long the steps took and how much of it went to getting batches, per epoch and for the run
    lines = [json.loads(m) for m in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(m["steps_s"] > m["data_s"] > 0 for m in lines)
    share = sum(m["data_s"] for m in lines) / sum(m["steps_s"] for m in lines)
    assert result["data_wait_share"] == pytest.approx(share, abs=1e-4) and 0 < share < 1
    assert f"(getting batches: {100 * result['data_wait_share']:.1f}% of the steps' time)" in text


def test_a_rank_pruned_and_regrown_in_one_round_is_no_move():
    record = RoundRecord(step=10, b=3, pruned=["a", "b", "c"], expanded=["a", "d", "d"])
    assert record.net_moved() == 2  # b -> d, c -> d; a lost one and got one back
    summary = summary_lines({"task": "t", "method": "elalora", "seed": 0, "accuracy": 50.0, "eval_split": "test",
                             "trainable_params": 10, "total_rank": 8, "rounds": 4, "ranks_moved": 51,
                             "ranks_moved_gross": 54, "output_dir": "x", "health": {"warnings": ["w!"]}})
    text = "\n".join(summary)
    assert "51 ranks moved in 4 rounds (54 counting the 3 pruned and re-grown" in text
    assert "warning: w!" in text


def test_the_ctrl_c_line_names_the_command_that_continues():
    from elalora_vit.cli import stopped_line
    from elalora_vit.train.errors import RunInterrupted

    stop = RunInterrupted("out", 3, 2)
    assert stopped_line("train", ["train", "--task", "dtd", "--overwrite"], stop) == (
        "stopped during epoch 3; last checkpoint epoch 2; continue with `elalora-vit train --task dtd --resume`")
    assert stopped_line("train", ["train", "--resume"], RunInterrupted("out", None, None)) == (
        "stopped before training started; no checkpoint yet; continue with `elalora-vit train --resume`")
    line = stopped_line("vtab-sweep", ["vtab-sweep", "--tasks", "dtd"], stop)
    assert line.startswith("stopped during epoch 3; last checkpoint epoch 2; continue with `elalora-vit vtab-sweep --tasks dtd`")


def test_help_documents_resume_overwrite_and_dry_run(capsys):
    from elalora_vit.cli import main

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "--dry-run" in text
    assert "with no checkpoint there, say so and start a fresh run" in text
    assert "never overwritten without --resume or --overwrite" in text and "exit code 130" in text
