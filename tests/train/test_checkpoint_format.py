"""Training checkpoints of format 1 (lambda trained directly, its speed-up in an optimizer group) are refused by name."""

import pytest
import torch

from elalora_vit.train.checkpoint import FORMAT, CheckpointError, load_checkpoint, save_checkpoint


def test_format_1_checkpoint_is_refused_with_a_message_naming_the_version(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "elalora-vit/checkpoint/1", "model": {}}, path)
    with pytest.raises(CheckpointError, match="checkpoint/1.*lambda_scale \\* lora_theta.*start the run afresh"):
        load_checkpoint(path)


def test_current_format_round_trips(tmp_path):
    path = save_checkpoint(tmp_path / "checkpoint.pt", {"step": 3})
    assert load_checkpoint(path) == {"format": FORMAT, "step": 3}
