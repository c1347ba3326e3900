"""`elalora-vit train` on tensorflow-datasets data, offline, through tfds.testing.mock_data."""

import json

import numpy as np
import pytest

from elalora_vit.train import load_config, train
from tests.train.conftest import tiny_overrides

tfds = pytest.importorskip("tensorflow_datasets")


def _examples(count: int, offset: int) -> list[dict]:
    rng = np.random.default_rng(offset)
    examples = []
    for i in range(count):
        label = i % 3
        image = rng.integers(0, 40, (32, 32, 3), dtype=np.uint8)
        image[:, :, label] = 230
        examples.append({"image": image, "label": np.int64(label), "coarse_label": np.int64(0), "id": f"x{i}"})
    return examples


@pytest.fixture
def mock_cifar():
    train800, val200, test = _examples(12, 0), _examples(4, 1), _examples(6, 2)
    splits = {
        "train[:800]": train800,
        "train[45000:45200]": val200,
        "train[:800]+train[45000:45200]": train800 + val200,
        "test": test,
    }
    requested = []

    def as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
        requested.append(split)
        return splits[split]

    with tfds.testing.mock_data(as_data_source_fn=as_data_source):
        yield requested


@pytest.mark.parametrize("method", ["elalora", "lora", "adalora", "full", "linear"])
def test_every_method_trains_on_tfds_data(method, mock_cifar, tmp_path):
    overrides = tiny_overrides(
        tmp_path,
        tmp_path / "out",
        method=method,
        **{"data.task": "cifar100", "data.source": "tfds", "data.tfds_dir": str(tmp_path), "optim.epochs": 2},
    )
    result = train(load_config(None, overrides))
    assert result["task"] == "cifar" and result["method"] == method  # the alias resolves to the folder name
    assert set(mock_cifar) == {"test", "train[:800]+train[45000:45200]"}
    assert json.loads((tmp_path / "out" / "result.json").read_text())["accuracy"] == result["accuracy"]
