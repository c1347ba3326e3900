"""The benchmark scripts run end to end on tiny settings and report what BENCHMARKS.md quotes.

Timings here mean nothing; the test only keeps the scripts from rotting.
"""

import importlib.util
import json
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = "vit_tiny_patch16_224:32:2"
# One torch thread: on a loaded machine two OpenMP threads can run tiny ops 10x slower.
FAST = ["--threads", "1"]

pytest.importorskip("timm")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _target_keys(result: dict) -> set:
    return set(result["targets"])


def test_step_time(tmp_path):
    pytest.importorskip("peft")
    out = tmp_path / "step.json"
    result = _script("step_time").main(
        ["--models", TINY, "--rounds", "1", "--project-img", "32", "--project-batches", "4",
         "--json", str(out), *FAST])
    model = result["models"][0]
    rows = {r["variant"]: r for r in model["rows"]}
    assert set(rows) == {"elalora", "elalora+orth", "elalora-unsplit", "lora", "peft-lora", "peft-adalora"}
    for row in rows.values():
        assert row["ms"] > 0 and row["x_lora"] > 0 and row["x_peft-lora"] > 0
        assert row["peak_mib"] > row["activations_mib"] > 0 and row["mem_b4_x_peft-lora"] > 0
    assert rows["peft-lora"]["x_peft-lora"] == pytest.approx(1.0)
    # ElaLoRA holds capacity 2 x rank and importance EMAs: more state than LoRA at the same rank.
    assert rows["elalora"]["allocator_mib"] > 0 and rows["lora"]["allocator_mib"] == 0
    assert rows["elalora"]["trainable_params"] > rows["lora"]["trainable_params"]
    assert _target_keys(model) == {"elalora_vs_our_lora", "elalora_vs_peft_lora", "elalora_memory_vs_peft_lora"}
    assert json.loads(out.read_text())["models"][0]["model"] == "vit_tiny_patch16_224"
    assert rows["elalora"]["images_per_s"] > 0


def test_step_time_bf16_autocast():
    pytest.importorskip("peft")
    result = _script("step_time").main(
        ["--models", TINY, "--rounds", "1", "--project-batches", "--precision", "bf16",
         "--variants", "elalora", "lora", *FAST])
    model = result["models"][0]
    assert model["precision"] == "bf16"
    assert {r["variant"] for r in model["rows"]} == {"elalora", "lora"}


def test_allocator_cost():
    result = _script("allocator_cost").main(
        ["--blocks", "1", "2", "--dim", "32", "--reps", "1", "--vit", TINY, "--vit-rounds", "1", *FAST])
    rows = result["scaling"]
    assert [r["adapters"] for r in rows] == [6, 12]
    assert all(r["update_ms"] > 0 and r["round_ms"] > 0 for r in rows)
    assert rows[1]["size_x"] == 2
    assert result["overhead"]["adapters"] == 72 and result["overhead"]["update_pct"] > 0
    assert {"round_growth_vs_linear", "overhead_pct_of_step"} <= _target_keys(result)


def test_inference():
    result = _script("inference").main(["--models", TINY, "--rounds", "1", *FAST])
    model = result["models"][0]
    rows = {r["variant"]: r for r in model["rows"]}
    assert set(rows) == {"base", "merged", "unpatched-merged", "unmerged"}
    assert rows["base"]["x_base"] == pytest.approx(1.0)
    assert all(r["img_per_s"] > 0 for r in rows.values())
    assert model["max_abs_diff_merged_vs_unmerged"] < 1e-3
    assert _target_keys(model) == {"merged_time_vs_base"}


def test_data_pipeline():
    result = _script("data_pipeline").main(
        ["--train", "8", "--src-size", "48", "40", "--image-size", "32", "--batch", "4", "--batches", "1",
         "--rounds", "1", "--consumer", TINY, *FAST])
    loaders = {r["loader"]: r for r in result["rows"]}
    assert set(loaders) == {"lazy, 0 workers", "cached, 0 workers"}
    assert all(r["img_per_s"] > 0 and r["x_consumption"] > 0 for r in loaders.values())
    assert result["settings"]["train_images"] == 10  # train800val200 = 8 + 2
    assert result["cache_build_s"] > 0 and result["cached_speedup"] > 0
