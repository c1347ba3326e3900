"""Finished tiny runs of every method, trained once per session, for evaluate / predict / export."""

from pathlib import Path

import pytest

from tests.train.conftest import tiny_overrides, write_folder_task

METHODS = ("elalora", "lora", "adalora", "full", "linear")
TINY_MODEL = {"img_size": 32, "patch_size": 8, "depth": 2}


@pytest.fixture(scope="session")
def use_root(tmp_path_factory) -> Path:
    # 48 test images: an accuracy that matches by chance is unlikely to match for all methods.
    return write_folder_task(tmp_path_factory.mktemp("use-data"), test=48)


@pytest.fixture(scope="session")
def finished_runs(use_root, tmp_path_factory) -> dict[str, Path]:
    """{method: run folder} of a finished 2-epoch run per method (random tiny ViT backbone)."""
    from elalora_vit.train import load_config, train

    runs = {}
    for method in METHODS:
        out = tmp_path_factory.mktemp("use-runs") / method
        overrides = tiny_overrides(use_root, out, method=method, **{"model.kwargs": TINY_MODEL, "optim.epochs": 2})
        train(load_config(None, overrides))
        runs[method] = out
    return runs
