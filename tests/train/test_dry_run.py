"""``train --dry-run`` and ``vtab-sweep --dry-run``: the checks a run needs, done before
any work, and the plan, printed; nothing trained, nothing written."""

from __future__ import annotations

import shutil

import pytest

from elalora_vit import cli
from elalora_vit.data import DataError
from elalora_vit.train import TrainingError, load_config, train
from elalora_vit.train.dry_run import dry_run
from tests.reliability.conftest import cli_train_args
from tests.train.conftest import TASK, tiny_overrides, write_folder_task


def test_train_dry_run_prints_the_plan_and_writes_nothing(folder_root, tmp_path, capsys):
    out = tmp_path / "run"
    args = cli_train_args(tiny_overrides(folder_root, out))  # 40 images, batch 8: 5 steps x 3 epochs
    assert cli.main([*args, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "steps: 5 per epoch x 3 epochs = 15" in text
    assert "40 train800val200 images for training, 16 test for evaluation" in text
    assert "rounds: " in text and "warm-up steps 1-3" in text and "trainable parameters: " in text
    assert "memory: about " in text and f"output: {out}: a fresh run" in text
    assert not out.exists()


def test_train_dry_run_finds_what_would_stop_the_run(folder_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(folder_root / TASK, root / TASK)
    (root / TASK / "images" / "test" / "000002.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"test/000002\.png is empty"):
        dry_run(load_config(None, tiny_overrides(root, tmp_path / "a")))
    (root / TASK / "images" / "train800" / "000001.png").write_bytes(b"GIF89a broken")
    (root / TASK / "images" / "test" / "000002.png").write_bytes((root / TASK / "images" / "test" / "000001.png").read_bytes())
    with pytest.raises(DataError, match=r"cannot decode image .*train800/000001\.png"):
        dry_run(load_config(None, tiny_overrides(root, tmp_path / "a")))

    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(folder_root, out, **{"optim.epochs": 2}))
    train(cfg, stop_after_epoch=1)
    with pytest.raises(TrainingError, match="unfinished run.*--resume"):
        dry_run(cfg)
    assert "continue from its checkpoint" in "\n".join(dry_run(cfg, resume=True))


def test_sweep_dry_run_checks_every_task(tmp_path, capsys):
    data = tmp_path / "data"
    write_folder_task(data, task="dtd", train=8, test=4)
    write_folder_task(data, task="eurosat", train=8, test=4)
    (data / "eurosat" / "images" / "test" / "000001.png").write_bytes(b"")
    common = ["--methods", "elalora", "--presets", "none", "--output", str(tmp_path / "sweep"),
              "--set", f"data.data_dir={data}", "--set", "model.name=vit_tiny_patch16_224",
              "--set", "model.pretrained=false", "--set", 'model.kwargs={"img_size": 32, "patch_size": 8, "depth": 1}',
              "--set", "data.image_size=32", "--dry-run"]
    assert cli.main(["vtab-sweep", "--tasks", "dtd", "eurosat", "kitti", *common]) == 1
    text = capsys.readouterr().out
    lines = {line.split()[1]: line for line in text.splitlines() if line.startswith(("  ok", "  PROBLEM"))}
    assert lines["dtd"].startswith("  ok") and "12 train800val200 / 4 test images" in lines["dtd"]
    assert lines["eurosat"].startswith("  PROBLEM") and "000001.png is empty" in lines["eurosat"]
    assert lines["kitti"].startswith("  PROBLEM") and "no folder for task 'kitti'" in lines["kitti"]
    assert "prepare-vtab" in text
    assert cli.main(["vtab-sweep", "--tasks", "dtd", *common]) == 0
    assert not (tmp_path / "sweep").exists()


@pytest.mark.parametrize("where", ["/proc/elalora-run", "file/run"])
def test_train_dry_run_fails_exactly_when_the_run_cannot_create_its_folder(where, folder_root, tmp_path, capsys):
    (tmp_path / "file").write_text("a file where a folder must go")
    out = where if where.startswith("/") else str(tmp_path / where)
    args = cli_train_args(tiny_overrides(folder_root, out))
    assert cli.main([*args, "--dry-run"]) != 0
    assert f"cannot write the output folder {out}" in capsys.readouterr().err
    assert cli.main(args) != 0  # the real run fails on the folder too


def test_train_dry_run_removes_the_folders_it_created_to_prove_them(folder_root, tmp_path):
    out = tmp_path / "new" / "nested" / "run"
    dry_run(load_config(None, tiny_overrides(folder_root, out)))
    assert list(tmp_path.iterdir()) == []
