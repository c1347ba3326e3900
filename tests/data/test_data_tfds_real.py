"""The TFDS source on data written by TFDS's real builders (tests/data/fixtures), without TensorFlow.

The fixtures and reference.npz (what TensorFlow's reader gives) are made by
tests/data/fixtures/make_tfds_fixtures.py; see its docstring.
"""

import importlib.util
import io
import json
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
import yaml
from PIL import Image
from torch.utils.data import DataLoader

from elalora_vit.cli import main
from elalora_vit.data import DataError, MissingDataError, get_task, prepare_vtab
from elalora_vit.data.datasets import LazyDataset, loader_workers
from elalora_vit.data.folder import folder_source, read_split_list
from elalora_vit.data.tfds_source import TfdsSource
from elalora_vit.data.transforms import Preprocess
from elalora_vit.train import load_config
from tests.data.fixtures.make_tfds_fixtures import (
    DTD_SMALL_SPLITS,
    OUT,
    REFERENCE,
    fake_dtd,
    reference_examples,
    reference_reads,
)
from tests.train.conftest import tiny_overrides

ARRAY_RECORD = OUT / "array_record"


@pytest.fixture(scope="module")
def reference():
    return np.load(REFERENCE)


@pytest.mark.parametrize("folder, task, split, split_string", reference_reads())
def test_real_builder_data_reads_as_tensorflow_does(reference, folder, task, split, split_string):
    # dtd: 2 shards per split, JPEG; clevr: RGBA PNGs, label rules; tfrecord: read
    # from its `tfds convert_format` copy (dataset_info still names tfrecord first).
    read_from = "converted" if folder == "tfrecord" else folder
    source = TfdsSource(get_task(task), split, OUT / read_from)
    expected = reference_examples(reference, f"{folder}/{task}/{split}")
    assert len(source) == len(expected)
    for index, (image, label) in enumerate(expected):
        got_image, got_label = source[index]
        assert got_label == label, index
        assert got_image.dtype == np.uint8 and np.array_equal(got_image, image), index


