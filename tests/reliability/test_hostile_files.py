"""Hostile files at the training level: a bad checkpoint, config or data folder gives a
clear error naming the file, runs no code, and changes nothing on disk.

Adapter files (tests/core/test_adapter_io.py), backbone weights (tests/test_vit.py) and
the reader-level data checks (tests/data/test_data_folder.py) are tested where they live.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch

from elalora_vit import cli
from elalora_vit.core import ConfigError
from elalora_vit.data import DataError
from elalora_vit.storage.lock import LOCK_NAME
from elalora_vit.train import CheckpointError, load_checkpoint, load_config, train
from elalora_vit.train.checkpoint import FORMAT
from tests.train.conftest import TASK, tiny_overrides


class Payload:
    """Unpickling this creates a directory: proof that pickled code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


def snapshot(folder: Path) -> dict:
    """Every file under ``folder``: its bytes and modification time (but the folder lock's file,
    which says who last held the folder: every run attempt takes the lock)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_NAME
    }


@pytest.fixture(scope="module")
def stopped_run(task_root, tmp_path_factory) -> Path:
    """The output folder of a run stopped after its first epoch: it holds a good checkpoint."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(load_config(None, tiny_overrides(task_root, out)), stop_after_epoch=1)
    return out


def torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def good_state(stopped_run: Path) -> dict:
    return torch.load(stopped_run / "checkpoint.pt", weights_only=True)


def tampered(stopped_run: Path, change) -> bytes:
    state = good_state(stopped_run)
    change(state)
    return torch_bytes(state)


HOSTILE_CHECKPOINTS = {
    "truncated": (lambda run, marker: (run / "checkpoint.pt").read_bytes()[:4000], "truncated, corrupt"),
    "empty": (lambda run, marker: b"", "truncated, corrupt"),
    "garbage": (lambda run, marker: random.Random(0).randbytes(5000), "truncated, corrupt"),
    "foreign": (lambda run, marker: torch_bytes({"state_dict": {"w": torch.ones(3)}}), "not an elalora-vit training checkpoint"),
    "pickled code in a torch file": (
        lambda run, marker: torch_bytes({"format": FORMAT, "model": Payload(marker)}),
        "not a plain-data checkpoint",
    ),
    "pickled code in a plain pickle": (lambda run, marker: pickle.dumps(Payload(marker)), "not a plain-data checkpoint"),
    "a weight of another shape": (
        lambda run, marker: tampered(run, lambda s: s["model"].update({k: torch.zeros(3) for k in list(s["model"])[:1]})),
        r"does not fit this run \('[\w.]+' has shape \(3,\) in the checkpoint and \(\d+(, \d+)*\) in this model\)",
    ),
    "a missing part": (lambda run, marker: tampered(run, lambda s: s.pop("optimizer")), "does not fit this run"),
    "a NaN weight": (
        lambda run, marker: tampered(run, lambda s: next(t for t in s["model"].values() if t.is_floating_point())
                                     .view(-1)[0].fill_(float("nan"))),
        r"1 weight tensor\(s\) holding NaN or inf .*would continue a diverged model",
    ),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", list(HOSTILE_CHECKPOINTS))
def test_hostile_checkpoint_is_refused_and_changes_nothing(kind, stopped_run, task_root, tmp_path):
    make, message = HOSTILE_CHECKPOINTS[kind]
    out, marker = tmp_path / "run", tmp_path / "code-ran"
    shutil.copytree(stopped_run, out)
    checkpoint = out / "checkpoint.pt"
    checkpoint.write_bytes(make(stopped_run, marker))
    before = snapshot(out)

    with pytest.raises(CheckpointError, match=message) as refused:
        train(load_config(None, tiny_overrides(task_root, out)), resume=True)
    assert str(checkpoint) in str(refused.value)
    assert snapshot(out) == before
    assert not marker.exists()


def test_a_diverged_model_is_never_written_over_the_last_good_checkpoint(stopped_run, tmp_path):
    from elalora_vit.train.checkpoint import save_checkpoint

    path = tmp_path / "checkpoint.pt"
    shutil.copy(stopped_run / "checkpoint.pt", path)
    before = path.read_bytes()
    state = good_state(stopped_run)
    state.pop("format")
    name = next(k for k, t in state["model"].items() if t.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("inf"))
    with pytest.raises(CheckpointError, match=rf"not writing {path}: .*\({name}\).*previous checkpoint, if any, is intact"):
        save_checkpoint(path, state)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    state["model"][name].fill_(0.5)
    save_checkpoint(path, state)  # finite again: written
    assert path.read_bytes() != before


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_damaged_checkpoint_bytes_always_give_a_checkpoint_error(stopped_run, tmp_path):
    """Truncations, flipped bytes and noise fail deep inside the unpickler in many ways
    (IndexError, UnicodeDecodeError, ...); every one must surface as a CheckpointError."""
    good = (stopped_run / "checkpoint.pt").read_bytes()
    rng = random.Random(0)
    truncated = [good[: rng.randrange(1, len(good))] for _ in range(20)]
    noise = [prefix + rng.randbytes(rng.randrange(1, 400)) for prefix in (b"", b"\x80\x02", b"PK\x03\x04") for _ in range(20)]
    flipped = []
    for _ in range(40):
        data = bytearray(good)
        for _ in range(4):
            data[rng.randrange(len(data))] = rng.randrange(256)
        flipped.append(bytes(data))
    path = tmp_path / "checkpoint.pt"
    for kind, cases in (("truncated", truncated), ("noise", noise)):
        for data in cases:
            path.write_bytes(data)
            with pytest.raises(CheckpointError) as refused:
                load_checkpoint(path)
            assert str(path) in str(refused.value), kind
    refused_flips = 0
    for data in flipped:
        path.write_bytes(data)
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            assert str(path) in str(err)
            refused_flips += 1
        else:  # a flip inside tensor data can leave a readable checkpoint: the checksum-free format's limit
            assert isinstance(state, dict) and state["format"] == FORMAT
    assert refused_flips >= 1


def test_the_pickled_payload_is_live(tmp_path):
    """The payload above does run when unpickled unsafely, so its refusal means something."""
    marker = tmp_path / "code-ran"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.is_dir()


YAML_PAYLOAD = "!!python/object/apply:os.mkdir [{marker}]"


def test_yaml_with_python_tags_is_refused_without_running_it(tmp_path, capsys):
    marker = tmp_path / "code-ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f"optim:\n  lr: {YAML_PAYLOAD.format(marker=marker)}\n")
    with pytest.raises(ConfigError, match=f"config file {config}, line 2: not valid YAML"):
        load_config(config)
    base = tmp_path / "child.yaml"  # also when the tag hides in a base file
    base.write_text("base: evil.yaml\n")
    with pytest.raises(ConfigError, match=r"evil.yaml, line 2: not valid YAML"):
        load_config(base)
    # and on the command line, in a --set value or a --config file: a one-line error, exit code 2
    assert cli.main(["train", "--set", f"optim.lr={YAML_PAYLOAD.format(marker=marker)}"]) == 2
    assert "optim.lr=!!python/object/apply:os.mkdir" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(config), "--output", str(tmp_path / "run")]) == 2
    assert f"config file {config}, line 2: not valid YAML" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run").exists()


