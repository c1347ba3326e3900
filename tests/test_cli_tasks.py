"""Every command that takes a task list takes it with spaces, commas or both (issue 11, point 9)."""

from __future__ import annotations

from pathlib import Path

import pytest

from elalora_vit.cli import main
from elalora_vit.data import GROUPS, SPLITS

NATURAL_KITTI = [*GROUPS["natural"], "kitti"]


def _prepared(root: Path, names) -> Path:
    """Task folders holding the four list files: prepare-vtab skips them (nothing to download)."""
    for name in names:
        (root / name).mkdir(parents=True)
        for split in SPLITS:
            (root / name / f"{split}.txt").write_text("")
    return root


@pytest.mark.parametrize("tasks", [["natural", "kitti"], ["natural,kitti"], ["natural,", "KITTI"], ["cifar100", "natural", "kitti"]])
def test_prepare_vtab_takes_spaces_and_commas(tmp_path, capsys, tasks):
    root = _prepared(tmp_path / "vtab-1k", NATURAL_KITTI)
    assert main(["prepare-vtab", "--tasks", *tasks, "--data-dir", str(root), "--no-progress"]) == 0
    assert capsys.readouterr().out.split() == [str(root / name) for name in NATURAL_KITTI]


def test_prepare_vtab_names_an_unknown_task(tmp_path, capsys):
    assert main(["prepare-vtab", "--tasks", "natural", "imagenet", "--data-dir", str(tmp_path)]) == 2
    assert "unknown VTAB-1k task 'imagenet'" in capsys.readouterr().err


@pytest.mark.parametrize("tasks", [["natural", "kitti"], ["natural,kitti"], ["natural", ",kitti,"]])
def test_vtab_sweep_takes_spaces_and_commas(tmp_path, capsys, monkeypatch, tasks):
    monkeypatch.chdir(tmp_path)  # no data here: the dry run plans every task, then its data check fails (exit 1)
    code = main(["vtab-sweep", "--dry-run", "--tasks", *tasks, "--methods", "lora", "--presets", "none",
                 "--output", str(tmp_path / "sweep")])
    printed = capsys.readouterr().out
    assert code == 1 and f"{len(NATURAL_KITTI)} runs" in printed.splitlines()[0]
    assert [line.split()[1] for line in printed.splitlines() if line.startswith("  new")] == [
        f"{name}/lora/seed0" for name in NATURAL_KITTI
    ]
    assert sum(line.strip().startswith("PROBLEM") for line in printed.splitlines()) == len(NATURAL_KITTI)


def test_an_alias_writes_where_the_sweep_does(tmp_path, capsys):
    main(["vtab-sweep", "--dry-run", "--tasks", "cifar100", "--methods", "elalora", "--presets", "none",
          "--output", str(tmp_path)])
    assert str(tmp_path / "cifar" / "elalora" / "seed0") in capsys.readouterr().out