def test_the_fixtures_are_what_the_tests_claim():
    info = json.loads((ARRAY_RECORD / "dtd" / "3.0.1" / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    assert {split["name"]: len(split["shardLengths"]) for split in info["splits"]} == {
        "train": 2, "validation": 2, "test": 2}
    converted = json.loads((OUT / "converted" / "dtd" / "3.0.1" / "dataset_info.json").read_text())
    assert converted["fileFormat"] == "tfrecord" and converted["alternativeFileFormats"] == ["array_record"]
    clevr = ARRAY_RECORD / "clevr" / "3.1.0"
    record = tfds.data_source("clevr:3.1.0", split="train[:1]", data_dir=str(ARRAY_RECORD),
                              decoders={"image": tfds.decode.SkipDecoding()})[0]
    assert Image.open(io.BytesIO(record["image"])).mode == "RGBA" and clevr.is_dir()
    sprite = tfds.data_source("dsprites:2.0.0", split="train[:1]", data_dir=str(ARRAY_RECORD),
                              decoders={"image": tfds.decode.SkipDecoding()})[0]["image"]
    assert set(np.unique(np.asarray(Image.open(io.BytesIO(sprite))))) == {0, 1}  # scaled by the task


def test_train800val200_is_train800_then_val200(reference):
    union = TfdsSource(get_task("dtd"), "train800val200", ARRAY_RECORD)
    expected = (reference_examples(reference, "array_record/dtd/train800")
                + reference_examples(reference, "array_record/dtd/val200"))
    assert len(union) == 1000
    for index in (0, 799, 800, 999):
        assert union[index][1] == expected[index][1]
        assert np.array_equal(union[index][0], expected[index][0])


def jpeg_round_trip(image: np.ndarray, quality: int = 95) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def test_prepare_vtab_writes_what_tensorflow_reads(reference, tmp_path, capsys):
    command = ["prepare-vtab", "--tasks", "dtd", "--tfds-dir", str(ARRAY_RECORD), "--data-dir", str(tmp_path)]
    assert main([*command, "--no-progress"]) == 0
    folder = tmp_path / "dtd"
    assert capsys.readouterr().out.split() == [str(folder)]
    dtd = get_task("dtd")
    for split in ("train800", "val200", "test"):
        expected = reference_examples(reference, f"array_record/dtd/{split}")
        written = folder_source(tmp_path, dtd, split)
        assert [entry.label for entry in written.entries] == [label for _, label in expected]
        for index, (image, _) in enumerate(expected):
            # prepare-vtab saves JPEG at quality 95: the TF pixels after that same encoding.
            assert np.array_equal(np.asarray(written[index][0]), jpeg_round_trip(image)), (split, index)
    lines = (folder / "train800val200.txt").read_text().splitlines()
    assert lines == ((folder / "train800.txt").read_text() + (folder / "val200.txt").read_text()).splitlines()


def test_train_on_tfds_data_with_default_workers_finishes(tmp_path, capsys):
    overrides = tiny_overrides(tmp_path, tmp_path / "out", method="elalora", **{
        "data.task": "dtd", "data.source": "tfds", "data.tfds_dir": str(ARRAY_RECORD),
        "optim.epochs": 1, "optim.batch_size": 50})
    del overrides["data.num_workers"]  # the default, 2 evaluation workers
    assert load_config(None, overrides).data.num_workers == 2
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(nested(overrides)))
    assert main(["train", "--config", str(config), "--data-source", "tfds", "--task", "dtd"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])  # the JSON line comes last, after the summary
    assert summary["task"] == "dtd" and 0.0 <= summary["accuracy"] <= 100.0
    assert json.loads((tmp_path / "out" / "result.json").read_text())["accuracy"] == summary["accuracy"]


def nested(dotted: dict) -> dict:
    """{"a.b": 1} -> {"a": {"b": 1}}, the YAML config layout."""
    tree: dict = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


# Point 1: array_record and forked DataLoader workers.


def test_loader_workers_survive_a_parent_that_read_records():
    source = TfdsSource(get_task("clevr_count"), "train800", ARRAY_RECORD)
    source[0]  # the parent reads first, as the training loop does when it caches train800
    dataset = LazyDataset(source, Preprocess(16, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)))
    options = loader_workers(dataset, 2)
    assert options["multiprocessing_context"].get_start_method() in ("forkserver", "spawn")
    labels = [label for _, batch in DataLoader(dataset, batch_size=200, **options) for label in batch.tolist()]
    assert labels == [source.label(source.examples[index], index) for index in range(800)]
    assert loader_workers(dataset, 0)["multiprocessing_context"] is None


# Point 2: file formats.


def test_tfrecord_only_data_says_how_to_convert():
    with pytest.raises(MissingDataError) as caught:
        TfdsSource(get_task("dtd"), "test", OUT / "tfrecord")
    message = str(caught.value)
    version_dir = OUT / "tfrecord" / "dtd" / "3.0.1"
    assert "'dtd'" in message and "tfrecord files only" in message
    assert f"tfds convert_format --dataset_version_dir={version_dir} --out_file_format=array_record" in message
    assert "pip install tensorflow apache-beam mlcroissant" in message


# Point 3: every image mode becomes RGB.

RED, GREY = (200, 30, 10), 77


def encoded(mode: str) -> tuple[bytes, tuple[int, int, int]]:
    """A 3 x 2 image in `mode`, PNG (JPEG for CMYK), and the RGB value TensorFlow decodes it to."""
    if mode == "RGBA":
        image, rgb = Image.new("RGBA", (3, 2), (*RED, 40)), RED
    elif mode == "LA":
        image, rgb = Image.new("LA", (3, 2), (GREY, 128)), (GREY,) * 3
    elif mode == "P":
        image = Image.new("P", (3, 2), 1)
        image.putpalette([0, 0, 0, *RED])
        rgb = RED
    elif mode == "I;16":
        image = Image.fromarray(np.full((2, 3), GREY * 256 + 200, dtype=np.uint16))
        rgb = (GREY,) * 3  # the high byte
    elif mode == "1":
        image, rgb = Image.new("1", (3, 2), 1), (255, 255, 255)
    elif mode == "L":
        image, rgb = Image.new("L", (3, 2), GREY), (GREY,) * 3
    else:  # CMYK, as JPEG; PIL's naive conversion, within JPEG rounding of TF's
        image, rgb = Image.new("CMYK", (3, 2), (0, 255, 255, 0)), (255, 0, 0)
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode == "CMYK" else "PNG", quality=100)
    return buffer.getvalue(), rgb


