import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elalora_vit.data import DataError, MissingDataError, get_task
from elalora_vit.data.folder import folder_source, load_rgb_image, read_split_list

FOLDER_TASK = "eurosat"  # the task conftest.build_task_folder writes
TASK = get_task(FOLDER_TASK)
PREPARE = f"elalora-vit prepare-vtab --tasks {FOLDER_TASK} --data-dir"


def rewrite_list(folder_root: Path, lines: list[str], split: str = "train800") -> Path:
    path = folder_root / FOLDER_TASK / f"{split}.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def solid_image(value: int) -> np.ndarray:
    return np.full((10, 12, 3), value, dtype=np.uint8)


def test_reads_every_split(folder_root, kit):
    for split, size in {**kit.split_sizes, "train800val200": 9}.items():
        entries = read_split_list(folder_root, TASK, split)
        assert len(entries) == size
        assert all(entry.path.is_file() for entry in entries)
    assert [entry.label for entry in read_split_list(folder_root, TASK, "train800")] == [0, 1, 2, 0, 1, 2]


def test_folder_source_decodes_rgb_images(folder_root, kit):
    image, label = folder_source(folder_root, TASK, "test")[1]
    assert image.mode == "RGB" and image.size == (12, 10)
    assert label == 1
    assert np.array_equal(np.asarray(image), kit.solid_image(100))  # 10th image overall -> value 100


def test_blank_lines_and_trailing_whitespace_are_tolerated(folder_root):
    rewrite_list(folder_root, ["", "images/train800/000000.png 1   ", "   ", "\timages/train800/000001.png\t2\t", ""])
    entries = read_split_list(folder_root, TASK, "train800")
    assert [(entry.path.name, entry.label) for entry in entries] == [("000000.png", 1), ("000001.png", 2)]


def test_paths_with_spaces_are_allowed(folder_root):
    (folder_root / FOLDER_TASK / "images" / "with space").mkdir()
    Image.fromarray(solid_image(5)).save(folder_root / FOLDER_TASK / "images" / "with space" / "a b.png")
    rewrite_list(folder_root, ["images/with space/a b.png 4"])
    assert read_split_list(folder_root, TASK, "train800")[0].label == 4


def assert_layout_help(message: str, root: Path):
    assert "Expected the VTAB-1k folder layout" in message
    for split in ("train800", "val200", "train800val200", "test"):
        assert str(root / FOLDER_TASK / f"{split}.txt") in message
    assert f"{PREPARE} {root}" in message


def test_missing_root_shows_layout_and_prepare_command(tmp_path):
    root = tmp_path / "nowhere"
    with pytest.raises(MissingDataError) as caught:
        read_split_list(root, TASK, "train800")
    assert f"data folder {root} does not exist" in str(caught.value)
    assert_layout_help(str(caught.value), root)
    assert isinstance(caught.value, FileNotFoundError) and isinstance(caught.value, DataError)


def test_missing_task_folder_shows_layout_and_prepare_command(tmp_path):
    (tmp_path / "root").mkdir()
    with pytest.raises(MissingDataError) as caught:
        read_split_list(tmp_path / "root", TASK, "train800")
    assert f"no folder for task '{FOLDER_TASK}'" in str(caught.value)
    assert_layout_help(str(caught.value), tmp_path / "root")


def test_missing_list_file_names_it(folder_root):
    (folder_root / FOLDER_TASK / "val200.txt").unlink()
    with pytest.raises(MissingDataError) as caught:
        read_split_list(folder_root, TASK, "val200")
    assert f"list file {folder_root / FOLDER_TASK / 'val200.txt'} is missing" in str(caught.value)
    assert_layout_help(str(caught.value), folder_root)


def test_alias_folder_is_found(tmp_path):
    root = tmp_path / "root"
    folder = root / "cifar100"  # some VTAB-1k copies use the alias as folder name
    (folder / "images").mkdir(parents=True)
    Image.fromarray(solid_image(1)).save(folder / "images" / "a.png")
    (folder / "test.txt").write_text("images/a.png 99\n")
    entries = read_split_list(root, get_task("cifar"), "test")
    assert entries[0].label == 99


