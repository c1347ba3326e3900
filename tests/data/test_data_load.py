import ast
import sys
from pathlib import Path

import pytest
import torch

import elalora_vit.data as data_package
from elalora_vit.data import (
    DataError,
    LazyDataset,
    MissingDataError,
    TensorCacheDataset,
    UnknownTaskError,
    get_task,
    load_task_data,
)


def test_folder_source_gives_cached_train_and_lazy_eval(folder_root):
    data = load_task_data("EUROSAT", data_dir=folder_root, image_size=8, progress=False)
    assert data.task is get_task("eurosat") and data.num_classes == 10 and data.source == "folder"
    assert isinstance(data.train, TensorCacheDataset) and isinstance(data.eval, LazyDataset)
    assert len(data.train) == 9 and len(data.eval) == 4
    image, label = data.train[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32 and isinstance(label, int)
    assert (data.train_split, data.eval_split) == ("train800val200", "test")


def test_splits_and_caching_can_be_chosen(folder_root):
    data = load_task_data("eurosat", data_dir=folder_root, train_split="train800", eval_split="val200",
                          image_size=8, cache_train=False)
    assert isinstance(data.train, LazyDataset)
    assert (len(data.train), len(data.eval)) == (6, 3)


def test_a_resolved_task_is_used_as_it_is(folder_root):
    from elalora_vit.data import DIGITS_TASK, resolve_task

    task = resolve_task("EUROSAT", "folder")
    data = load_task_data(task, data_dir=folder_root, image_size=8, interpolation="nearest", progress=False)
    assert data.task is task and data.num_classes == 10
    assert data.train.preprocess.interpolation == data.eval.preprocess.interpolation == "nearest"
    with pytest.raises(DataError, match="no TFDS builder"):
        resolve_task(DIGITS_TASK, "tfds")  # a resolved task is still checked against the source


def test_planning_a_sweep_does_not_import_the_tfds_source():
    import subprocess
    import sys

    code = "import sys, elalora_vit.sweep.plan; print('elalora_vit.data.tfds_source' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_mean_and_std_are_applied(folder_root):
    raw = load_task_data("eurosat", data_dir=folder_root, image_size=8, mean=(0, 0, 0), std=(1, 1, 1),
                         progress=False)
    imagenet = load_task_data("eurosat", data_dir=folder_root, image_size=8, progress=False)
    expected = (raw.eval[1][0] - torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.allclose(imagenet.eval[1][0], expected, atol=1e-5)
    assert 0.0 <= float(raw.train[3][0].min()) and float(raw.train[3][0].max()) <= 1.0


def test_invalid_source_lists_the_valid_ones(folder_root):
    with pytest.raises(DataError, match="unknown data source 'files'; valid sources: folder, tfds, digits"):
        load_task_data("eurosat", source="files", data_dir=folder_root)


def test_invalid_split_is_refused(folder_root):
    with pytest.raises(DataError, match="unknown split 'train'"):
        load_task_data("eurosat", data_dir=folder_root, train_split="train")


def test_unknown_task(folder_root):
    with pytest.raises(UnknownTaskError, match="Valid names: cifar, caltech101"):
        load_task_data("imagenet", data_dir=folder_root)


def test_digits_source_serves_only_digits():
    with pytest.raises(DataError, match="source 'digits' serves only the task 'digits', not 'cifar'"):
        load_task_data("cifar", source="digits")
    with pytest.raises(DataError, match="'digits' has no TFDS builder"):
        load_task_data("digits", source="tfds")


def test_missing_task_folder_error_reaches_the_caller(tmp_path):
    with pytest.raises(MissingDataError, match="elalora-vit prepare-vtab --tasks dtd --data-dir"):
        load_task_data("dtd", data_dir=tmp_path)


def test_bad_eval_list_fails_before_caching(folder_root, monkeypatch):
    (folder_root / "eurosat" / "test.txt").write_text("images/test/000000.png 10\n")
    monkeypatch.setattr(data_package, "TensorCacheDataset", None)  # caching must not be reached
    with pytest.raises(DataError, match="test.txt, line 1: label 10 is out of range"):
        load_task_data("eurosat", data_dir=folder_root)


def test_data_package_imports_no_model_or_core_code():
    package_dir = Path(data_package.__file__).parent
    imported = set()
    for path in package_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
    assert not {name for name in imported if name.split(".")[0] == "timm"}
    assert not {name for name in imported if name.startswith(("elalora_vit.core", "elalora_vit.train"))}
    # Besides itself, only the standard-library-only storage package (atomic files, the folder lock).
    assert {name for name in imported if name.startswith("elalora_vit.")} <= {
        f"elalora_vit.data.{path.stem}" for path in package_dir.glob("*.py")} | {
        "elalora_vit.storage.files", "elalora_vit.storage.lock"}


def test_storage_package_imports_only_the_standard_library():
    storage = Path(data_package.__file__).parents[1] / "storage"
    for path in storage.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] in sys.stdlib_module_names or name == "__future__", (path.name, name)


def test_public_api_is_exported():
    for name in ("load_task_data", "TaskData", "get_task", "TASKS", "DataError", "UnknownTaskError",
                 "prepare_vtab", "write_digits_folder"):
        assert name in data_package.__all__ and hasattr(data_package, name)
