"""A full disk and a read-only folder: a clear error naming the folder or file, and earlier
files intact.  Uses small tmpfs mounts, so it runs as root (as CI does) and is skipped
where mounting is not permitted."""

from __future__ import annotations

import subprocess
import uuid
from pathlib import Path

import pytest

from elalora_vit import cli
from tests.reliability.conftest import cli_train_args
from tests.train.conftest import tiny_overrides


@pytest.fixture
def mount(tmp_path):
    mounted = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def test_full_disk_names_the_file_and_keeps_earlier_files(mount, task_root, capsys):
    disk = mount("size=300k")
    (disk / "earlier.txt").write_text("written before the run")
    code = cli.main(cli_train_args(tiny_overrides(task_root, disk / "run")))
    err = capsys.readouterr().err
    assert code != 0 and f"cannot write {disk / 'run'}" in err and "No space left on device" in err, err
    assert (disk / "earlier.txt").read_text() == "written before the run"
    assert not [p for p in disk.rglob("*") if ".tmp" in p.name]  # no half-written temporary file left


def test_read_only_folder_is_named_before_any_work(mount, task_root, capsys):
    folder = mount("size=1m")
    (folder / "earlier.txt").write_text("kept")
    subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
    code = cli.main([*cli_train_args(tiny_overrides(task_root, folder / "run")), "--dry-run"])
    err = capsys.readouterr().err
    assert code != 0 and f"cannot write the output folder {folder / 'run'}" in err and "Read-only" in err, err
    code = cli.main(cli_train_args(tiny_overrides(task_root, folder / "run")))
    err = capsys.readouterr().err
    assert code != 0 and f"cannot lock {folder / 'run'}" in err and "writable" in err, err
    assert (folder / "earlier.txt").read_text() == "kept"
