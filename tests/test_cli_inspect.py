import torch
from torch import nn

from elalora_vit import ElaLoRAConfig, patch_model, save_adapters
from elalora_vit.cli import main


def test_inspect_adapter_prints_the_rank_pattern(tmp_path, capsys):
    model = nn.Sequential(nn.Linear(4, 6), nn.Linear(6, 2))
    cfg = ElaLoRAConfig(rank=2)
    patch_model(model, ["0", "1"], cfg)
    with torch.no_grad():
        model[1].rank_mask[0, 1] = False
    path = save_adapters(model, tmp_path / "a.safetensors", cfg)
    assert main(["inspect-adapter", str(path)]) == 0
    out = capsys.readouterr().out
    assert "adapters: 2  total rank: 3" in out
    assert "0    2  ##" in out and "1    1  #" in out


def test_inspect_adapter_reports_bad_files(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"nope")
    assert main(["inspect-adapter", str(bad)]) == 2
    assert "not a readable safetensors file" in capsys.readouterr().err
