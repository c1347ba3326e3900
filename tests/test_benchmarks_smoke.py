"""The benchmark scripts run end to end on tiny settings and report what BENCHMARKS.md quotes.

Timings here mean nothing, but what the scripts derive from them must be right: every
reported time, rate, ratio and target is recomputed here from the raw times the script
returns, so a ratio taken the wrong way round or against the wrong variant fails.
"""

import importlib.util
import json
import statistics
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


def _paired(times: dict, name: str, reference: str) -> float:
    """Median over rounds of the time of ``name`` over that of ``reference`` in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[reference]))


def _assert_targets(result: dict, expected: dict) -> None:
    """Each target holds the value it names, and its verdict follows from value and limit."""
    assert set(result["targets"]) == set(expected)
    for key, value in expected.items():
        target = result["targets"][key]
        assert target["value"] == pytest.approx(value, rel=1e-9), key
        assert target["verdict"] == ("met" if target["value"] <= target["limit"] else "MISSED"), key


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
    assert json.loads(out.read_text())["models"][0]["model"] == "vit_tiny_patch16_224"
    times = model["times_s"]
    for name, row in rows.items():
        assert row["ms"] == pytest.approx(1e3 * statistics.median(times[name]), rel=1e-9)
        assert row["images_per_s"] == pytest.approx(model["batch"] * 1e3 / row["ms"], rel=1e-9)
        for ref in ("lora", "peft-lora"):
            assert row[f"x_{ref}"] == pytest.approx(_paired(times, name, ref), rel=1e-9)
            assert row[f"mem_x_{ref}"] == pytest.approx(row["peak_mib"] / rows[ref]["peak_mib"], rel=1e-9)
    elalora = rows["elalora"]
    _assert_targets(model, {"elalora_vs_our_lora": elalora["x_lora"], "elalora_vs_peft_lora": elalora["x_peft-lora"],
                            "elalora_memory_vs_peft_lora": elalora["mem_x_peft-lora"]})


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
    assert rows[1]["round_x"] == pytest.approx(rows[1]["round_ms"] / rows[0]["round_ms"], rel=1e-9)
    assert rows[1]["update_x"] == pytest.approx(rows[1]["update_ms"] / rows[0]["update_ms"], rel=1e-9)
    over = result["overhead"]
    assert over["adapters"] == 72
    assert over["update_pct"] == pytest.approx(100 * over["update_ms"] / over["train_step_ms"], rel=1e-9)
    assert {"round_growth_vs_linear", "overhead_pct_of_step"} <= _target_keys(result)
    assert result["targets"]["round_growth_vs_linear"]["value"] == pytest.approx(rows[1]["round_x"] / 2, rel=1e-9)
    assert result["targets"]["overhead_pct_of_step"]["value"] == pytest.approx(over["amortised_pct"], rel=1e-9)


def test_inference():
    result = _script("inference").main(["--models", TINY, "--rounds", "1", *FAST])
    model = result["models"][0]
    rows = {r["variant"]: r for r in model["rows"]}
    assert set(rows) == {"base", "merged", "unpatched-merged", "merged-inference", "unmerged"}
    assert rows["base"]["x_base"] == pytest.approx(1.0)
    times = model["times_s"]
    for name, row in rows.items():
        assert row["ms"] == pytest.approx(1e3 * statistics.median(times[name]), rel=1e-9)
        assert row["img_per_s"] == pytest.approx(model["batch"] * 1e3 / row["ms"], rel=1e-9)
        assert row["x_base"] == pytest.approx(_paired(times, name, "base"), rel=1e-9)
    assert model["max_abs_diff_merged_vs_unmerged"] < 1e-3
    _assert_targets(model, {"merged_time_vs_base": rows["merged"]["x_base"]})


def test_data_pipeline():
    result = _script("data_pipeline").main(
        ["--train", "8", "--src-size", "48", "40", "--image-size", "32", "--batch", "4", "--batches", "1",
         "--rounds", "1", "--consumer", TINY, *FAST])
    loaders = {r["loader"]: r for r in result["rows"]}
    assert set(loaders) == {"lazy, 0 workers", "cached, 0 workers"}
    consumer = result["consumer"]["img_per_s"]
    for row in loaders.values():
        assert row["img_per_s"] == pytest.approx(4 * 1e3 / row["ms_per_batch"], rel=1e-9)  # one batch of 4 a round
        assert row["x_consumption"] == pytest.approx(row["img_per_s"] / consumer, rel=1e-9)
    assert result["settings"]["train_images"] == 10  # train800val200 = 8 + 2
    assert result["cache_mib"] == pytest.approx(10 * 3 * 32 * 32 / 2**20)  # uint8 pixels at 32 px
    assert result["cache_build_img_per_s"] == pytest.approx(10 / result["cache_build_s"], rel=1e-9)
    assert result["cached_speedup"] > 0
