"""Values bounded where they are checked: each a ConfigError naming the key, the value and
the bound, before any model or data work, and within a second."""

from __future__ import annotations

import time

import pytest

from elalora_vit import cli
from elalora_vit.core import ConfigError, ElaLoRAConfig, patch_model
from tests.conftest import QKV_SPLIT, VIT_TARGETS, make_tiny_vit
from tests.reliability.conftest import cli_train_args
from tests.train.conftest import tiny_overrides


@pytest.mark.parametrize("flags, message", [
    (["--set", "optim.epochs=1e30"], "invalid value for 'optim.epochs': 1000000000000000019884624838656; expected at most 100,000"),
    (["--set", "adapter.rank=100000"], "invalid value for 'rank': 100000; expected at most 192"),
    (["--set", "data.std=[0.2,0,0.2]"], "invalid value for 'data.std'"),
])
def test_out_of_bounds_value_is_refused_by_the_dry_run_quickly(flags, message, task_root, tmp_path, capsys):
    args = cli_train_args(tiny_overrides(task_root, tmp_path / "run", **{"model.kwargs": {
        "img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 192}}))
    started = time.monotonic()
    assert cli.main([*args, *flags, "--dry-run"]) == 2
    assert message in capsys.readouterr().err
    assert time.monotonic() - started < 10  # model building included; the plan itself costs nothing
    assert not (tmp_path / "run").exists()


def test_rank_above_a_layer_is_refused_before_the_model_is_touched():
    model = make_tiny_vit()  # width 192
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"'rank': 193; expected at most 192, the smaller dimension of blocks\.0"):
        patch_model(model, VIT_TARGETS, ElaLoRAConfig(rank=193, max_rank=193), split=QKV_SPLIT, method="lora")
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen, nothing replaced
    assert {k: v for k, v in model.state_dict().items()}.keys() == before.keys()
    patch_model(model, VIT_TARGETS, ElaLoRAConfig(rank=96), split=QKV_SPLIT)  # 2 x 96 = 192 fits


def test_a_batch_larger_than_the_training_split_is_refused_naming_the_bound(tmp_path):
    """A step of more images than the split holds would repeat images to fill itself: refused
    by the dry run and by the run, before training, naming the key, the value and the bound."""
    import pytest

    from elalora_vit.core import ConfigError
    from elalora_vit.train import load_config, train
    from elalora_vit.train.dry_run import dry_run
    from tests.train.conftest import tiny_overrides, write_folder_task

    data = write_folder_task(tmp_path / "data", train=24, test=8)
    images = 24 + 6  # train800val200: the task's train800 and val200 lists together
    for batch, ok in ((images, True), (images + 1, False)):
        cfg = load_config(None, tiny_overrides(data, tmp_path / f"run{batch}", **{"optim.batch_size": batch,
                                                                                 "optim.epochs": 1}))
        if ok:
            assert any("steps: 1 per epoch" in line for line in dry_run(cfg))
            continue
        message = rf"'optim.batch_size': {batch}; expected at most {images} \(the {images} images of train800val200\)"
        import elalora_vit.train.dry_run as dry_run_module
        import elalora_vit.train.loop as loop_module

        def no_model(*args, **kwargs):
            raise AssertionError("the model was built before the batch size was checked")

        with pytest.MonkeyPatch.context() as mp:  # refused before any model work
            mp.setattr(dry_run_module, "create_run_backbone", no_model)
            mp.setattr(loop_module, "create_run_backbone", no_model)
            with pytest.raises(ConfigError, match=message):
                dry_run(cfg)
            with pytest.raises(ConfigError, match=message):
                train(cfg)
        assert not (tmp_path / f"run{batch}" / "checkpoint.pt").exists()
