"""The q/v-only preset end to end: ``elalora-vit train --config configs/ablations/qv-only.yaml``
on generated data, then its budget, adapter file, ``inspect-adapter``, resume, the rebuilt
run and both exports (loaded by timm and PEFT themselves)."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors import safe_open

from elalora_vit.cli import main
from elalora_vit.core import read_adapter_metadata
from elalora_vit.export import export_run
from elalora_vit.train import CheckpointError, load_config, train
from elalora_vit.use import load_run
from tests.train.conftest import tiny_overrides

PRESET = Path(__file__).resolve().parents[2] / "configs" / "ablations" / "qv-only.yaml"
TINY_MODEL = {"img_size": 32, "patch_size": 8, "depth": 2}
QV = [f"blocks.{b}.attn.qkv.{p}" for b in (0, 1) for p in ("q", "v")]
HEAD = 192 * 10 + 10  # the head of a 10-class task
D = 192


def _overrides(root, out, **extra):
    return tiny_overrides(root, out, **{"model.kwargs": TINY_MODEL, "optim.epochs": 4, **extra})


def _set_flags(overrides: dict) -> list[str]:
    flags = []
    for key, value in overrides.items():
        flags += ["--set", f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"]
    return flags


@pytest.fixture(scope="module")
def qv_run(folder_root, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("qv-only") / "run"
    assert main(["train", "--config", str(PRESET), *_set_flags(_overrides(folder_root, out))]) == 0
    return out


def test_the_preset_trains_q_and_v_with_a_budget_of_their_own(qv_run, capsys):
    result = json.loads((qv_run / "result.json").read_text())
    assert sorted(result["rank_pattern"]) == sorted(QV)
    assert result["total_rank"] == 4 * 2 and result["rounds"] > 0
    history = json.loads((qv_run / "rank_history.json").read_text())
    assert sum(len(r["expanded"]) for r in history) > 0  # ranks grew, never into k
    assert not any(".k" in name for r in history for name in r["expanded"] + r["pruned"] + list(r["rank_pattern"]))
    per_rank = D + D + 1  # a row of Q, a column of P, lambda
    assert result["trainable_params"] == HEAD + sum(r * per_rank for r in result["rank_pattern"].values())
    meta = read_adapter_metadata(qv_run / "adapter.safetensors")
    assert meta["layers"]["blocks.1.attn.qkv"] == {"parts": ["q", "k", "v"], "in_features": D,
                                                   "out_features": 3 * D, "excluded_parts": ["k"]}
    capsys.readouterr()
    assert main(["inspect-adapter", str(qv_run / "adapter.safetensors")]) == 0
    printed = capsys.readouterr().out
    assert "adapters: 4  total rank: 8" in printed
    assert "excluded parts (not adapted, rank 0): blocks.0.attn.qkv.k, blocks.1.attn.qkv.k" in printed


def test_the_rebuilt_run_computes_the_base_models_k(qv_run):
    run = load_run(qv_run)
    x = torch.randn(3, 17, D)
    for block in run.model.blocks:
        layer = block.attn.qkv
        assert layer.excluded_parts == ("k",) and layer.ranks()[1] == 0
        with torch.no_grad():
            assert torch.equal(layer(x)[..., D : 2 * D], layer.base_layer(x)[..., D : 2 * D])


def test_resume_reaches_the_uninterrupted_result(qv_run, folder_root, tmp_path):
    out = tmp_path / "resumed"
    assert train(load_config(PRESET, _overrides(folder_root, out)), stop_after_epoch=2) == {"interrupted_after_epoch": 2}
    other = load_config(PRESET, _overrides(folder_root, out, **{"model.exclude": []}))
    with pytest.raises(CheckpointError, match=r"model.exclude: \['blocks.\*.attn.qkv.k'\] -> \[\]"):
        train(other, resume=True)  # k would gain adapters mid-run
    resumed = train(load_config(PRESET, _overrides(folder_root, out)), resume=True)
    full = json.loads((qv_run / "result.json").read_text())
    assert resumed["rank_pattern"] == full["rank_pattern"] and resumed["accuracy"] == full["accuracy"]
    tensors = []
    for folder in (qv_run, out):
        with safe_open(str(folder / "adapter.safetensors"), framework="pt") as f:
            tensors.append({k: f.get_tensor(k) for k in f.keys()})
    assert tensors[0].keys() == tensors[1].keys() and all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])


def test_both_exports_load_in_their_libraries_with_the_same_logits(qv_run, tmp_path):
    from accelerate.utils import set_seed

    from elalora_vit.vit import create_backbone
    from tests.use.test_export import _peft_logits, _plain_timm_logits

    run = load_run(qv_run)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = run.model(x)
    export_run(qv_run, tmp_path / "peft", "peft")
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    pattern = json.loads((qv_run / "result.json").read_text())["rank_pattern"]
    for b in (0, 1):  # one LoRA on the fused qkv, of rank r_q + r_v: k adds no rank
        assert config["rank_pattern"][f"blocks.{b}.attn.qkv"] == sum(pattern[f"blocks.{b}.attn.qkv.{p}"] for p in "qv")
    set_seed(run.config.seed)
    base = create_backbone("vit_tiny_patch16_224", 10, pretrained=False, **TINY_MODEL)
    assert (_peft_logits(base, tmp_path / "peft", x) - expected).abs().max() <= 1e-5
    export_run(qv_run, tmp_path / "timm", "timm")
    assert (_plain_timm_logits(tmp_path / "timm", x, tmp_path)["logits"] - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("method, ranks", [("lora", 2), ("adalora", 2)])
def test_lora_and_adalora_count_q_and_v_only(method, ranks, folder_root, tmp_path):
    overrides = _overrides(folder_root, tmp_path / method, method=method, **{"optim.epochs": 2})
    result = train(load_config(PRESET, overrides))
    assert sorted(result["rank_pattern"]) == sorted(QV)
    assert result["total_rank"] == 4 * ranks  # AdaLoRA: from 3 per adapter down to 2
    per_rank = D + D + (1 if method == "adalora" else 0)
    assert result["trainable_params"] == HEAD + sum(r * per_rank for r in result["rank_pattern"].values())