@pytest.mark.parametrize(
    "line",
    ["images/train800/000000.png", "images/train800/000000.png three", "7", "images/train800/000000.png 1.5"],
)
def test_malformed_line_names_file_and_line(folder_root, line):
    list_path = rewrite_list(folder_root, ["images/train800/000001.png 0", "", line])
    with pytest.raises(DataError) as caught:
        read_split_list(folder_root, TASK, "train800")
    message = str(caught.value)
    assert f"{list_path}, line 3" in message
    assert "malformed" in message and "<relative image path> <integer label>" in message


@pytest.mark.parametrize("label", [10, -1, 12345])
def test_label_out_of_range_names_file_line_label_and_range(folder_root, label):
    list_path = rewrite_list(folder_root, ["images/train800/000000.png 0", f"images/train800/000001.png {label}"])
    with pytest.raises(DataError) as caught:
        read_split_list(folder_root, TASK, "train800")
    message = str(caught.value)
    assert f"{list_path}, line 2" in message
    assert f"label {label} is out of range" in message
    assert "[0, 10)" in message


def test_parent_path_escaping_the_task_folder_is_refused(folder_root):
    Image.fromarray(solid_image(1)).save(folder_root / "outside.png")
    rewrite_list(folder_root, ["../outside.png 1"])
    with pytest.raises(DataError, match=r"line 1: image path '\.\./outside\.png' resolves to .*outside the task folder"):
        read_split_list(folder_root, TASK, "train800")


def test_absolute_path_is_refused(folder_root):
    absolute = folder_root / FOLDER_TASK / "images" / "train800" / "000000.png"
    rewrite_list(folder_root, [f"{absolute} 1"])
    with pytest.raises(DataError, match="line 1: image path .* is absolute"):
        read_split_list(folder_root, TASK, "train800")


def test_symlink_out_of_the_task_folder_is_refused(folder_root, tmp_path):
    Image.fromarray(solid_image(1)).save(tmp_path / "secret.png")
    os.symlink(tmp_path / "secret.png", folder_root / FOLDER_TASK / "images" / "link.png")
    rewrite_list(folder_root, ["images/link.png 1"])
    with pytest.raises(DataError, match="line 1: image path 'images/link.png' resolves to .*secret.png, outside"):
        read_split_list(folder_root, TASK, "train800")


def test_missing_image_names_file_and_line(folder_root):
    list_path = rewrite_list(folder_root, ["images/train800/nothere.png 1"])
    with pytest.raises(DataError, match=f"{list_path}, line 1: image .*nothere.png does not exist"):
        read_split_list(folder_root, TASK, "train800")


def test_empty_list_file_is_an_error(folder_root):
    list_path = rewrite_list(folder_root, ["", "  "])
    with pytest.raises(DataError, match=f"list file {list_path} has no entries"):
        read_split_list(folder_root, TASK, "train800")


def test_zero_byte_image_is_named(folder_root):
    image = folder_root / FOLDER_TASK / "images" / "train800" / "000002.png"
    image.write_bytes(b"")
    source = folder_source(folder_root, TASK, "train800")
    with pytest.raises(DataError, match=f"image {image} is empty \\(0 bytes\\)"):
        source[2]
    assert source[1][1] == 1  # the other images still load


def test_corrupt_image_is_named(folder_root):
    image = folder_root / FOLDER_TASK / "images" / "train800" / "000003.png"
    image.write_bytes(b"this is not a png")
    with pytest.raises(DataError, match=f"cannot decode image {image}"):
        folder_source(folder_root, TASK, "train800")[3]


def test_truncated_image_is_named(tmp_path):
    path = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DataError, match=f"cannot decode image {path}"):
        load_rgb_image(path)


def test_grayscale_and_rgba_images_become_rgb(tmp_path):
    Image.fromarray(np.full((4, 5), 9, dtype=np.uint8), mode="L").save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 5, 4), 9, dtype=np.uint8), mode="RGBA").save(tmp_path / "a.png")
    for name in ("g.png", "a.png"):
        image = load_rgb_image(tmp_path / name)
        assert image.mode == "RGB" and np.asarray(image).shape == (4, 5, 3)
