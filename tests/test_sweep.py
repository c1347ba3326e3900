"""vtab-sweep and vtab-report: planning, shards, resume after a kill, failures, the report.

Training runs use a one-block 32 px ViT on tiny generated task folders named like
real VTAB tasks, so a run takes well under a second on one CPU thread.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from elalora_vit.cli import build_parser, main
from elalora_vit.core.config import ConfigError
from elalora_vit.data import GROUPS, TASKS
from elalora_vit.sweep import (
    DEFAULT_PRESETS,
    WALL_TIME_COLUMNS,
    collect_results,
    parse_shard,
    plan_sweep,
    run_sweep,
    shard_runs,
    write_report,
)
from elalora_vit.train import train

REPO = Path(__file__).resolve().parents[1]
TASK_NAMES = ("dtd", "eurosat")  # real VTAB names (47 and 10 classes); the folders hold 4 classes
METHODS = ("elalora", "lora", "linear")
SEEDS = (0, 1)
TINY = {
    "data.source": "folder",
    "model.name": "vit_tiny_patch16_224",
    "model.pretrained": False,
    "model.kwargs": {"img_size": 32, "patch_size": 8, "depth": 1},
    "data.image_size": 32,
    "data.num_workers": 0,
    "optim.epochs": 2,
    "optim.batch_size": 16,
    "optim.warmup_epochs": 0,
    "adapter.rank": 2,
    "progress": False,
}


@pytest.fixture(autouse=True)
def _one_thread(_few_threads):
    # One thread is several times faster than two on a shared, loaded 2-core machine,
    # and the killed subprocess below computes with one thread too.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_task(root: Path, task: str, classes: int = 4, sizes=(("train800", 24), ("val200", 8), ("test", 16))) -> Path:
    """A tiny task folder whose images' colour depends on the label (so training learns something)."""
    rng = np.random.default_rng(len(task))
    folder = root / task
    lists: dict[str, list[str]] = {}
    for split, count in sizes:
        (folder / "images" / split).mkdir(parents=True)
        lists[split] = []
        for i in range(count):
            label = i % classes
            pixels = (rng.integers(0, 50, (8, 8, 3)) + label * 60).astype(np.uint8)
            relative = f"images/{split}/{i:06d}.png"
            Image.fromarray(pixels).save(folder / relative)
            lists[split].append(f"{relative} {label}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (folder / f"{split}.txt").write_text("".join(line + "\n" for line in lines))
    return folder


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vtab-1k")
    for task in TASK_NAMES:
        write_task(root, task)
    return root


def plan(output: Path, data_root: Path, tasks=TASK_NAMES, methods=METHODS, seeds=SEEDS, **kwargs):
    return plan_sweep(tasks, methods, seeds, output=output, overrides={**TINY, "data.data_dir": str(data_root)}, **kwargs)


def cli_set_flags(data_root: Path) -> list[str]:
    flags = []
    for key, value in {**TINY, "data.data_dir": str(data_root)}.items():
        flags += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return flags


def table_without_wall_time(folder: Path) -> list[dict[str, str]]:
    rows = list(csv.DictReader(io.StringIO((folder / "results.csv").read_text())))
    return [{k: v for k, v in row.items() if k not in WALL_TIME_COLUMNS} for row in rows]


def count_results(folder: Path) -> int:
    return len(list(folder.rglob("result.json")))


def partial_runs(folder: Path) -> list[Path]:
    return [p.parent for p in folder.rglob("checkpoint.pt") if not (p.parent / "result.json").exists()]


# ----------------------------------------------------------------------------- end to end
def test_killed_resumed_and_sharded_sweep_gives_the_uninterrupted_table(tmp_path, data_root, caplog):
    # 1. The reference: one uninterrupted sweep, 2 tasks x 3 methods x 2 seeds.
    reference = tmp_path / "reference"
    summary = run_sweep(plan(reference, data_root), report_dir=reference)
    assert summary.ok and len(summary.trained) == 12 and not summary.skipped
    assert summary.report == reference / "results.md"
    assert (reference / "dtd" / "elalora" / "seed1" / "result.json").is_file()

    # 2. The same sweep from the command line, killed with SIGKILL once a few runs are done
    #    and one has a checkpoint but no result.
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "elalora_vit.cli", "vtab-sweep", "--tasks", *TASK_NAMES, "--methods", *METHODS,
               "--seeds", *map(str, SEEDS), "--output", str(sweep), "--no-progress", *cli_set_flags(data_root)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if count_results(sweep) >= 3 and partial_runs(sweep):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    output = process.communicate(timeout=60)[0].decode()
    assert process.returncode == -signal.SIGKILL, f"the sweep was not killed mid-run:\n{output[-3000:]}"
    if not partial_runs(sweep):  # (rare) the run finished between the check and the kill: interrupt the next
        train(next(run for run in plan(sweep, data_root) if run.status() == "new").config, stop_after_epoch=1)
    done_before = count_results(sweep)
    assert 3 <= done_before < 12 and len(partial_runs(sweep)) == 1
    assert not (sweep / "results.csv").exists()

    # 3. The report of the partial results says what is missing.
    write_report(sweep)
    partial_md = (sweep / "results.md").read_text()
    assert "**Incomplete:**" in partial_md
    partial_rows = [r for r in table_without_wall_time(sweep) if r["level"] == "task" and r["source"] == "ours"]
    assert 1 <= len(partial_rows) <= 6
    ref_rows = {(r["task"], r["method"]): r for r in table_without_wall_time(reference) if r["level"] == "task"}
    for row in partial_rows:  # finished runs of the killed sweep match the reference seed for seed
        done_seeds = row["seeds"].split()
        ref_scores = dict(zip(ref_rows[row["task"], row["method"]]["seeds"].split(),
                              ref_rows[row["task"], row["method"]]["top1_per_seed"].split()))
        assert row["top1_per_seed"].split() == [ref_scores[s] for s in done_seeds]

    # 4. Resumed as two shards into the same folder: finished runs are skipped, the
    #    interrupted one continues from its checkpoint.
    runs = plan(sweep, data_root)
    statuses = [run.status() for run in runs]
    assert statuses.count("done") == done_before and statuses.count("partial") == 1
    interrupted = next(run for run in runs if run.status() == "partial")
    caplog.set_level(logging.INFO)
    first = run_sweep(shard_runs(runs, 1, 2), report_dir=sweep)
    second = run_sweep(shard_runs(runs, 2, 2), report_dir=sweep)
    assert first.ok and second.ok
    assert len(first.skipped) + len(second.skipped) == done_before
    assert sorted(first.trained + second.trained + first.skipped + second.skipped) == sorted(r.name for r in runs)
    assert any(f"resumed {interrupted.output_dir} at epoch 1" in m for m in caplog.messages)

    # 5. Same table as the uninterrupted sweep, apart from wall time.
    assert table_without_wall_time(sweep) == table_without_wall_time(reference)
    assert all(run.status() == "done" for run in runs)


# ----------------------------------------------------------------------------- dry run
def test_dry_run_lists_runs_status_and_folders_and_runs_nothing(tmp_path, data_root, capsys):
    output = tmp_path / "sweep"
    done = output / "dtd" / "lora" / "seed0"
    partial = output / "eurosat" / "elalora" / "seed1"
    failed = output / "eurosat" / "linear" / "seed0"
    for folder in (done, partial, failed):
        folder.mkdir(parents=True)
    (done / "result.json").write_text("{}")
    (partial / "checkpoint.pt").write_bytes(b"")
    (partial / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    (failed / "failed.json").write_text("{}")
    before = sorted(p for p in tmp_path.rglob("*"))

    code = main(["vtab-sweep", "--dry-run", "--tasks", *TASK_NAMES, "--methods", *METHODS, "--seeds", "0", "1",
                 "--output", str(output), "--shard", "1/1", *cli_set_flags(data_root)])
    printed = capsys.readouterr().out
    assert code == 0
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written
    assert "shard 1/1: 12 of 12 runs (1 done, 1 partial, 1 failed, 9 new)" in printed
    lines = {re.search(r"\w+/\w+/seed\d", line)[0]: line for line in printed.splitlines() if "/seed" in line
             and line.startswith("  ")}
    assert len(lines) == 12
    assert lines["dtd/lora/seed0"].split()[0] == "done" and str(done) in lines["dtd/lora/seed0"]
    assert "partial (epoch 1/2)" in lines["eurosat/elalora/seed1"]
    assert lines["eurosat/linear/seed0"].split()[0] == "failed"
    assert lines["dtd/elalora/seed0"].split()[0] == "new"
    assert str(DEFAULT_PRESETS / "dtd.yaml") in lines["dtd/elalora/seed0"]

    code = main(["vtab-sweep", "--dry-run", "--tasks", *TASK_NAMES, "--methods", *METHODS, "--seeds", "0", "1",
                 "--output", str(output), "--shard", "2/5", *cli_set_flags(data_root)])
    assert code == 0 and "shard 2/5: 3 of 12 runs" in capsys.readouterr().out


# ----------------------------------------------------------------------------- shards
def test_shards_are_disjoint_complete_deterministic_and_balanced(tmp_path):
    everything = plan_sweep("all", "all", [0, 1], output=tmp_path, presets=None)
    names = [run.name for run in everything]
    assert len(names) == len(set(names)) == 19 * 5 * 2
    assert names[:3] == ["cifar/elalora/seed0", "cifar/elalora/seed1", "cifar/lora/seed0"]  # table order
    assert names == [run.name for run in plan_sweep("all", "all", "1,0", output=tmp_path, presets=None)]
    for count in (1, 2, 3, 7):
        shards = [[run.name for run in shard_runs(everything, index, count)] for index in range(1, count + 1)]
        flat = [name for shard in shards for name in shard]
        assert sorted(flat) == sorted(names) and len(flat) == len(set(flat))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert [r.name for r in plan_sweep("all", "all", [0, 1], output=tmp_path, presets=None, shard="2/3")] == \
        [r.name for r in shard_runs(everything, 2, 3)]
    assert parse_shard("3/4") == (3, 4)
    for bad in ("0/2", "3/2", "1", "a/b", "1/0"):
        with pytest.raises(ConfigError, match="shard"):
            parse_shard(bad)


def test_task_method_and_seed_selection(tmp_path):
    names = lambda runs: sorted({run.task for run in runs})  # noqa: E731
    assert names(plan_sweep("structured", "lora", 0, output=tmp_path, presets=None)) == sorted(GROUPS["structured"])
    runs = plan_sweep(["cifar100", "oxford_pet", "specialized"], ["linear", "elalora"], "2 0", output=tmp_path, presets=None)
    assert names(runs) == sorted(["cifar", "oxford_iiit_pet", *GROUPS["specialized"]])
    assert {run.method for run in runs} == {"elalora", "linear"} and {run.seed for run in runs} == {0, 2}
    assert runs[0].output_dir == tmp_path / "cifar" / "elalora" / "seed0"
    with pytest.raises(ValueError, match="unknown VTAB-1k task 'imagenet'"):
        plan_sweep("imagenet", "lora", 0, output=tmp_path)
    with pytest.raises(ConfigError, match="unknown method 'dora'"):
        plan_sweep("dtd", "dora", 0, output=tmp_path)
    with pytest.raises(ConfigError, match="--seeds"):
        plan_sweep("dtd", "lora", "one", output=tmp_path)


def test_settings_are_layered_preset_then_config_then_set(tmp_path):
    presets = tmp_path / "presets"
    presets.mkdir()
    (presets / "dtd.yaml").write_text("base: " + str(REPO / "configs" / "default.yaml") +
                                      "\noptim: {lr: 0.5, epochs: 7}\nadapter: {rank: 3}\n")
    config = tmp_path / "mine.yaml"
    config.write_text("optim: {lr: 0.25}\nmodel: {kwargs: {depth: 2}}\n")
    runs = plan_sweep(["dtd", "eurosat"], "elalora", 0, output=tmp_path / "out", config=config,
                      overrides={"adapter.k": 3}, presets=presets)
    dtd, eurosat = (run.config for run in runs)
    assert (dtd.optim.lr, dtd.optim.epochs, dtd.adapter.rank, dtd.adapter.k) == (0.25, 7, 3, 3)
    assert dtd.model.kwargs == {"depth": 2} and runs[0].preset == presets / "dtd.yaml"
    assert (eurosat.optim.lr, eurosat.optim.epochs, eurosat.adapter.rank) == (0.25, 100, 8) and runs[1].preset is None
    assert (dtd.data.task, dtd.method, dtd.seed) == ("dtd", "elalora", 0)
    with pytest.raises(ConfigError, match="--tasks"):
        plan_sweep("dtd", "lora", 0, output=tmp_path, overrides={"data.task": "kitti"})
    with pytest.raises(ConfigError, match="dtd/lora/seed0.*optim.lr"):
        plan_sweep("dtd", "lora", 0, output=tmp_path, overrides={"optim.lr": -1})


def test_repository_presets_follow_the_protocol():
    files = sorted(DEFAULT_PRESETS.glob("*.yaml"))
    assert [f.stem for f in files] == sorted(task.name for task in TASKS)
    for file in files:
        text = file.read_text()
        assert "base: ../default.yaml" in text and "NOT tuned" in text and "train800 -> val200" in text
        assert "never on test" in text and "ImageNet mean/std" in text
        runs = plan_sweep(file.stem, "elalora", 0, output="runs/x")
        cfg = runs[0].config
        assert runs[0].preset == file and cfg.data.task == file.stem
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.batch_size, cfg.optim.epochs) == (1e-3, 1e-4, 64, 100)
        assert (cfg.optim.warmup_epochs, cfg.optim.lr_schedule, cfg.data.image_size) == (10, "cosine", 224)
        assert cfg.data.mean == [0.485, 0.456, 0.406] and cfg.data.std == [0.229, 0.224, 0.225]
        assert (cfg.data.train_split, cfg.data.eval_split) == ("train800val200", "test")


# ----------------------------------------------------------------------------- failures
def test_a_failing_run_is_recorded_and_the_others_go_on(tmp_path, data_root, capsys):
    output = tmp_path / "sweep"
    args = ["vtab-sweep", "--tasks", "svhn", "dtd", "--methods", "linear", "--output", str(output),
            *cli_set_flags(data_root), "--set", "optim.epochs=1"]
    assert main(args) == 1  # svhn has no data folder
    printed = capsys.readouterr().out
    assert "2 runs: 1 trained, 0 already done, 1 failed" in printed and "FAILED svhn/linear/seed0" in printed
    failure = json.loads((output / "svhn" / "linear" / "seed0" / "failed.json").read_text())
    assert failure["error_type"] == "MissingDataError" and "prepare-vtab" in failure["error"]
    assert (output / "dtd" / "linear" / "seed0" / "result.json").is_file()  # svhn comes first in table order
    markdown = (output / "results.md").read_text()
    assert "## Failed runs (1)" in markdown and "svhn/linear/seed0" in markdown and "MissingDataError" in markdown

    write_task(data_root, "svhn")  # the data arrives: the next sweep retries only the failed run
    try:
        assert main(args) == 0
        assert "2 runs: 1 trained, 1 already done, 0 failed" in capsys.readouterr().out
        assert not (output / "svhn" / "linear" / "seed0" / "failed.json").exists()
        assert "Failed runs" not in (output / "results.md").read_text()
    finally:
        import shutil

        shutil.rmtree(data_root / "svhn")


# ----------------------------------------------------------------------------- report
def fake_result(root: Path, task: str, method: str, seed: int, accuracy: float, rank: dict | None = None,
                params: int = 1000, wall: float = 10.0) -> None:
    folder = root / task / method / f"seed{seed}"
    folder.mkdir(parents=True)
    pattern = rank if rank is not None else {}
    (folder / "result.json").write_text(json.dumps({
        "task": task, "method": method, "seed": seed, "eval_split": "test", "accuracy": accuracy,
        "trainable_params": params, "total_rank": sum(pattern.values()) if pattern else None,
        "rank_pattern": pattern, "wall_time_s": wall, "model": "vit_base_patch16_224.orig_in21k", "pretrained": True,
    }))
    (folder / "config.yaml").write_text(yaml.safe_dump({"adapter": {"rank": 2}, "data": {"train_split": "train800val200"}}))


def test_report_of_partial_results(tmp_path):
    pattern = {"blocks.0.attn.qkv.q": 1, "blocks.0.attn.qkv.v": 3, "blocks.1.mlp.fc1": 2}
    for seed, (ela, lora) in enumerate([(80.0, 70.0), (82.0, 74.0)]):
        fake_result(tmp_path, "cifar", "elalora", seed, ela, pattern)
        fake_result(tmp_path, "cifar", "lora", seed, lora, {k: 2 for k in pattern})
    fake_result(tmp_path, "dtd", "elalora", 0, 60.0, pattern)
    fake_result(tmp_path, "dtd", "lora", 0, 65.0, {k: 2 for k in pattern})
    fake_result(tmp_path, "kitti", "lora", 0, 50.0, {k: 2 for k in pattern})
    fake_result(tmp_path, "kitti", "linear", 0, 40.0)
    fake_result(tmp_path, "digits", "lora", 0, 99.0)  # not a VTAB task: left out
    broken = tmp_path / "eurosat" / "full" / "seed0"
    broken.mkdir(parents=True)
    (broken / "failed.json").write_text(json.dumps({"task": "eurosat", "method": "full", "seed": 0,
                                                    "error_type": "TrainingError", "error": "20 steps | non-finite"}))

    results = collect_results(tmp_path)
    assert results.tasks == ["cifar", "dtd", "kitti"] and results.methods == ["elalora", "lora", "linear"]
    cifar = results.cell("cifar", "elalora")
    assert cifar.mean == 81.0 and cifar.std == pytest.approx(2 ** 0.5) and cifar.seeds == [0, 1]
    assert results.group_mean("elalora", "natural").value == pytest.approx(70.5)
    assert results.group_mean("lora", "structured").value == 50.0
    assert results.mean_of_groups("lora").value == pytest.approx((68.5 + 50.0) / 2)
    assert results.mean_of_groups("lora").n_tasks == 3 and not results.mean_of_groups("lora").complete
    assert results.task_mean("lora").value == pytest.approx((72 + 65 + 50) / 3)
    assert results.winners("cifar") == ["elalora"] and results.winners("kitti") == ["lora"]
    assert (results.wins("elalora"), results.wins("lora"), results.wins("linear")) == (1, 2, 0)
    assert results.delta("elalora", "lora").value == pytest.approx((9 - 5) / 2)  # natural only, both ran

    paths = write_report(tmp_path)
    assert {"csv", "markdown"} <= set(paths)
    assert (tmp_path / "group_means.png").is_file() and (tmp_path / "per_task_top1.png").is_file()
    assert (tmp_path / "rank_heatmap_elalora.png").is_file()
    assert not (tmp_path / "rank_heatmap_lora.png").exists()  # fixed ranks: a flat grid says nothing
    assert not (tmp_path / "rank_heatmap_linear.png").exists()

    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    task_rows = [r for r in rows if r["level"] == "task"]
    assert len(task_rows) == 6
    cifar_row = next(r for r in task_rows if r["task"] == "cifar" and r["method"] == "elalora")
    assert (cifar_row["n_seeds"], cifar_row["top1_mean"], cifar_row["top1_per_seed"]) == ("2", "81", "80 82")
    natural = next(r for r in rows if r["level"] == "group" and r["method"] == "lora" and r["group"] == "natural")
    assert (natural["top1_mean"], natural["n_tasks"], natural["of_tasks"]) == ("68.5", "2", "7")
    published = [r for r in rows if r["source"].startswith("published")]
    assert {r["method"] for r in published} >= {"LoRA r=8", "full fine-tuning", "linear probe"}
    assert next(r for r in published if r["method"] == "LoRA r=8" and r["level"] == "mean_of_groups")["top1_mean"] == "74.5"

    md = paths["markdown"].read_text()
    assert "**Incomplete:**" in md and "natural 2/7, specialized 0/4, structured 1/8" in md
    assert "**Uneven coverage:**" in md
    assert "| ours | lora | 68.5 (2/7) | – | **50.0 (1/8)** |" in md
    assert "| published¹ | LoRA r=8 | 79.5 | 84.6 | 59.8 | 74.5 |" in md and "ViT-B/16 in21k" in md
    assert "| natural | cifar | **81.0** ± 1.4 (2) | 72.0 ± 2.8 (2) | – | elalora | +9.0 |" in md
    assert "**ElaLoRA vs LoRA:** +2.0 points" in md and "better on 1, worse on 1, tied on 0" in md
    assert "**Tasks won:** lora 2, elalora 1, linear 0" in md
    assert "## Failed runs (1)" in md and "20 steps \\| non-finite" in md
    assert "not a VTAB-1k task" in md and "![" in md


def test_report_of_an_empty_folder_and_the_cli(tmp_path, capsys):
    assert main(["vtab-report", str(tmp_path)]) == 0
    assert "No finished runs" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().startswith("source,level,group,task,method")
    assert main(["vtab-report", str(tmp_path / "missing")]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_cli_help():
    parser = build_parser()
    assert "vtab-sweep" in parser.format_help() and "vtab-report" in parser.format_help()
    for command, expected in (("vtab-sweep", ["--shard", "--dry-run", "accelerate launch", "--presets"]),
                              ("vtab-report", ["results.md"])):
        out = io.StringIO()
        with pytest.raises(SystemExit) as exit_info:
            sys_stdout, sys.stdout = sys.stdout, out
            try:
                main([command, "--help"])
            finally:
                sys.stdout = sys_stdout
        assert exit_info.value.code == 0
        assert all(word in out.getvalue() for word in expected)
