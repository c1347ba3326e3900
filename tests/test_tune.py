"""vtab-tune end to end on generated folder tasks (tiny ViT, 2 tasks, ElaLoRA, 2 LRs,
2 seeds): stage 1 cannot read test, choices come from val200, a killed run resumes
without repeating finished runs; and bad input is refused before any run."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from elalora_vit.cli import main
from elalora_vit.core.config import ConfigError
from elalora_vit.sweep.tune import choose, load_search_space, plan_stage2, plan_tune, run_tune
from tests.test_sweep import REPO, TINY, cli_set_flags, write_task

TASKS = ("dtd", "eurosat")
METHODS = ("elalora",)
LRS = [0.001, 0.05]


@pytest.fixture(autouse=True)
def _one_thread(_few_threads):
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def data_root(tmp_path) -> Path:
    for task in TASKS:
        write_task(tmp_path / "data", task)
    return tmp_path / "data"


@pytest.fixture
def space(tmp_path) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump({"default": {"optim.lr": LRS}}))
    return path


def hide_test_split(root: Path) -> None:
    """Make every task's test split unreadable: a folder where test.txt was, no test images."""
    for task in TASKS:
        folder = root / task
        (folder / "test.txt").rename(folder / "hidden-test.txt")
        (folder / "test.txt").mkdir()  # reading it raises IsADirectoryError, even for root
        (folder / "images" / "test").rename(folder / "hidden-test-images")


def restore_test_split(root: Path) -> None:
    for task in TASKS:
        folder = root / task
        (folder / "test.txt").rmdir()
        (folder / "hidden-test.txt").rename(folder / "test.txt")
        (folder / "hidden-test-images").rename(folder / "images" / "test")


def tune_args(output: Path, space: Path, data_root: Path) -> list[str]:
    return ["vtab-tune", "--tasks", *TASKS, "--methods", *METHODS, "--seeds", "0", "1", "--search-space", str(space),
            "--output", str(output), "--presets", "none", "--no-progress", *cli_set_flags(data_root)]


def finished(output: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in output.rglob("result.json")}


def partial(output: Path) -> list[Path]:
    return [p.parent for p in output.rglob("checkpoint.pt") if not (p.parent / "result.json").exists()]


def test_tune_end_to_end_killed_resumed_choices_from_val200(tmp_path, data_root, space):
    output = tmp_path / "tune"
    hide_test_split(data_root)
    # 1. Stage 1 from the command line, killed once two runs are done and one is half way.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "elalora_vit.cli", *tune_args(output, space, data_root), "--stage", "1"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if len(finished(output)) >= 1 and partial(output):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    log = process.communicate(timeout=60)[0].decode()
    assert process.returncode == -signal.SIGKILL, f"stage 1 was not killed mid-run:\n{log[-3000:]}"
    before = finished(output)
    assert 1 <= len(before) < 4

    # 2. Rerun (test still unreadable): finished runs are not repeated, the rest complete.
    assert main(tune_args(output, space, data_root) + ["--stage", "1"]) == 0
    after = finished(output)
    assert len(after) == 4 and all(after[p] == mtime for p, mtime in before.items())
    assert not (output / "stage2").exists()

    # 3. Stage 2 with the test split back: chosen values are the val200 argmax of stage 1.
    restore_test_split(data_root)
    assert main(tune_args(output, space, data_root) + ["--stage", "2"]) == 0
    for task in TASKS:
        for method in METHODS:
            val = {}
            for lr in LRS:
                result = json.loads((output / "stage1" / f"optim.lr={lr}" / task / method / "seed0" / "result.json").read_text())
                assert result["eval_split"] == "val200" and result["protocol"]["data.train_split"] == "train800"
                val[lr] = result["accuracy"]
            best = min((lr for lr in LRS if val[lr] == max(val.values())))  # ties: the lower LR
            chosen = yaml.safe_load((output / "chosen" / task / f"{method}.yaml").read_text())
            assert chosen["chosen"] == {"optim.lr": best} and chosen["val200_top1"] == max(val.values())
            table = (output / "chosen" / task / f"{method}.val200.md").read_text()
            assert all(f"optim.lr={lr} | {val[lr]:.2f}" in table for lr in LRS)
            for seed in (0, 1):
                run = output / "stage2" / task / method / f"seed{seed}"
                config = yaml.safe_load((run / "config.yaml").read_text())
                assert config["optim"]["lr"] == best and config["data"]["train_split"] == "train800val200"
                assert json.loads((run / "result.json").read_text())["eval_split"] == "test"
    report = (output / "stage2" / "results.md").read_text()
    assert "## Protocol" in report and "| `data.eval_split` | test |" in report