MODES = ["RGBA", "LA", "P", "I;16", "CMYK", "1", "L"]


def serve(examples):
    """tfds.testing.mock_data serving `examples` for every split."""
    return tfds.testing.mock_data(as_data_source_fn=lambda builder, split, **kwargs: examples)


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_becomes_rgb_from_tfds(mode):
    data, rgb = encoded(mode)
    with serve([{"image": data, "label": np.int64(3)}]):
        image, label = TfdsSource(get_task("dtd"), "test")[0]
    assert image.shape == (2, 3, 3) and image.dtype == np.uint8 and label == 3
    assert np.abs(image.astype(int) - rgb).max() <= 2


@pytest.mark.parametrize("mode", MODES)
def test_every_image_mode_becomes_rgb_from_a_folder(mode, tmp_path, kit):
    data, rgb = encoded(mode)
    task_dir = kit.build_task_folder(tmp_path)
    (task_dir / "images" / "test" / "000001.png").write_bytes(data)
    image, _ = folder_source(tmp_path, get_task(kit.task_name), "test")[1]
    assert image.mode == "RGB" and image.size == (3, 2)
    assert np.abs(np.asarray(image, dtype=int) - rgb).max() <= 2


def test_undecodable_images_name_the_task_and_example(tmp_path, kit):
    with serve([{"image": b"not an image", "label": np.int64(0)}] * 2):
        with pytest.raises(DataError, match=r"task 'dtd', split 'test', example 1 .*cannot decode"):
            TfdsSource(get_task("dtd"), "test")[1]
    task_dir = kit.build_task_folder(tmp_path)
    bad = task_dir / "images" / "test" / "000002.png"
    bad.write_bytes(b"not an image")
    task = get_task(kit.task_name)
    with pytest.raises(DataError, match=rf"task '{task.name}', split 'test', image 2: cannot decode image {bad}"):
        folder_source(tmp_path, task, "test")[2]
    assert len(read_split_list(tmp_path, task, "test")) == kit.split_sizes["test"]


# Point 4: incomplete data.


def test_a_split_beyond_the_prepared_examples_says_what_is_there_and_what_to_do(tmp_path):
    with pytest.raises(MissingDataError) as caught:
        TfdsSource(get_task("clevr_count"), "val200", ARRAY_RECORD)
    message = str(caught.value)
    assert "not prepared" not in message
    assert "'clevr_count'" in message and "incomplete" in message
    assert "'val200' needs the examples 'train[63000:63200]'" in message
    assert "train 800, validation 12, test 2" in message
    assert f"tfds build clevr --file_format=array_record --overwrite --data_dir={ARRAY_RECORD}" in message
    assert "pip install tensorflow importlib_resources apache-beam mlcroissant" in message
    with pytest.raises(MissingDataError, match="incomplete"):
        prepare_vtab("clevr_dist", tmp_path, ARRAY_RECORD, progress=False)
    assert list(tmp_path.iterdir()) == []


# Point 5: --download without TensorFlow.


def test_download_without_tensorflow_names_what_to_install(tmp_path):
    if all(importlib.util.find_spec(name) for name in ("tensorflow", "importlib_resources")):
        pytest.skip("TensorFlow and importlib_resources are installed: download_and_prepare would run")
    raw = fake_dtd(tmp_path / "raw", DTD_SMALL_SPLITS)
    # The real download_and_prepare, its download answered by local fake files.
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract", return_value=str(raw)):
        with pytest.raises(DataError) as caught:
            TfdsSource(get_task("dtd"), "test", tmp_path / "tfds", download=True)
    message = str(caught.value)
    assert "No module named" in message
    assert "pip install tensorflow importlib_resources" in message