def break_zero_byte_image(task: Path) -> str:
    (task / "images" / "train800" / "000001.png").write_bytes(b"")
    return r"image .*000001\.png is empty \(0 bytes\)"


def break_list_outside_root(task: Path) -> str:
    (task.parent / "outside.png").write_bytes((task / "images" / "test" / "000000.png").read_bytes())
    (task / "test.txt").write_text("../outside.png 0\n")
    return r"test\.txt, line 1: image path '\.\./outside\.png' resolves to .*outside the task folder"


def break_empty_list(task: Path) -> str:
    (task / "train800val200.txt").write_text("\n")
    return r"list file .*train800val200\.txt has no entries"


@pytest.mark.parametrize("damage", [break_zero_byte_image, break_list_outside_root, break_empty_list])
def test_bad_data_stops_the_run_before_it_writes_anything(damage, task_root, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(task_root / TASK, root / TASK)
    message = damage(root / TASK)
    before = snapshot(root)
    with pytest.raises(DataError, match=message):
        train(load_config(None, tiny_overrides(root, tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    assert snapshot(root) == before


@pytest.mark.parametrize("content, message", [
    (b"", r"image .*test/000003\.png is empty \(0 bytes\)"),
    (b"not an image at all", r"cannot decode image .*test/000003\.png"),
])
def test_bad_evaluation_image_stops_the_run_before_training(content, message, task_root, tmp_path):
    """Evaluation images are looked at (not empty, a header that decodes) before training."""
    root, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(task_root / TASK, root / TASK)
    (root / TASK / "images" / "test" / "000003.png").write_bytes(content)
    with pytest.raises(DataError, match=message):
        train(load_config(None, tiny_overrides(root, out)))
    assert not out.exists()


def test_evaluation_image_corrupt_past_its_header_stops_the_cached_run_before_training(task_root, tmp_path):
    """With the image cache (the default) every evaluation image is decoded when the cache is
    built, so one whose header reads but whose pixels do not stops the run before training."""
    root, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(task_root / TASK, root / TASK)
    image = root / TASK / "images" / "test" / "000003.png"
    image.write_bytes(image.read_bytes()[:60])  # the PNG header and part of the pixels
    with pytest.raises(DataError, match=r"000003\.png"):
        train(load_config(None, tiny_overrides(root, out)))
    assert not out.exists()


def test_evaluation_image_corrupt_past_its_header_stops_at_evaluation_and_resume_finishes_it(task_root, tmp_path):
    """Without the cache, an image whose header reads but whose pixels do not is found at
    evaluation: the error says training is saved and --resume evaluates again once it is fixed."""
    root, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(task_root / TASK, root / TASK)
    image = root / TASK / "images" / "test" / "000003.png"
    good = image.read_bytes()
    image.write_bytes(good[:60])  # the PNG header and part of the pixels
    cfg = tiny_overrides(root, out, **{"data.cache": False})
    with pytest.raises(DataError, match=r"000003\.png.*Training finished and is saved .*epoch 3.*--resume"):
        train(load_config(None, cfg))
    assert not (out / "result.json").exists() and load_checkpoint(out / "checkpoint.pt")["epoch"] == 3
    image.write_bytes(good)
    assert train(load_config(None, cfg), resume=True)["steps"] == 12


def test_input_size_mismatch_stops_before_any_work(task_root, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(task_root, out, **{"data.image_size": 224}))
    with pytest.raises(ConfigError, match=r"data\.image_size is 224, but vit_tiny_patch16_224 is built for 32 x 32"):
        train(cfg)
    assert not out.exists()
