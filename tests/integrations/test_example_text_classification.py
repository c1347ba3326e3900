"""examples/text_classification.py runs offline, end to end, with tiny settings."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")

from elalora_vit import read_adapter_metadata  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "text_classification.py"


def test_text_classification_example_trains_and_saves_adapters(tmp_path):
    spec = importlib.util.spec_from_file_location("text_classification_example", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--steps", "12", "--train-size", "64", "--test-size", "32", "--batch-size", "16",
                           "--output", str(tmp_path)])
    assert 0.0 <= result["accuracy"] <= 100.0
    assert result["rounds"] >= 1
    meta = read_adapter_metadata(tmp_path / "adapter.safetensors")
    assert meta["modules_to_save"] == ["classifier"]
    assert meta["allocator_steps"] == 12 and meta["allocator_rounds"] == result["rounds"]
    assert meta["rank_pattern"] == result["rank_pattern"]
