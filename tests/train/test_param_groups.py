"""The adapter defaults live in one place, and the learning-rate groups the loop uses are the
ones a Python API user gets from ``adapter_param_groups``."""

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from elalora_vit.core import ElaLoRAConfig, adapter_param_groups, patch_model
from elalora_vit.core.config import field_docs
from elalora_vit.config import AdapterConfig, TrainConfig, load_config
from elalora_vit.train.methods import setup_method

REPO = Path(__file__).resolve().parents[2]


def test_default_yaml_mirrors_the_dataclass_defaults():
    assert load_config(REPO / "configs" / "default.yaml") == TrainConfig()


def test_adapter_defaults_mirror_the_core_defaults():
    core, train = ElaLoRAConfig(), AdapterConfig()
    # The schedule is in fractions of the run here and in steps in the core; max_rank None resolves to 2 x rank.
    shared = {f.name for f in dataclasses.fields(AdapterConfig)} & {f.name for f in dataclasses.fields(ElaLoRAConfig)}
    shared -= {"adjust_interval", "max_rank"}
    assert {"init", "init_std", "lambda_lr_multiplier", "alpha", "rank", "k", "b"} <= shared
    assert {k: getattr(train, k) for k in shared} == {k: getattr(core, k) for k in shared}
    assert TrainConfig().core_config(total_steps=1000).lambda_lr_multiplier == core.lambda_lr_multiplier


def test_the_adapter_section_is_derived_from_the_core_config():
    core = {f.name: f for f in dataclasses.fields(ElaLoRAConfig)}
    train = {f.name: f for f in dataclasses.fields(AdapterConfig)}
    schedule = {"warmup_steps": "warmup", "adjust_interval": "adjust_interval", "stabilize_steps": "stabilize"}
    shared = set(core) - set(schedule) - {"seed"}
    assert set(train) == shared | set(schedule.values()) | {"adalora_init_rank", "lr_multiplier"}
    for name in shared - {"rank"}:  # rank has its own words in a run (what each method makes of it)
        assert train[name].metadata["doc"] == core[name].metadata["doc"], name
    for core_name, name in schedule.items():
        assert train[name].metadata["doc"].startswith(core[core_name].metadata["doc"])
    core_cfg = TrainConfig(seed=3).core_config(total_steps=1000)
    assert core_cfg.seed == 3 and {n: getattr(core_cfg, n) for n in shared - {"max_rank"}} == {
        n: getattr(AdapterConfig(), n) for n in shared - {"max_rank"}
    }


def test_default_yaml_comments_are_the_field_docs():
    docs = field_docs(AdapterConfig)
    assert all(docs.values()) and all(field_docs(ElaLoRAConfig).values())
    lines = (REPO / "configs" / "default.yaml").read_text().split("\nadapter:")[1].split("\n\n")[0].splitlines()
    comments = dict(re.fullmatch(r"  (\w+): \S+ +# (.*)", line).groups() for line in lines[1:])
    assert comments == docs


def _patched(method="elalora", **cfg):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    config = ElaLoRAConfig(rank=2, **cfg)
    patch_model(model, ["0"], config, method=method)
    model[2].requires_grad_(True)  # a trained "head"
    return model, config


def test_groups_cover_every_trainable_parameter_once_and_never_apply_the_lambda_speed_up_again():
    model, config = _patched(lambda_lr_multiplier=7.0)
    groups = {g["name"]: g for g in adapter_param_groups(model, 1e-3, config, adapter_lr=2e-3)}
    assert groups["other"]["lr"] == 1e-3 and groups["adapter"]["lr"] == 2e-3
    # lambda's x7 lives in the adapter (lambda = 7 * theta): its group runs at the adapter's rate.
    assert groups["lambda"]["lr"] == 2e-3
    assert float(model[0].lambda_scale) == 7.0
    assert groups["lambda"]["params"] == [model[0].lora_theta]
    assert {id(p) for p in groups["adapter"]["params"]} == {id(model[0].lora_A), id(model[0].lora_B)}
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)


def test_lora_has_no_lambda_group():
    model, config = _patched(method="lora")
    assert [g["name"] for g in adapter_param_groups(model, 1e-3, config)] == ["other", "adapter"]


def test_the_training_loop_uses_the_same_groups():
    import timm

    cfg = load_config(None, {"optim.lr": 1e-3, "adapter.lr_multiplier": 2.0, "adapter.rank": 2})
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=16, patch_size=8, depth=1, num_classes=3)
    setup = setup_method(model, cfg, total_steps=100)
    rates = {g["name"]: g["lr"] for g in setup.param_groups}
    assert rates == {"other": 1e-3, "adapter": 2e-3, "lambda": 2e-3}
    assert setup.param_groups == adapter_param_groups(model, 1e-3, setup.adapter_config, adapter_lr=2e-3)
