"""The TFDS path, offline: `tfds.testing.mock_data` with our own examples per split."""

import pickle

import numpy as np
import pytest
import tensorflow_datasets as tfds

from elalora_vit.data import (
    TASKS,
    DataError,
    MissingDataError,
    UnknownTaskError,
    get_task,
    load_task_data,
    prepare_vtab,
)
from elalora_vit.data.folder import read_split_list
from elalora_vit.data.tasks import selected_tasks
from elalora_vit.data.tfds_source import TfdsSource

CIFAR = get_task("cifar")


def cifar_example(value: int, label: int) -> dict:
    return {
        "image": np.full((32, 32, 3), value, dtype=np.uint8),
        "label": np.int64(label),
        "coarse_label": np.int64(0),
        "id": "train_0",
    }


def cifar_splits(train=5, val=3, test=4) -> dict[str, list]:
    """Examples per TFDS split string of cifar; values tell the splits apart."""
    splits = {
        "train[:800]": [cifar_example(10 + i, i) for i in range(train)],
        "train[45000:45200]": [cifar_example(100 + i, 50 + i) for i in range(val)],
        "test": [cifar_example(200 + i, 99 - i) for i in range(test)],
    }
    splits["train[:800]+train[45000:45200]"] = splits["train[:800]"] + splits["train[45000:45200]"]
    return splits


class FakeDataSource:
    """Our examples per TFDS split string; `as_data_source` stands in for the builder method."""

    def __init__(self, splits: dict[str, list]):
        self.splits = splits
        self.calls: list[tuple[str, str]] = []

    def mock(self):
        """`tfds.testing.mock_data` serving these examples (it patches a method, so pass a function)."""

        def as_data_source(builder, split, decoders=None, deserialize_method=None, **kwargs):
            self.calls.append((builder.info.full_name, split))
            return self.splits[split]

        return tfds.testing.mock_data(as_data_source_fn=as_data_source)


@pytest.fixture
def fake_cifar():
    fake = FakeDataSource(cifar_splits())
    with fake.mock():
        yield fake


def test_tfds_source_reads_the_vtab_split_strings(fake_cifar):
    val = TfdsSource(CIFAR, "val200", "/unused")
    assert fake_cifar.calls == [("cifar100/3.0.2", "train[45000:45200]")]
    assert len(val) == 3
    image, label = val[1]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and int(image[0, 0, 0]) == 101
    assert label == 51
    union = TfdsSource(CIFAR, "train800val200")
    assert fake_cifar.calls[-1] == ("cifar100/3.0.2", "train[:800]+train[45000:45200]")
    assert [union[i][1] for i in range(len(union))] == [0, 1, 2, 3, 4, 50, 51, 52]


def test_tfds_source_index_out_of_range(fake_cifar):
    source = TfdsSource(CIFAR, "test")
    with pytest.raises(IndexError):
        source[4]
    assert source[-1][1] == 96


def test_tfds_source_pickles_and_reopens(fake_cifar):
    source = TfdsSource(CIFAR, "test")
    clone = pickle.loads(pickle.dumps(source))
    assert clone._examples is None  # the data source is not carried along
    assert clone[2][1] == source[2][1] == 97
    assert len(fake_cifar.calls) == 2


def test_calls_data_source_with_data_dir_in_any_format_images_left_encoded(monkeypatch, tmp_path):
    seen = {}

    def spy(name, **kwargs):
        seen.update(kwargs, name=name)
        return [cifar_example(0, 0)]

    monkeypatch.setattr(tfds, "data_source", spy)
    TfdsSource(get_task("dtd"), "train800val200", tmp_path)
    assert seen["name"] == "dtd:3.*.*"
    assert seen["split"] == "train[:800]+validation[:200]"
    assert seen["data_dir"] == str(tmp_path)
    assert "builder_kwargs" not in seen  # the format TFDS wrote, array_record or a converted copy
    assert isinstance(seen["decoders"]["image"], tfds.decode.SkipDecoding)
    assert seen["download"] is False


def test_every_task_resolves_to_an_installed_tfds_builder():
    recorded = {}

    def fake(builder, split, decoders=None, deserialize_method=None, **kwargs):
        recorded[builder.info.full_name] = split
        return [{"image": np.zeros((4, 4, 3), dtype=np.uint8), "label": np.int64(0)}]

    with tfds.testing.mock_data(as_data_source_fn=fake):
        for task in TASKS:
            recorded.clear()
            assert len(TfdsSource(task, "test")) == 1
            (full_name, split), = recorded.items()
            builder, version = full_name.rsplit("/", 1)
            assert builder == task.tfds_builder
            assert all(spec in ("*", part) for spec, part in zip(task.tfds_version.split("."), version.split(".")))
            assert split == task.test


