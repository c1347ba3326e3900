"""Grids in vtab-sweep: variants named by their values, each its own folder and report
column, resumable and shardable like every run."""

from __future__ import annotations

import json

import pytest
import yaml

from elalora_vit.cli import main
from elalora_vit.core import patch_model
from elalora_vit.vit import block_index_and_kind
from tests.conftest import make_tiny_vit
from elalora_vit.core.config import ConfigError
from elalora_vit.sweep import collect_results, plan_sweep, run_sweep, shard_runs, write_report
from elalora_vit.sweep.grid import Variant, base_method, expand_grid, format_value, parse_grid
from elalora_vit.train import train
from tests.test_sweep import TINY, _one_thread, cli_set_flags, write_task  # noqa: F401  (_one_thread: a fixture)

GRID = {"adapter.b": [2, 4], "adapter.k": [1]}
B2, B4 = "elalora[adapter.b=2,adapter.k=1]", "elalora[adapter.b=4,adapter.k=1]"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtab-1k")
    write_task(root, "dtd")
    return root


def test_grid_expands_into_named_variants_after_the_default():
    variants = expand_grid({"adapter.k": [1], "adapter.b": [2, 4]})
    assert [v.label("elalora") for v in variants] == ["elalora", B2, B4]
    assert variants[1].overrides() == {"adapter.b": 2, "adapter.k": 1}
    assert parse_grid(["adapter.b=2,4", "adapter.schedule=cubic, linear", "optim.lr=1e-3,3e-3"]) == {
        "adapter.b": [2, 4], "adapter.schedule": ["cubic", "linear"], "optim.lr": [1e-3, 3e-3]}
    assert [format_value(v) for v in (True, 0.001, "cosine", 8, [1, 2], "a/b")] == [
        "true", "0.001", "cosine", "8", "[1,2]", "a_b"]
    assert base_method(B2) == "elalora" and expand_grid({}) == [Variant()]


@pytest.mark.parametrize("options, message", [
    (["adapter.b"], "must look like KEY=V1,V2"),
    (["adapter.b=2", "adapter.b=4"], "names 'adapter.b' twice"),
    (["seed=1,2"], "choose it with --seeds, not a grid"),
])
def test_bad_grids_say_what_to_write(options, message, tmp_path):
    with pytest.raises(ConfigError, match=message):
        plan_sweep("dtd", "elalora", [0], output=tmp_path, presets=None, grid=parse_grid(options))


def test_a_grid_value_the_config_refuses_names_the_variant(tmp_path):
    with pytest.raises(ConfigError, match=r"dtd/elalora\[adapter.b=-1\]/seed0: invalid value for 'adapter.b'"):
        plan_sweep("dtd", "elalora", [0], output=tmp_path, presets=None, grid={"adapter.b": [-1]})


def test_variants_have_their_own_folders_and_settings_and_skip_methods_without_adapters(tmp_path):
    runs = plan_sweep("dtd", ["elalora", "linear"], [0, 1], output=tmp_path, presets=None, grid=GRID)
    assert [r.name for r in runs] == [
        "dtd/elalora/seed0", "dtd/elalora/seed1", f"dtd/{B2}/seed0", f"dtd/{B2}/seed1", f"dtd/{B4}/seed0",
        f"dtd/{B4}/seed1", "dtd/linear/seed0", "dtd/linear/seed1"]
    assert runs[2].output_dir == tmp_path / "dtd" / B2 / "seed0"
    assert (runs[0].config.adapter.b, runs[2].config.adapter.b, runs[4].config.adapter.b) == (4, 2, 4)
    assert (runs[0].config.adapter.k, runs[2].config.adapter.k) == (2, 1)


def test_grid_from_the_config_file_and_the_command_line(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"grid": {"adapter": {"k": [1]}, "adapter.b": [8]}, "optim": {"lr": 0.01}}))
    from_file = plan_sweep("dtd", "elalora", [0], output=tmp_path, presets=None, config=path)
    assert [r.label for r in from_file] == ["elalora", "elalora[adapter.b=8,adapter.k=1]"]
    assert from_file[1].config.optim.lr == 0.01
    both = plan_sweep("dtd", "elalora", [0], output=tmp_path, presets=None, config=path, grid={"adapter.b": [2, 4]})
    assert [r.label for r in both] == ["elalora", B2, B4]  # --grid replaces the file's values of its keys