def test_choose_breaks_ties_towards_the_lower_lr_and_waits_for_every_setting(tmp_path, data_root):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"methods": {"elalora": {"optim.lr": [0.003, 0.001], "adapter.b": [4, 2]}}},
                                    sort_keys=False))
    plan = plan_tune("dtd", "elalora", [0], search_space=space, output=tmp_path / "tune", presets=None,
                     overrides={**TINY, "data.data_dir": str(data_root)})
    scores = {"optim.lr=0.003,adapter.b=4": 50.0, "optim.lr=0.003,adapter.b=2": 50.0,
              "optim.lr=0.001,adapter.b=4": 50.0, "optim.lr=0.001,adapter.b=2": None}
    for run in plan.stage1:
        if scores[run.setting] is not None:
            run.output_dir.mkdir(parents=True)
            run.files.result.write_text(json.dumps({"accuracy": scores[run.setting], "eval_split": "val200"}))
    assert choose(plan, "dtd", "elalora") is None  # one setting has no result yet
    last = next(r for r in plan.stage1 if r.setting == "optim.lr=0.001,adapter.b=2")
    last.output_dir.mkdir(parents=True)
    last.files.result.write_text(json.dumps({"accuracy": 50.0, "eval_split": "val200"}))
    assert choose(plan, "dtd", "elalora").values == {"optim.lr": 0.001, "adapter.b": 2}


def test_bad_search_spaces_are_refused_before_any_run(tmp_path):
    bad = {
        "unknown key": ({"default": {"optim.lrr": [0.1]}}, "unknown config key"),
        "empty list": ({"default": {"optim.lr": []}}, "non-empty list"),
        "not a list": ({"default": {"optim.lr": 0.1}}, "non-empty list"),
        "bad value": ({"default": {"optim.lr": [-1]}}, "optim.lr"),
        "unknown method": ({"methods": {"dora": {"optim.lr": [0.1]}}}, "'methods' must map method names"),
        "a split": ({"default": {"data.eval_split": ["test"]}}, "set by vtab-tune itself"),
    }
    for name, (content, message) in bad.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(content))
        with pytest.raises(ConfigError, match=message):
            load_search_space(path)
    assert main(["vtab-tune", "--tasks", "dtd", "--search-space", str(tmp_path / "empty list.yaml"),
                 "--output", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_another_search_space_or_seeds_under_the_same_output_is_refused(tmp_path, space, data_root):
    output = tmp_path / "tune"
    args = dict(output=output, presets=None, overrides={**TINY, "data.data_dir": str(data_root)})
    run_tune(plan_tune("dtd", "linear", [0, 1], search_space=space, **args), stage="2")  # nothing to train yet
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"default": {"optim.lr": [0.01]}}))
    with pytest.raises(ConfigError, match=r"search_space.linear: .*0.001, 0.05.* there, .*0.01.* now"):
        run_tune(plan_tune("dtd", "linear", [0, 1], search_space=other, **args), stage="2")
    with pytest.raises(ConfigError, match=r"seeds: \[0, 1\] there, \[0, 1, 2\] now"):
        run_tune(plan_tune("dtd", "linear", [0, 1, 2], search_space=space, **args), stage="2")
    run_tune(plan_tune("dtd", "linear", [0, 1], search_space=space, output=tmp_path / "elsewhere",
                     presets=None, overrides=args["overrides"]), stage="2")  # another --output is fine
    shutil.rmtree(output)