def test_clevr_labels_come_from_the_objects():
    def clevr(depths):
        coords = np.array([[1.0, 2.0, d] for d in depths], dtype=np.float32)
        return {"image": np.zeros((6, 8, 3), dtype=np.uint8),
                "objects": {"size": np.zeros(len(depths), dtype=np.int64), "pixel_coords": coords}}

    examples = [clevr([9.2, 12.0, 20.0]), clevr([7.0] * 10), clevr([50.0] * 4)]
    with FakeDataSource({"validation": examples}).mock():
        count = TfdsSource(get_task("clevr_count"), "test")
        dist = TfdsSource(get_task("clevr_dist"), "test")
        assert [count[i][1] for i in range(3)] == [0, 7, 1]
        assert [dist[i][1] for i in range(3)] == [3, 0, 5]


def test_rule_giving_a_label_out_of_range_names_the_example():
    far = {"image": np.zeros((6, 8, 3), dtype=np.uint8),
           "objects": {"size": np.zeros(1, dtype=np.int64),
                       "pixel_coords": np.array([[0.0, 0.0, 150.0]], dtype=np.float32)}}
    with FakeDataSource({"validation": [far]}).mock():
        source = TfdsSource(get_task("clevr_dist"), "test")
        with pytest.raises(DataError, match=r"'clevr_dist', split 'test', example 0: .* label 6, outside \[0, 6\)"):
            source[0]


def test_dsprites_images_are_scaled_and_tiled():
    sprite = np.zeros((64, 64, 1), dtype=np.uint8)
    sprite[10:20, 10:20] = 1
    example = {"image": sprite, "label_x_position": np.int64(31), "label_orientation": np.int64(39)}
    with FakeDataSource({"train[:800]": [example]}).mock():
        image, label = TfdsSource(get_task("dsprites_ori"), "train800")[0]
    assert image.shape == (64, 64, 3)
    assert image[15, 15].tolist() == [255, 255, 255] and image[0, 0].tolist() == [0, 0, 0]
    assert label == 15


def test_unprepared_data_says_how_to_prepare(tmp_path):
    with pytest.raises(MissingDataError) as caught:
        TfdsSource(CIFAR, "val200", tmp_path)
    message = str(caught.value)
    assert "'cifar'" in message and "not prepared" in message and str(tmp_path) in message
    assert f"tfds build cifar100 --file_format=array_record --data_dir={tmp_path}" in message
    assert "pip install tensorflow importlib_resources" in message
    assert f"elalora-vit prepare-vtab --tasks cifar --download --tfds-dir {tmp_path}" in message
    assert "manual" not in message


def test_unprepared_manual_download_task_mentions_it(tmp_path):
    with pytest.raises(MissingDataError, match="downloaded by hand"):
        TfdsSource(get_task("diabetic_retinopathy"), "train800", tmp_path)


def test_missing_tensorflow_is_explained(monkeypatch):
    def needs_tensorflow(name, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds, "data_source", needs_tensorflow)
    with pytest.raises(DataError, match="(?s)No module named 'tensorflow'.*pip install tensorflow"):
        TfdsSource(CIFAR, "train800", download=True)


def test_load_task_data_from_tfds(fake_cifar):
    data = load_task_data("cifar100", source="tfds", tfds_dir="/unused", image_size=8, progress=False)
    assert data.source == "tfds" and data.num_classes == 100 and data.task is CIFAR
    assert len(data.train) == 8 and len(data.eval) == 4
    image, label = data.train[5]
    assert image.shape == (3, 8, 8) and label == 50
    assert data.eval[0][1] == 99


# prepare_vtab


def test_prepare_writes_the_folder_layout_and_it_loads(fake_cifar, tmp_path):
    root = tmp_path / "vtab"
    folders = prepare_vtab("cifar100", root, tmp_path / "tfds", progress=False)
    folder = root / "cifar"
    assert folders == [folder]
    lines = {split: (folder / f"{split}.txt").read_text().splitlines()
             for split in ("train800", "val200", "train800val200", "test")}
    assert lines["train800"][0] == "images/train800/000000.jpg 0"
    assert lines["val200"] == ["images/val200/000000.jpg 50", "images/val200/000001.jpg 51",
                               "images/val200/000002.jpg 52"]
    assert lines["train800val200"] == lines["train800"] + lines["val200"]
    assert len(lines["test"]) == 4 and lines["test"][3] == "images/test/000003.jpg 96"
    assert len(list((folder / "images" / "test").glob("*.jpg"))) == 4
    assert sorted(p.name for p in root.iterdir()) == ["cifar"]  # no staging folder left

    data = load_task_data("cifar", source="folder", data_dir=root, image_size=32, progress=False,
                          mean=(0, 0, 0), std=(1, 1, 1))
    assert [data.train[i][1] for i in range(len(data.train))] == [0, 1, 2, 3, 4, 50, 51, 52]
    # solid colours survive JPEG closely: value 100 + 2 for the third val200 image
    assert abs(float(data.train[7][0].mean()) * 255 - 102) < 2