def test_shards_of_a_grid_are_disjoint_and_complete(tmp_path):
    everything = plan_sweep("natural", ["elalora", "adalora"], [0, 1], output=tmp_path, presets=None, grid=GRID)
    assert len(everything) == 7 * 2 * 3 * 2
    for count in (2, 5):
        shards = [plan_sweep("natural", ["elalora", "adalora"], [0, 1], output=tmp_path, presets=None, grid=GRID,
                             shard=f"{i}/{count}") for i in range(1, count + 1)]
        names = [r.name for shard in shards for r in shard]
        assert sorted(names) == sorted(r.name for r in everything) and len(set(names)) == len(names)
        assert [r.name for r in shards[0]] == [r.name for r in shard_runs(everything, 1, count)]


def test_dry_run_lists_the_variants(tmp_path, data_root, capsys):
    code = main(["vtab-sweep", "--dry-run", "--tasks", "dtd", "--methods", "elalora", "--output", str(tmp_path),
                 "--grid", "adapter.b=2,4", "--grid", "adapter.k=1", *cli_set_flags(data_root)])
    printed = capsys.readouterr().out
    assert code == 0 and "3 runs (0 done, 0 partial, 0 failed, 3 new)" in printed
    assert f"grid variants (2, each beside its method's default setting): {B2}, {B4}" in printed
    assert f"dtd/{B2}/seed0" in printed and str(tmp_path / "dtd" / B2 / "seed0") in printed
    assert not any(tmp_path.iterdir())


def test_a_grid_sweep_resumes_and_reports_each_variant_as_a_method(tmp_path, data_root):
    output = tmp_path / "sweep"
    grid = {"adapter.b": [1, 2]}
    runs = plan_sweep("dtd", "elalora", [0], output=output, presets=None, grid=grid,
                      overrides={**TINY, "data.data_dir": str(data_root)})
    assert [r.label for r in runs] == ["elalora", "elalora[adapter.b=1]", "elalora[adapter.b=2]"]
    assert train(runs[1].config, stop_after_epoch=1) == {"interrupted_after_epoch": 1}  # a killed variant
    assert [r.status() for r in runs] == ["new", "partial", "new"]
    summary = run_sweep(runs, report_dir=output)
    assert summary.ok and len(summary.trained) == 3
    again = run_sweep(plan_sweep("dtd", "elalora", [0], output=output, presets=None, grid=grid,
                                 overrides={**TINY, "data.data_dir": str(data_root)}))
    assert again.skipped == [r.name for r in runs] and not again.trained
    assert json.loads((output / "dtd" / "elalora[adapter.b=1]" / "seed0" / "result.json").read_text())["method"] == "elalora"
    results = collect_results(output)
    assert set(results.methods) == {r.label for r in runs} and results.methods[0] == "elalora"
    md = (output / "results.md").read_text()
    assert "## Grid variants" in md and "| elalora[adapter.b=1] |" in md
    assert (output / "rank_heatmap_elalora[adapter.b=1].png").is_file()


def _fake(root, task, label, accuracy):
    folder = root / task / label / "seed0"
    folder.mkdir(parents=True)
    (folder / "result.json").write_text(json.dumps({
        "task": task, "method": base_method(label), "seed": 0, "eval_split": "test", "accuracy": accuracy,
        "rank_pattern": {}, "model": "m", "pretrained": True}))


def test_report_orders_variants_by_mean_of_group_means_with_paired_differences(tmp_path):
    scores = {"elalora": (70, 60, 50), "elalora[adapter.b=2]": (72, 61, 49), "elalora[adapter.b=8]": (75, 70, 60),
              "lora": (65, 55, 45)}
    for label, (cifar, eurosat, kitti) in scores.items():
        for task, accuracy in (("cifar", cifar), ("eurosat", eurosat), ("kitti", kitti)):
            _fake(tmp_path, task, label, accuracy)
    _fake(tmp_path, "dtd", "elalora[adapter.b=2]", 40)  # no default on dtd: not in the paired comparison
    results = collect_results(tmp_path)
    assert results.methods == ["elalora", "elalora[adapter.b=8]", "elalora[adapter.b=2]", "lora"]
    md = write_report(tmp_path)["markdown"].read_text()
    section = md.split("## Grid variants")[1].split("\n## ")[0]
    b8, b2 = (line for line in section.splitlines() if line.startswith("| elalora["))
    assert b8.startswith("| elalora[adapter.b=8] | 68.3 | +5.0 (1/7) | +10.0 (1/4) | +10.0 (1/8) | **+8.3** |")
    assert b2.startswith("| elalora[adapter.b=2] |") and "| **+0.7** | +0.67 (n=1, no interval) | -1.0 … +2.0 | 2 / 1 / 0 |" in b2
    assert "elalora − elalora[" not in md  # variants are not among "the others"