def test_budget_match_sets_loras_stage2_rank_from_elaloras_parameters(tmp_path, data_root, space):
    from elalora_vit.train import load_config
    from elalora_vit.train.methods import setup_method, trainable_parameter_count
    from elalora_vit.vit import create_backbone

    overrides = {**TINY, "data.data_dir": str(data_root)}
    plan = plan_tune("dtd", "elalora lora", [0, 1], search_space=space, output=tmp_path / "tune", presets=None,
                     overrides=overrides, budget_match=True)
    real = load_config(None, {**overrides, "data.task": "dtd", "method": "lora", "adapter.rank": 3})
    model = create_backbone(real.model.name, 47, pretrained=False, **real.model.kwargs)  # dtd: 47 classes
    setup_method(model, real, total_steps=10)
    at_rank_3 = trainable_parameter_count(model)
    for run in plan.stage1:  # stage 1 "done": ElaLoRA's chosen run has LoRA-at-rank-3's parameters, plus a few
        run.output_dir.mkdir(parents=True)
        accuracy = 60.0 if "0.05" in run.setting else 50.0
        run.files.result.write_text(json.dumps({"accuracy": accuracy, "eval_split": "val200",
                                                "trainable_params": at_rank_3 + 7 if run.method == "elalora" else 1}))
    stage2, waiting = plan_stage2(plan)
    assert not waiting
    lora = [r for r in stage2 if r.method == "lora"]
    assert len(lora) == 2 and all(r.config.adapter.rank == 3 and r.config.optim.lr == 0.05 for r in lora)
    assert all(r.config.adapter.rank == TINY["adapter.rank"] for r in stage2 if r.method == "elalora")
    chosen = yaml.safe_load((tmp_path / "tune" / "chosen" / "dtd" / "lora.yaml").read_text())
    assert chosen["budget_match"] == {"adapter.rank": 3, "elalora_trainable_params": at_rank_3 + 7,
                                      "lora_trainable_params": at_rank_3}
    with pytest.raises(ConfigError, match="select both methods"):
        plan_tune("dtd", "lora", [0], search_space=space, output=tmp_path / "x", presets=None, budget_match=True)


def test_dry_run_lists_both_stages_checks_data_and_writes_nothing(tmp_path, data_root, space, capsys):
    output = tmp_path / "tune"
    args = tune_args(output, space, data_root) + ["--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "elalora: 2: optim.lr=0.001; optim.lr=0.05" in out
    assert "4 runs (0 done, 0 partial, 0 failed, 4 new)" in out  # stage 1: 2 tasks x 2 settings, seed 0
    assert "0 of 4 runs ready, 2 task x method(s) wait for stage 1" in out
    assert "ok       dtd" in out and "ok       eurosat" in out and "PROBLEM" not in out
    assert not output.exists()  # nothing run, not even tune.json

    plan = plan_tune(TASKS, METHODS, [0, 1], search_space=space, output=output, presets=None,
                     overrides={**TINY, "data.data_dir": str(data_root)})
    for run in plan.stage1:  # stage 1 "done": lr 0.05 wins on both tasks
        run.output_dir.mkdir(parents=True)
        run.files.result.write_text(json.dumps({"accuracy": 60.0 if "0.05" in run.setting else 50.0,
                                                "eval_split": "val200"}))
    assert main(args + ["--stage", "2"]) == 0
    out = capsys.readouterr().out
    assert "4 of 4 runs ready" in out and "stage 1 (" not in out
    assert re.search(rf"new +dtd/elalora/seed1 +{re.escape(str(output / 'stage2' / 'dtd'))}", out)
    assert "lr 0.05" in out and not (output / "chosen").exists()

    shutil.rmtree(data_root / "eurosat")
    assert main(args + ["--stage", "1"]) == 1
    assert "PROBLEM  eurosat" in capsys.readouterr().out