def test_prepare_shows_progress(fake_cifar, tmp_path, capsys):
    prepare_vtab("cifar", tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "cifar train800" in err and "cifar test" in err


def test_prepare_skips_a_complete_folder(fake_cifar, tmp_path):
    prepare_vtab(["cifar"], tmp_path, progress=False)
    calls = len(fake_cifar.calls)
    marker = tmp_path / "cifar" / "images" / "test" / "000000.jpg"
    marker.write_bytes(b"kept")
    prepare_vtab(["cifar"], tmp_path, progress=False)
    assert len(fake_cifar.calls) == calls and marker.read_bytes() == b"kept"
    prepare_vtab(["cifar"], tmp_path, progress=False, overwrite=True)
    assert len(fake_cifar.calls) > calls and marker.read_bytes() != b"kept"


def test_prepare_refuses_an_incomplete_existing_folder(fake_cifar, tmp_path):
    (tmp_path / "cifar").mkdir()
    (tmp_path / "cifar" / "train800.txt").write_text("mine\n")
    with pytest.raises(DataError, match="already exists; pass overwrite=True"):
        prepare_vtab(["cifar"], tmp_path, progress=False)
    assert (tmp_path / "cifar" / "train800.txt").read_text() == "mine\n"


def test_a_crash_leaves_no_half_written_folder(tmp_path):
    splits = cifar_splits()
    splits["test"][2] = {"image": np.zeros((4, 4, 5), dtype=np.uint8), "label": np.int64(0)}
    with FakeDataSource(splits).mock():
        with pytest.raises(DataError, match="shape"):
            prepare_vtab(["cifar"], tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_a_crash_while_overwriting_keeps_the_old_folder(tmp_path):
    with FakeDataSource(cifar_splits()).mock():
        prepare_vtab(["cifar"], tmp_path, progress=False)
    before = (tmp_path / "cifar" / "test.txt").read_text()
    splits = cifar_splits(test=3)
    splits["test"][1] = {"image": np.zeros((4, 4, 5), dtype=np.uint8), "label": np.int64(0)}
    with FakeDataSource(splits).mock():
        with pytest.raises(DataError):
            prepare_vtab(["cifar"], tmp_path, progress=False, overwrite=True)
    assert (tmp_path / "cifar" / "test.txt").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cifar"]
    assert len(read_split_list(tmp_path, CIFAR, "test")) == 4


def test_prepare_passes_download_and_explains_missing_tensorflow(monkeypatch, tmp_path):
    def needs_tensorflow(name, **kwargs):
        assert kwargs["download"] is True
        raise ModuleNotFoundError("No module named 'tensorflow'")

    monkeypatch.setattr(tfds, "data_source", needs_tensorflow)
    with pytest.raises(DataError, match="needs TensorFlow"):
        prepare_vtab("eurosat", tmp_path, download=True, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_prepare_without_tfds_data_says_how_to_prepare(tmp_path):
    with pytest.raises(MissingDataError, match="tfds build eurosat/rgb"):
        prepare_vtab("eurosat", tmp_path / "out", tmp_path / "tfds", progress=False)


def test_task_selection():
    assert [t.name for t in selected_tasks("all")] == [t.name for t in TASKS]
    assert [t.name for t in selected_tasks("specialized")] == [
        "patch_camelyon", "eurosat", "resisc45", "diabetic_retinopathy"]
    assert [t.name for t in selected_tasks("dtd, CIFAR100,dtd")] == ["cifar", "dtd"]
    assert [t.name for t in selected_tasks(["kitti", "natural"])][-1] == "kitti"
    with pytest.raises(UnknownTaskError, match="'cifar10'"):
        selected_tasks("cifar10")
    with pytest.raises(DataError, match="no tasks selected"):
        selected_tasks(" , ")


def test_class_names_come_from_tfds_where_it_names_the_labels(fake_cifar, tmp_path):
    from elalora_vit.data.prepare import tfds_class_names

    assert tfds_class_names(get_task("eurosat"), tmp_path)[:2] == ["AnnualCrop", "Forest"]
    assert tfds_class_names(get_task("clevr_count"), tmp_path) is None  # derived labels: no names
    # cifar100 reads its names from the prepared dataset_info; offline TFDS has only indices
    prepare_vtab("cifar", tmp_path, progress=False)
    assert not (tmp_path / "cifar" / "classes.txt").exists()
