"""Exports load in the real libraries and give the patched model's logits:
plain timm (with elalora_vit unimportable) and PEFT (ViT with split qkv, tiny BERT)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from elalora_vit import ElaLoRAConfig, find_adapters, patch_model
from elalora_vit.cli import main
from elalora_vit.export import ExportError, export_peft, export_run
from elalora_vit.use import load_run
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit

LOAD_WITH_PLAIN_TIMM = textwrap.dedent("""
    import sys, torch, timm
    try:
        import elalora_vit
    except ImportError:
        pass
    else:
        raise SystemExit("elalora_vit was importable: the test would prove nothing")
    model = timm.create_model("local-dir:" + sys.argv[1], pretrained=True).eval()
    cfg = timm.data.resolve_data_config({}, model=model)
    with torch.no_grad():
        torch.save({"logits": model(torch.load(sys.argv[2])), "data_config": cfg}, sys.argv[3])
""")


def _plain_timm_logits(folder, x, tmp_path):
    """Logits of the exported folder, computed in a process where `import elalora_vit` fails."""
    blocker = tmp_path / "blocker" / "elalora_vit"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('elalora_vit is blocked in this test')\n")
    torch.save(x, tmp_path / "x.pt")
    env = {"PYTHONPATH": str(blocker.parent), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    subprocess.run(
        [sys.executable, "-c", LOAD_WITH_PLAIN_TIMM, str(folder), str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
        check=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    return torch.load(tmp_path / "y.pt")


@pytest.mark.parametrize("method", ["elalora", "full"])
def test_timm_export_loads_in_plain_timm_with_the_same_logits(method, finished_runs, tmp_path, capsys):
    out = tmp_path / "timm-export"
    assert main(["export", str(finished_runs[method]), "--format", "timm", "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    run = load_run(finished_runs[method])
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = run.model(x)
    loaded = _plain_timm_logits(out, x, tmp_path)
    assert (loaded["logits"] - expected).abs().max() <= 1e-5
    cfg = loaded["data_config"]
    assert tuple(cfg["input_size"]) == (3, 32, 32) and cfg["interpolation"] == "bicubic"
    assert tuple(cfg["mean"]) == pytest.approx(run.mean) and tuple(cfg["std"]) == pytest.approx(run.std)
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "vit_tiny_patch16_224" and config["num_classes"] == 10
    assert config["model_args"]["depth"] == 2 and config["model_args"]["patch_size"] == 8


def _peft_logits(base, folder, x):
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(folder)).eval()
    with torch.no_grad():
        return model(x)


def test_peft_export_of_a_run_loads_onto_the_unpatched_backbone(finished_runs, tmp_path):
    from accelerate.utils import set_seed

    from elalora_vit.vit import create_backbone

    out = tmp_path / "peft-export"
    export_run(finished_runs["adalora"], out, "peft")
    run = load_run(finished_runs["adalora"])
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        expected = run.model(x)
    set_seed(run.config.seed)
    base = create_backbone("vit_tiny_patch16_224", 10, pretrained=False, img_size=32, patch_size=8, depth=2)
    assert (_peft_logits(base, out, x) - expected).abs().max() <= 1e-5
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["modules_to_save"] == ["head"] and config["peft_type"] == "LORA"
    assert config["rank_pattern"] == config["alpha_pattern"]  # PEFT's scaling alpha / r is 1 everywhere


def _random_svd_adapters(model, ranks):
    """Non-zero lambda everywhere and the active ranks given per adapter name (others keep theirs)."""
    with torch.no_grad():
        for adapter in find_adapters(model):
            layer, part = adapter.layer, adapter.part
            layer.set_lambdas(torch.randn(layer.capacity) * 0.5, (part,))
            if adapter.name in ranks:
                layer.rank_mask[part] = False
                layer.rank_mask[part, : ranks[adapter.name]] = True


def test_peft_export_of_split_qkv_with_per_part_ranks_is_exact(tmp_path):
    model = make_tiny_vit()
    patch_model(model, VIT_TARGETS, ElaLoRAConfig(rank=2, max_rank=4), split=QKV_SPLIT, exclude=["head"])
    ranks = {"blocks.0.attn.qkv.q": 1, "blocks.0.attn.qkv.k": 4, "blocks.0.attn.qkv.v": 0, "blocks.1.mlp.fc2": 0}
    _random_svd_adapters(model, ranks)
    with torch.no_grad():
        model.head.weight.normal_(0, 0.1)  # a trained head, saved in full
    model.eval()
    export_peft(model, tmp_path / "out", modules_to_save=["head"])
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["rank_pattern"]["blocks.0.attn.qkv"] == 5  # 1 + 4 + 0, one LoRA with block-structured B
    assert "blocks.1.mlp.fc2" not in config["target_modules"]  # rank 0: nothing to add
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert (_peft_logits(make_tiny_vit(), tmp_path / "out", x) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ["elalora", "lora"])
def test_peft_export_of_q_v_only_adapters_gives_k_no_rank(method, tmp_path):
    model = make_tiny_vit()
    patch_model(model, ["blocks.*.attn.qkv"], ElaLoRAConfig(rank=2, max_rank=4), split=QKV_SPLIT,
                exclude=["head", "blocks.*.attn.qkv.k"], method=method)
    with torch.no_grad():
        for adapter in find_adapters(model):
            adapter.layer.lora_B[adapter.part].normal_(0, 0.1)
            if method == "elalora":
                adapter.layer.set_lambdas(torch.randn(4) * 0.5, (adapter.part,))
    model.eval()
    export_peft(model, tmp_path / "out")
    config = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
    assert config["rank_pattern"] == {"blocks.0.attn.qkv": 4, "blocks.1.attn.qkv": 4}  # q 2 + v 2, k 0
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    assert (_peft_logits(make_tiny_vit(), tmp_path / "out", x) - expected).abs().max() <= 1e-5


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=48, max_position_embeddings=16, num_labels=3)
    return BertForSequenceClassification(config).eval()


def test_peft_export_of_a_patched_bert_is_exact(tmp_path):
    model = _tiny_bert()
    targets = [r"re:.*attention\.self\.(query|key|value)", r"re:.*intermediate\.dense"]
    patch_model(model, targets, ElaLoRAConfig(rank=2, max_rank=3), exclude=["classifier"])
    _random_svd_adapters(model, {"bert.encoder.layer.0.attention.self.query": 3,
                                 "bert.encoder.layer.1.intermediate.dense": 1})
    with torch.no_grad():
        model.classifier.weight.normal_(0, 0.1)
    export_peft(model, tmp_path / "bert", modules_to_save=["classifier"])
    ids = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(_tiny_bert(), str(tmp_path / "bert")).eval()
    with torch.no_grad():
        assert (loaded(input_ids=ids).logits - expected).abs().max() <= 1e-5


def test_export_refuses_a_non_empty_out_and_unknown_formats(finished_runs, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not empty; choose another folder or pass --overwrite"):
        export_run(finished_runs["lora"], out, "timm")
    assert (out / "keep.txt").read_text() == "mine"
    with pytest.raises(ExportError, match="unknown export format 'onnx'; choose one of: timm, peft"):
        export_run(finished_runs["lora"], out, "onnx")
    with pytest.raises(SystemExit):
        main(["export", str(finished_runs["lora"]), "--format", "onnx", "--out", str(out)])
    assert "choose from 'timm', 'peft'" in capsys.readouterr().err
    assert main(["export", str(finished_runs["lora"]), "--format", "peft", "--out", str(out), "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir() if p.name != "README.md") == [
        "adapter_config.json", "adapter_model.safetensors"]
    assert main(["export", str(finished_runs["full"]), "--format", "peft", "--out", str(tmp_path / "f")]) == 2
    assert "a full run has no adapters" in capsys.readouterr().err