def test_a_variant_equal_to_the_default_setting_is_not_run_twice(tmp_path):
    runs = plan_sweep("dtd", "elalora", [0], output=tmp_path, presets=None, grid={"adapter.b": [2, 4], "adapter.k": [2]})
    assert [r.label for r in runs] == ["elalora", "elalora[adapter.b=2,adapter.k=2]"]  # b=4, k=2 is the default


ABLATION_PRESETS = ["no-fc1", "no-attn-proj", "attention-only", "mlp-only", "qv-only", "schedule-shapes", "k-b-values"]


def test_every_ablation_preset_is_checked_and_in_the_docs():
    from tests.docs_pages import pages_text
    from tests.test_sweep import REPO

    assert sorted(p.stem for p in (REPO / "configs" / "ablations").glob("*.yaml")) == sorted(ABLATION_PRESETS)
    readme = pages_text()
    for preset in ABLATION_PRESETS:
        assert f"--config configs/ablations/{preset}.yaml" in readme


@pytest.mark.parametrize("preset", ABLATION_PRESETS)
def test_ablation_presets_plan_and_name_the_paper(preset, tmp_path):
    from tests.test_sweep import REPO

    path = REPO / "configs" / "ablations" / f"{preset}.yaml"
    text = path.read_text()
    assert "ElaLoRA paper" in text and f"--config configs/ablations/{preset}.yaml" in text
    runs = plan_sweep("dtd", "elalora", [0], output=tmp_path, config=path)
    assert runs[0].label == "elalora"
    if preset == "schedule-shapes":
        assert [r.config.adapter.schedule for r in runs] == ["cubic", "linear", "cosine", "constant"]
    if preset == "k-b-values":
        assert len(runs) == 9 and {(r.config.adapter.k, r.config.adapter.b) for r in runs} == {
            (k, b) for k in (1, 2, 4) for b in (2, 4, 8)}
    kinds = {"no-fc1": ["q", "k", "v", "proj", "fc2"], "no-attn-proj": ["q", "k", "v", "fc1", "fc2"],
             "attention-only": ["q", "k", "v", "proj"], "mlp-only": ["fc1", "fc2"], "qv-only": ["q", "v"]}
    if preset in kinds:  # the targets adapt exactly these kinds of a timm ViT's blocks
        model, chosen = make_tiny_vit(depth=2), runs[0].config.model
        adapters = patch_model(model, chosen.targets, split=chosen.split, exclude=chosen.exclude)
        assert sorted({block_index_and_kind(a.name) for a in adapters}) == sorted(
            (block, kind) for block in (0, 1) for kind in kinds[preset])


def test_report_shows_the_mean_rank_by_kind_and_depth_per_method(tmp_path):
    from elalora_vit.sweep.rank_allocation import rank_by

    def result(task, method, seed, pattern):
        folder = tmp_path / task / method / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "result.json").write_text(json.dumps({
            "task": task, "method": method, "seed": seed, "eval_split": "test", "accuracy": 50.0,
            "rank_pattern": pattern, "model": "m", "pretrained": True}))

    # cifar: two seeds (fc1 of block 0 at 6 and 4 -> 5); dtd: one seed
    result("cifar", "elalora", 0, {"blocks.0.attn.qkv.q": 2, "blocks.0.mlp.fc1": 6, "blocks.1.mlp.fc1": 4})
    result("cifar", "elalora", 1, {"blocks.0.attn.qkv.q": 2, "blocks.0.mlp.fc1": 4, "blocks.1.mlp.fc1": 4})
    result("dtd", "elalora", 0, {"blocks.0.attn.qkv.q": 4, "blocks.0.mlp.fc1": 2, "blocks.1.mlp.fc1": 6})
    result("dtd", "lora", 0, {"blocks.0.attn.qkv.q": 4, "blocks.0.mlp.fc1": 4, "blocks.1.mlp.fc1": 4})
    results = collect_results(tmp_path)
    # kind: q = mean(2, 4) = 3; fc1 = mean(mean(5, 4), mean(2, 6)) = mean(4.5, 4) = 4.25
    assert rank_by(results, "elalora", "kind") == {"q": 3.0, "fc1": 4.25}
    # block 0 = mean(mean(2, 5), mean(4, 2)) = mean(3.5, 3) = 3.25; block 1 = mean(4, 6) = 5
    assert rank_by(results, "elalora", "block") == {0: 3.25, 1: 5.0}
    md = write_report(tmp_path)["markdown"].read_text()
    section = md.split("## Where the ranks go")[1].split("\n## ")[0]
    assert "| elalora | 2 | 3.00 | **4.25** |" in section and "| elalora | 2 | 3.25 | **5.00** |" in section
    assert "| lora |" not in section  # fixed ranks: nothing to see
