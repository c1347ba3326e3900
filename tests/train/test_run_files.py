"""RunFiles is the one place that names a run's files: a run writes those and nothing
else (no temporary file is left behind by the atomic writes)."""

import dataclasses

from elalora_vit.train import RunFiles, load_config, train
from tests.train.conftest import tiny_overrides


def named_files(files: RunFiles) -> dict:
    return {f.name: getattr(files, f.name) for f in dataclasses.fields(files) if f.name != "root"}


def test_a_run_writes_the_files_run_files_names_and_nothing_else(folder_root, tmp_path):
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(folder_root, out, **{"optim.epochs": 1})))
    files = RunFiles(out)
    named = named_files(files)
    assert set(out.iterdir()) == set(named.values()) - {files.weights}  # ElaLoRA saves adapters, not weights
    assert all(path.parent == out for path in named.values())


def test_run_files_are_plain_fields(tmp_path):
    files = RunFiles(str(tmp_path))
    assert files.root == tmp_path and files.result == tmp_path / "result.json"
    assert files.checkpoint == tmp_path / "checkpoint.pt" and files.config == tmp_path / "config.yaml"
    assert len(set(named_files(files).values())) == len(named_files(files))  # no two share a file
