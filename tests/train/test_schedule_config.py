"""adapter.schedule in a run's config, and the deprecated adapter.cubic_schedule:
accepted from YAML and --set with a warning, read quietly from older checkpoints and
adapter files."""

import json
import warnings

import pytest
import timm
from safetensors import safe_open
from safetensors.torch import save_file

from elalora_vit.core import ConfigError, load_adapters
from elalora_vit.train import load_config, train
from elalora_vit.train.checkpoint import load_checkpoint, save_checkpoint
from tests.train.conftest import tiny_overrides


def test_schedule_is_a_run_setting():
    assert load_config(None, {"adapter.schedule": "cosine"}).core_config(1000).schedule == "cosine"
    with pytest.raises(ConfigError, match="'schedule': 'cubical'; expected cubic | linear"):
        load_config(None, {"adapter.schedule": "cubical", "method": "elalora"})


@pytest.mark.parametrize("old, shape", [(True, "cubic"), (False, "constant")])
def test_cubic_schedule_in_yaml_or_set_is_read_as_schedule_with_a_warning(old, shape, tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(f"adapter:\n  cubic_schedule: {str(old).lower()}\n")
    with pytest.warns(FutureWarning, match=f"'adapter.cubic_schedule' is deprecated; write 'adapter.schedule: {shape}'"):
        assert load_config(path).adapter.schedule == shape
    with pytest.warns(FutureWarning):
        assert load_config(None, {"adapter.cubic_schedule": old}).adapter.schedule == shape


def test_cubic_schedule_that_contradicts_schedule_is_refused():
    with pytest.raises(ConfigError, match="'adapter.cubic_schedule: true' contradicts 'adapter.schedule: linear'"):
        load_config(None, {"adapter.cubic_schedule": True, "adapter.schedule": "linear"})


def test_checkpoint_and_adapter_file_of_an_older_version_still_load(folder_root, tmp_path):
    """Before `schedule`, checkpoints and adapter files recorded `cubic_schedule`."""
    out = tmp_path / "run"
    overrides = tiny_overrides(folder_root, out, **{"optim.epochs": 2})
    train(load_config(None, overrides), stop_after_epoch=1)
    saved = load_checkpoint(out / "checkpoint.pt")
    saved.pop("format")
    del saved["config"]["adapter"]["schedule"]
    saved["config"]["adapter"]["cubic_schedule"] = True
    saved["allocator"]["config"].pop("schedule")
    saved["allocator"]["config"]["cubic_schedule"] = True
    save_checkpoint(out / "checkpoint.pt", saved)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # nothing the user could change
        result = train(load_config(None, overrides), resume=True)
    assert result["rounds"] > 0

    with safe_open(str(out / "adapter.safetensors"), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    config = json.loads(meta["config"])
    config["cubic_schedule"] = config.pop("schedule") == "cubic"
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata={**meta, "config": json.dumps(config)})
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=1, num_classes=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        load_adapters(model, tmp_path / "old.safetensors", check_backbone=False)  # another random backbone: the config is the point
    assert sum(m.rank_mask.sum() for m in model.modules() if hasattr(m, "rank_mask")) == result["total_rank"]
