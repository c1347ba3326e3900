"""The transfer benchmark's task families (benchmarks/families): the data each one promises."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from families import counting, digits, family  # noqa: E402


def _dots(image: np.ndarray) -> int:
    """Dots counted independently of the renderer: connected groups (8-neighbourhood) of
    pixels brighter than the background can be."""
    bright = image > 0.5
    seen = np.zeros_like(bright)
    groups = 0
    for r, c in zip(*np.nonzero(bright)):
        if seen[r, c]:
            continue
        groups += 1
        stack = [(r, c)]
        while stack:
            y, x = stack.pop()
            if 0 <= y < bright.shape[0] and 0 <= x < bright.shape[1] and bright[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return groups


def test_every_counting_image_holds_its_label_plus_one_separate_dots():
    splits = counting.adaptation_splits(20, 60)
    mean, std = digits.normalisation()
    for name, split in splits.items():
        images = (split.x * std + mean).squeeze(1).numpy()
        found = [_dots(image) for image in images]
        assert found == (split.y + 1).tolist(), name
        # each dot is one pixel: exactly `count` pixels above the background's range
        assert ((images > 0.5).sum(axis=(1, 2)) == split.y.numpy() + 1).all(), name
    assert [len(splits[k].y) for k in ("train", "val", "test")] == [100, 300, 5 * counting.TEST_PER_CLASS]
    assert torch.equal(splits["train"].y.bincount(), torch.full((5,), 20))


def test_counting_splits_are_fixed_and_do_not_depend_on_each_other():
    a, b = counting.adaptation_splits(20, 60), counting.adaptation_splits(20, 30)
    assert torch.equal(a["train"].x, b["train"].x) and torch.equal(a["test"].x, b["test"].x)
    assert not torch.equal(a["val"].x[:30], a["train"].x[:30])
    flat = {k: {tuple(x.flatten().tolist()) for x in v.x} for k, v in a.items()}
    assert not flat["train"] & flat["test"] and not flat["val"] & flat["test"]


def test_the_families_share_the_pretraining_normalisation():
    pre = digits.pretraining_splits()["pretrain"].x
    assert abs(float(pre.mean())) < 1e-5 and abs(float(pre.std()) - 1) < 1e-3
    assert family("counting").CLASSES == family("digits").CLASSES == 5
    with pytest.raises(SystemExit, match="unknown task family 'clevr'"):
        family("clevr")


def test_the_runner_adapts_to_the_counting_family(tmp_path):
    import transfer

    result = transfer.main(["--quick", "--family", "counting", "--methods", "lora", "elalora",
                            "--cache-dir", str(tmp_path / "cache")])
    assert result["settings"]["family"] == "counting"
    assert {r["method"] for r in result["summary"]} == {"lora", "elalora"}
    assert all(r["steps"] > 0 and 0 <= r["test_acc"] <= 100 for r in result["runs"])


def test_the_half_rank_benchmark_pits_rank_r_against_2r_in_one_command(tmp_path, capsys):
    import json

    import half_rank

    out = tmp_path / "half.jsonl"
    half_rank.main(["--quick", "--family", "counting", "--out", str(out), "--cache-dir", str(tmp_path / "cache")])
    runs = [json.loads(line) for line in out.read_text().splitlines()]
    ranks = {r["method"]: r["rank"] for r in runs}
    assert ranks == {"elalora@2": 2, "lora@4": 4, "peft@4": 4, "adalora@4": 4}
    params = {r["method"]: r["trainable_params"] for r in runs}
    assert params["elalora@2"] < params["lora@4"] == params["peft@4"]
    printed = capsys.readouterr().out
    assert "ElaLoRA at rank 2 against the others at rank 4" in printed and "| elalora@2 |" in printed
