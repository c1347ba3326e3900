"""`predict` gives evaluate's top-1 on the same images; bad images are reported by name."""

import json

import numpy as np
import pytest
from PIL import Image

from elalora_vit.cli import main
from elalora_vit.use import load_run, predict_images, run_predictions
from elalora_vit.use.evaluate import split_dataset


def _test_images(use_root):
    task_dir = use_root / "eurosat"
    lines = (task_dir / "test.txt").read_text().split()
    return [task_dir / rel for rel in lines[0::2]]


@pytest.mark.parametrize("method", ["elalora", "linear"])
def test_predict_top1_equals_evaluate_on_the_same_images(method, finished_runs, use_root):
    run = load_run(finished_runs[method])
    evaluated, _ = run_predictions(run, split_dataset(run, "test"), num_workers=0)
    predicted = predict_images(run, _test_images(use_root), top_k=3)
    assert [p.top_k[0]["class"] for p in predicted] == evaluated.tolist()
    for p in predicted:
        probabilities = [c["probability"] for c in p.top_k]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-6


def test_predict_cli_reports_bad_images_and_predicts_the_others(finished_runs, use_root, tmp_path, capsys):
    good = _test_images(use_root)[:2]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n not really a png")
    sixteen_bit = tmp_path / "depth16.png"
    Image.fromarray(np.zeros((8, 8), dtype=np.uint16) + 300).save(sixteen_bit)
    argv = ["predict", str(finished_runs["lora"]), str(good[0]), str(broken), str(sixteen_bit), str(good[1]),
            "--top-k", "2", "--json"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    lines = [json.loads(line) for line in captured.out.splitlines()]
    assert [line["image"] for line in lines] == [str(good[0]), str(broken), str(sixteen_bit), str(good[1])]
    assert len(lines[0]["top_k"]) == 2 and len(lines[3]["top_k"]) == 2
    assert lines[0]["top_k"][0]["name"] == str(lines[0]["top_k"][0]["class"])  # no class names: the index
    assert "broken.png: cannot decode the image" in lines[1]["error"]
    assert "depth16.png: unsupported pixel format" in lines[2]["error"]


def test_predict_takes_arrays_and_refuses_wrong_channels(finished_runs):
    run = load_run(finished_runs["elalora"])
    grey = np.full((20, 20), 128, dtype=np.uint8)
    two_channels = np.zeros((20, 20, 2), dtype=np.uint8)
    results = predict_images(run, [grey, two_channels], top_k=1)
    assert results[0].error is None and len(results[0].top_k) == 1
    assert "image 1: array of shape (20, 20, 2)" in results[1].error


def test_class_names_come_from_classes_txt_beside_the_folder_data(finished_runs, use_root):
    names = [f"class-{i}" for i in range(10)]
    (use_root / "eurosat" / "classes.txt").write_text("\n".join(names) + "\n")
    try:
        (prediction,) = predict_images(finished_runs["elalora"], _test_images(use_root)[:1], top_k=1)
    finally:
        (use_root / "eurosat" / "classes.txt").unlink()
    assert prediction.top_k[0]["name"] == names[prediction.top_k[0]["class"]]
