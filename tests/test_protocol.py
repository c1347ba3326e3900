"""The protocol recorded with every result, and a report that will not average different ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from elalora_vit.cli import main
from elalora_vit.data import get_task
from elalora_vit.data.fingerprint import split_fingerprint
from elalora_vit.sweep import collect_results, write_report
from elalora_vit.sweep.protocols import ProtocolMismatch
from elalora_vit.train import load_config, train
from elalora_vit.train.protocol import backbone_sha256
from tests.conftest import make_tiny_vit
from tests.train.conftest import tiny_overrides, write_folder_task


def test_a_run_records_its_protocol(tmp_path):
    data = write_folder_task(tmp_path / "data")
    result = train(load_config(None, tiny_overrides(data, tmp_path / "run", **{"optim.epochs": 1})))
    protocol = json.loads((tmp_path / "run" / "result.json").read_text())["protocol"]
    assert protocol == result["protocol"]
    assert protocol["data.source"] == "folder" and protocol["data.train_split"] == "train800val200"
    assert protocol["data.eval_split"] == "test" and protocol["input.augmentation"] == "none"
    assert protocol["input.image_size"] == 32 and protocol["input.interpolation"] == "bicubic"
    assert protocol["backbone.name"] == "vit_tiny_patch16_224" and protocol["backbone.sha256"] is None
    assert protocol["optim.epochs"] == 1 and protocol["optim.batch_size"] == 8
    assert protocol["optim.lr_schedule"].startswith("cosine")
    assert protocol["precision"] == "fp32"  # precision auto, as this CPU ran it
    assert set(protocol) >= {"versions.torch", "versions.timm", "versions.elalora_vit", "input.mean", "input.std"}
    task = get_task("eurosat")
    assert protocol["data.eval_fingerprint"] == split_fingerprint(task, "test", "folder", data)


def test_the_data_fingerprint_changes_with_one_image_byte_and_with_the_list(tmp_path):
    data = write_folder_task(tmp_path / "data")
    task = get_task("eurosat")
    before = split_fingerprint(task, "train800", "folder", data)
    assert before == split_fingerprint(task, "train800", "folder", data)
    assert before != split_fingerprint(task, "val200", "folder", data)
    image = data / "eurosat" / "images" / "train800" / "000003.png"
    image.write_bytes(image.read_bytes() + b"\0")  # same list file, one image changed
    changed = split_fingerprint(task, "train800", "folder", data)
    assert changed != before
    listing = data / "eurosat" / "train800.txt"
    lines = listing.read_text().splitlines()
    listing.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # same images, another order
    assert split_fingerprint(task, "train800", "folder", data) not in (before, changed)
    assert split_fingerprint(None, "test", "digits", "") != split_fingerprint(None, "val200", "digits", "")


def test_the_backbone_hash_ignores_the_head_and_sees_one_weight():
    a, b = make_tiny_vit(num_classes=5, seed=0), make_tiny_vit(num_classes=7, seed=1)
    b.load_state_dict({k: v for k, v in a.state_dict().items() if not k.startswith("head.")}, strict=False)
    assert backbone_sha256(a) == backbone_sha256(b)  # heads of other sizes
    with __import__("torch").no_grad():
        b.blocks[0].mlp.fc1.weight[0, 0] += 1e-3
    assert backbone_sha256(a) != backbone_sha256(b)


# ----------------------------------------------------------------------------- the report
PROTOCOL = {
    "data.source": "folder", "data.train_split": "train800val200", "data.eval_split": "test",
    "data.train_fingerprint": "sha256:aaaa", "data.eval_fingerprint": "sha256:bbbb",
    "input.image_size": 224, "backbone.name": "vit_base_patch16_224.orig_in21k", "backbone.sha256": "sha256:cccc",
    "optim.epochs": 100, "optim.batch_size": 64, "optim.lr_schedule": "cosine, 10 warm-up epochs, min lr 0",
}


def write_result(root: Path, task: str, method: str, seed: int, accuracy: float, protocol=PROTOCOL, **changes):
    folder = root / task / method / f"seed{seed}"
    folder.mkdir(parents=True)
    result = {"task": task, "method": method, "seed": seed, "eval_split": "test", "accuracy": accuracy,
              "model": "vit_base_patch16_224.orig_in21k"}
    if protocol is not None:
        result["protocol"] = {**protocol, **changes}
    (folder / "result.json").write_text(json.dumps(result))


def test_the_report_shows_the_protocol_and_per_task_fingerprints(tmp_path):
    write_result(tmp_path, "dtd", "lora", 0, 60.0)
    write_result(tmp_path, "dtd", "elalora", 0, 61.0)
    write_result(tmp_path, "eurosat", "lora", 0, 90.0, **{"data.train_fingerprint": "sha256:dddd"})
    text = write_report(tmp_path)["markdown"].read_text()
    assert "## Protocol" in text and "| `optim.epochs` | 100 |" in text
    assert "| `backbone.sha256` | sha256:cccc |" in text
    assert "| eurosat | sha256:dddd | sha256:bbbb |" in text  # per-task keys differ by nature: not refused


def test_the_report_refuses_to_average_different_protocols_and_names_the_key(tmp_path, capsys):
    write_result(tmp_path, "dtd", "lora", 0, 60.0)
    write_result(tmp_path, "dtd", "lora", 1, 62.0, **{"optim.epochs": 50})
    with pytest.raises(ProtocolMismatch, match=r"seeds of dtd/lora differ in optim.epochs \(100 vs 50\)"):
        collect_results(tmp_path)
    assert main(["vtab-report", str(tmp_path)]) == 2
    assert "--mix-protocols" in capsys.readouterr().err
    assert main(["vtab-report", str(tmp_path), "--mix-protocols"]) == 0
    text = (tmp_path / "results.md").read_text()
    assert "Mixed protocols (--mix-protocols)" in text and "MIXED: 100 | 50" in text


def test_methods_under_different_backbones_are_refused(tmp_path):
    write_result(tmp_path, "dtd", "lora", 0, 60.0)
    write_result(tmp_path, "dtd", "elalora", 0, 61.0, **{"backbone.sha256": "sha256:eeee"})
    with pytest.raises(ProtocolMismatch, match="backbone.sha256"):
        collect_results(tmp_path)


def test_results_without_a_protocol_report_as_unrecorded_and_do_not_mix_with_recorded(tmp_path):
    write_result(tmp_path / "old", "dtd", "lora", 0, 60.0, protocol=None)
    write_result(tmp_path / "old", "dtd", "lora", 1, 61.0, protocol=None)
    text = write_report(tmp_path / "old")["markdown"].read_text()
    assert "unrecorded (results written before protocols were recorded)" in text
    write_result(tmp_path / "old", "dtd", "elalora", 0, 61.0)
    with pytest.raises(ProtocolMismatch, match="unrecorded vs recorded"):
        collect_results(tmp_path / "old")


def test_the_protocol_records_the_precision_the_machine_ran(monkeypatch):
    """``precision: auto`` is bf16 on a CUDA GPU and fp32 elsewhere: the protocol says which,
    so runs of one config on a GPU and on a CPU are not averaged as one protocol."""
    from elalora_vit.train import runtime

    assert runtime.resolve_precision("auto") == "fp32"  # this CPU machine
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(runtime.torch.cuda, "is_bf16_supported", lambda: True)
    assert runtime.resolve_precision("auto") == "bf16" and runtime.resolve_precision("fp16") == "fp16"
