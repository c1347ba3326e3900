"""`evaluate` rebuilds a finished run and reproduces its result.json; the backbone is checked."""

import json
import shutil

import pytest
import yaml

from elalora_vit import BackboneMismatchError
from elalora_vit.cli import main
from elalora_vit.use import RunError, load_run
from tests.use.conftest import METHODS


@pytest.mark.parametrize("method", METHODS)
def test_evaluate_reproduces_result_json_exactly(method, finished_runs, capsys):
    run_dir = finished_runs[method]
    result_before = (run_dir / "result.json").read_bytes()
    assert main(["evaluate", str(run_dir)]) == 0
    printed = json.loads(capsys.readouterr().out.strip())
    expected = json.loads(result_before)
    assert printed["accuracy"] == expected["accuracy"]
    assert printed["split"] == "test" and printed["count"] == 48 and printed["method"] == method
    assert json.loads((run_dir / "eval-test.json").read_text()) == printed
    assert (run_dir / "result.json").read_bytes() == result_before


def test_evaluate_on_another_split_writes_its_own_file(finished_runs, capsys):
    run_dir = finished_runs["elalora"]
    assert main(["evaluate", str(run_dir), "--split", "val200"]) == 0
    printed = json.loads(capsys.readouterr().out.strip())
    assert printed["split"] == "val200" and printed["count"] == 8
    assert json.loads((run_dir / "eval-val200.json").read_text())["accuracy"] == printed["accuracy"]


@pytest.mark.parametrize("method", ["elalora", "linear"])
def test_another_backbone_is_refused_naming_both_fingerprints(method, finished_runs, tmp_path):
    run_dir = tmp_path / method
    shutil.copytree(finished_runs[method], run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config["seed"] = 1  # another random backbone of the same shapes
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(BackboneMismatchError, match=r"fingerprint sha256:[0-9a-f]{16}.*fingerprint sha256:[0-9a-f]{16}"):
        load_run(run_dir)


def test_a_run_without_a_finished_model_is_a_clear_error(finished_runs, tmp_path, capsys):
    run_dir = tmp_path / "unfinished"
    run_dir.mkdir()
    shutil.copy(finished_runs["lora"] / "config.yaml", run_dir)
    with pytest.raises(RunError, match="no finished lora model: adapter.safetensors is missing.*--resume"):
        load_run(run_dir)
    assert main(["evaluate", str(run_dir)]) == 2
    assert "adapter.safetensors is missing" in capsys.readouterr().err
    with pytest.raises(RunError, match="not a run folder: it has no config.yaml"):
        load_run(tmp_path)


def test_inspect_adapter_tells_the_method_and_reads_trained_weights(finished_runs, capsys):
    assert main(["inspect-adapter", str(finished_runs["adalora"] / "adapter.safetensors")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method: adalora") and "vit_tiny_patch16_224" in out and "backbone fingerprint: sha256:" in out
    assert main(["inspect-adapter", str(finished_runs["linear"] / "trained.safetensors")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("method: linear  trained weights: 2 tensors") and "also saved: head" in out


def test_each_method_writes_the_files_train_help_lists(finished_runs, capsys):
    common = {"config.yaml", "metrics.jsonl", "result.json", "checkpoint.pt", ".elalora.lock"}
    adapter = common | {"adapter.safetensors", "rank_history.json", "rank_heatmap.png"}
    ranked = adapter | {"rank_evolution.png", "importance_scores.png"}  # ranks that move are drawn moving
    expected = {"elalora": ranked, "adalora": ranked, "lora": adapter}
    for method in METHODS:
        written = {p.name for p in finished_runs[method].iterdir() if not p.name.startswith("eval-")}
        assert written == expected.get(method, common | {"trained.safetensors"})
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in sorted(ranked | {"trained.safetensors", "eval-<split>.json"}):
        assert name in text


def test_evaluate_and_predict_run_on_merged_adapters_with_the_unmerged_logits(finished_runs, monkeypatch):
    """The commands load runs with the adapters folded into W0 (the base model's cost); the
    logits are the unmerged model's to float rounding."""
    import torch

    from elalora_vit import adapted_layers
    from elalora_vit.use import evaluate as evaluate_module

    run_dir = finished_runs["elalora"]
    merged, unmerged = load_run(run_dir, merge=True), load_run(run_dir)
    layers = [layer for _, layer in adapted_layers(merged.model)]
    assert layers and all(layer.merged for layer in layers)
    assert not any(layer.merged for _, layer in adapted_layers(unmerged.model))
    x = torch.randn(4, 3, merged.image_size, merged.image_size)
    with torch.no_grad():
        torch.testing.assert_close(merged.model(x), unmerged.model(x), rtol=1e-5, atol=1e-5)

    seen = []
    real = evaluate_module.run_predictions
    monkeypatch.setattr(evaluate_module, "run_predictions",
                        lambda run, *a, **k: seen.append(run) or real(run, *a, **k))
    assert main(["evaluate", str(run_dir)]) == 0
    assert all(layer.merged for _, layer in adapted_layers(seen[0].model))

    from PIL import Image

    from elalora_vit.use import predict as predict_module

    image = run_dir.parent / "a.png"
    Image.new("RGB", (8, 8), (200, 30, 30)).save(image)
    real_probabilities = predict_module._probabilities
    monkeypatch.setattr(predict_module, "_probabilities",
                        lambda run, *a: seen.append(run) or real_probabilities(run, *a))
    assert main(["predict", str(run_dir), str(image)]) == 0
    assert all(layer.merged for _, layer in adapted_layers(seen[-1].model))
