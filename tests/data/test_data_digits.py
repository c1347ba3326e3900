import numpy as np
import pytest

from elalora_vit.data import DIGITS_TASK, DataError, load_task_data, write_digits_folder
from elalora_vit.data.digits import digits_arrays, digits_source, digits_split_indices
from elalora_vit.data.folder import read_split_list


def test_digits_images_are_rgb_uint8_in_full_range():
    images, labels = digits_arrays()
    assert images.shape == (1797, 8, 8, 3) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert np.array_equal(images[..., 0], images[..., 2])
    assert sorted(set(labels.tolist())) == list(range(10))


def test_split_sizes_and_union():
    splits = digits_split_indices()
    assert {name: len(indices) for name, indices in splits.items()} == {
        "train800": 800, "val200": 200, "train800val200": 1000, "test": 797}
    assert np.array_equal(splits["train800val200"], np.concatenate([splits["train800"], splits["val200"]]))


def test_splits_are_disjoint_and_cover_everything():
    splits = digits_split_indices()
    train, val, test = (set(splits[name].tolist()) for name in ("train800", "val200", "test"))
    assert not train & val and not train & test and not val & test
    assert train | val | test == set(range(1797))


def test_splits_are_deterministic_and_seeded():
    digits_split_indices.cache_clear()
    first = digits_split_indices()
    digits_split_indices.cache_clear()
    again = digits_split_indices()
    assert all(np.array_equal(first[name], again[name]) for name in first)
    assert not np.array_equal(first["train800"], digits_split_indices(seed=1)["train800"])


def test_splits_are_stratified():
    _, labels = digits_arrays()
    counts = np.bincount(labels[digits_split_indices()["val200"]], minlength=10)
    assert counts.min() >= 19 and counts.max() <= 21  # about 20 per digit


def test_digits_source_items():
    source = digits_source("val200")
    images, labels = digits_arrays()
    index = digits_split_indices()["val200"][7]
    image, label = source[7]
    assert np.array_equal(image, images[index]) and label == labels[index]
    with pytest.raises(DataError, match="unknown split 'validation'"):
        digits_source("validation")


def test_load_task_data_from_digits_upscales():
    data = load_task_data("digits", source="digits", data_dir="/ignored", image_size=16, progress=False)
    assert data.task is DIGITS_TASK and data.num_classes == 10 and data.source == "digits"
    assert len(data.train) == 1000 and len(data.eval) == 797
    image, label = data.train[0]
    assert image.shape == (3, 16, 16) and 0 <= label < 10


def test_written_folder_loads_like_the_source(tmp_path):
    folder = write_digits_folder(tmp_path)
    assert folder == tmp_path / "digits"
    assert len(read_split_list(tmp_path, DIGITS_TASK, "train800val200")) == 1000
    assert len(list((folder / "images" / "test").glob("*.png"))) == 797
    from_folder = load_task_data("digits", source="folder", data_dir=tmp_path, image_size=16,
                                 cache_train=False, progress=False)
    from_source = load_task_data("digits", source="digits", image_size=16, cache_train=False, progress=False)
    for index in (0, 799, 800, 999):
        folder_image, folder_label = from_folder.train[index]
        source_image, source_label = from_source.train[index]
        assert folder_label == source_label
        assert np.array_equal(folder_image.numpy(), source_image.numpy())  # PNG is lossless
    assert from_folder.eval[796][1] == from_source.eval[796][1]


def test_write_digits_folder_keeps_a_complete_folder(tmp_path):
    write_digits_folder(tmp_path)
    (tmp_path / "digits" / "test.txt").write_text("images/test/000000.png 3\n")
    write_digits_folder(tmp_path)
    assert (tmp_path / "digits" / "test.txt").read_text() == "images/test/000000.png 3\n"
    write_digits_folder(tmp_path, overwrite=True)
    assert len((tmp_path / "digits" / "test.txt").read_text().splitlines()) == 797


def test_missing_digits_folder_says_how_to_write_it(tmp_path):
    with pytest.raises(DataError, match="write_digits_folder"):
        load_task_data("digits", source="folder", data_dir=tmp_path, progress=False)
