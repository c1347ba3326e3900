"""check-data: a VTAB-1k task folder against the benchmark's definition, and the
sweep's fast pre-flight. The folder is kitti-shaped (4 classes, 800 / 200 / 711)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from elalora_vit.cli import main
from elalora_vit.data import DataError, get_task
from elalora_vit.data.check import BROKEN, NONSTANDARD, check_folder_task

KITTI = get_task("kitti")


@pytest.fixture(scope="module")
def clean_root(tmp_path_factory) -> Path:
    """A standard kitti folder of distinct 4 x 4 PNGs: 800 / 200 / 1000 / 711."""
    root = tmp_path_factory.mktemp("vtab")
    folder = root / "kitti"
    lists = {}
    for split, count, offset in (("train800", 800, 0), ("val200", 200, 800), ("test", 711, 1000)):
        (folder / "images" / split).mkdir(parents=True)
        lists[split] = []
        for i in range(count):
            n = offset + i  # a distinct image per example: no accidental test/train twins
            pixels = np.array([n % 256, n // 256, 7], dtype=np.uint8) * np.ones((4, 4, 3), np.uint8)
            Image.fromarray(pixels).save(folder / "images" / split / f"{i:06d}.png")
            lists[split].append(f"images/{split}/{i:06d}.png {i % 4}")
    lists["train800val200"] = lists["train800"] + lists["val200"]
    for split, lines in lists.items():
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def root(clean_root, tmp_path) -> Path:
    shutil.copytree(clean_root, tmp_path / "vtab")
    return tmp_path / "vtab"


def edit(path: Path, change) -> None:
    lines = path.read_text().splitlines()
    path.write_text("\n".join(change(lines)) + "\n")


def test_a_standard_folder_passes_with_sizes_classes_and_list_hashes(clean_root, capsys):
    check = check_folder_task(clean_root, KITTI)
    assert check.ok, check.problems
    assert check.sizes == {"train800": 800, "val200": 200, "train800val200": 1000, "test": 711}
    assert check.classes == "4 / 4" and check.decoded == 1711 and len(check.list_sha256) == 4
    assert main(["check-data", "--tasks", "kitti", "--data-dir", str(clean_root)]) == 0
    out = capsys.readouterr().out
    assert "kitti: ok" in out and "1 of 1 tasks pass" in out


def test_each_violation_is_named_with_its_file_and_line(root, capsys):
    folder = root / "kitti"
    edit(folder / "train800.txt", lambda lines: lines + [lines[4]])  # line 801 repeats line 5
    edit(folder / "val200.txt", lambda lines: lines[:-1])  # 199 images
    edit(folder / "train800val200.txt", lambda lines: [line for line in lines if not line.endswith(" 3")])
    shutil.copy(folder / "images/train800/000002.png", folder / "images/test/000010.png")  # test line 11
    (folder / "images/test/000020.png").write_bytes(b"not a png")  # test line 21
    check = check_folder_task(root, KITTI)
    problems = {str(p): p.kind for p in check.problems}
    assert problems[f"{folder / 'train800.txt'}, line 801: duplicated line: 000004.png is already on line 5"] == BROKEN
    assert problems[f"{folder / 'val200.txt'}: 199 images, VTAB-1k has 200 in val200"] == NONSTANDARD
    assert problems[f"{folder / 'train800val200.txt'}: missing class(es) 3: no training image has that label"] == NONSTANDARD
    assert any(p.startswith(f"{folder / 'train800val200.txt'}: 750 images") for p in problems)
    assert any(p.startswith(f"{folder / 'train800val200.txt'}: is not train800.txt followed by val200.txt") for p in problems)
    assert f"{folder / 'test.txt'}, line 11: test image 000010.png is byte-identical to train800val200.txt line 3" in problems
    assert any(p.startswith(f"{folder / 'test.txt'}, line 21: cannot decode image") for p in problems)
    assert main(["check-data", "--tasks", "kitti", "--data-dir", str(root)]) == 1
    out = capsys.readouterr().out
    assert "<-- wrong count" in out and "BROKEN:" in out and "violations in kitti" in out


def test_labels_out_of_range_and_missing_images_are_broken(root):
    folder = root / "kitti"
    edit(folder / "test.txt", lambda lines: [lines[0].replace(" 0", " 9"), "images/test/missing.png 1", *lines[2:]])
    problems = [str(p) for p in check_folder_task(root, KITTI, full=False).broken()]
    assert problems[0].startswith(f"{folder / 'test.txt'}, line 1: label 9 is out of range")
    assert problems[1].startswith(f"{folder / 'test.txt'}, line 2: image ") and "does not exist" in problems[1]


def test_the_fast_check_without_test_never_reads_the_test_list(root):
    (root / "kitti" / "test.txt").unlink()
    check = check_folder_task(root, KITTI, full=False, splits=("train800", "val200", "train800val200"))
    assert check.ok and "test" not in check.sizes and check.decoded is None


def test_the_sweep_refuses_broken_data_before_its_first_run(root, tmp_path):
    edit(root / "kitti" / "train800.txt", lambda lines: lines + [lines[0]])
    output = tmp_path / "sweep"
    with pytest.raises(DataError, match=r"broken data; no run was started:\n.*train800.txt, line 801: duplicated"):
        main(["-v", "vtab-sweep", "--tasks", "kitti", "--methods", "linear", "--output", str(output),
              "--set", f"data.data_dir={root}", "--presets", "none"])
    assert not output.exists()


# ----------------------------------------------------------------------------- TFDS
def test_tfds_data_is_checked_for_sizes_classes_and_test_twins():
    from elalora_vit.data.check import check_tfds_task
    from elalora_vit.data.fingerprint import split_fingerprint
    from tests.data.test_data_tfds import CIFAR, FakeDataSource, cifar_splits

    splits = cifar_splits()
    splits["test"][1] = splits["train[:800]"][2]  # a test image identical to a training image
    with FakeDataSource(splits).mock():
        check = check_tfds_task(CIFAR, None)
        fingerprint = split_fingerprint(CIFAR, "test", "tfds", "", None)
        assert fingerprint == split_fingerprint(CIFAR, "test", "tfds", "", None)
        assert fingerprint != split_fingerprint(CIFAR, "val200", "tfds", "", None)
    problems = [str(p) for p in check.problems]
    assert check.sizes == {"train800": 5, "val200": 3, "train800val200": 8, "test": 4}
    assert "cifar100:3.*.* train[:800]: 5 examples, VTAB-1k has 800 in train800" in problems
    assert "cifar100:3.*.* test: 4 examples, VTAB-1k has 10000 in test" in problems
    assert any(p.startswith("cifar100:3.*.* train[:800]+train[45000:45200]: missing class(es)") for p in problems)
    assert "cifar100:3.*.* test, example 1: identical to train800val200 example 2" in problems
    assert check.classes == "8 / 100" and check.decoded == 20
