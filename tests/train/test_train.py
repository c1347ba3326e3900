import json

import pytest
import torch
from safetensors import safe_open

from elalora_vit.core import ConfigError, read_adapter_metadata
from elalora_vit.data import DataError, UnknownTaskError
from elalora_vit.train import CheckpointError, TrainingError, load_config, train
from elalora_vit.config import TrainConfig, steps_of
from elalora_vit.train.loop import lr_factor
from tests.train.conftest import TASK, tiny_overrides

OUTPUTS = ["config.yaml", "metrics.jsonl", "result.json", "checkpoint.pt"]


@pytest.mark.parametrize("method", ["elalora", "lora", "adalora", "full", "linear"])
def test_every_method_trains_and_writes_its_outputs(method, folder_root, tmp_path):
    out = tmp_path / method
    result = train(load_config(None, tiny_overrides(folder_root, out, method=method)))
    for name in OUTPUTS:
        assert (out / name).is_file(), name
    saved = json.loads((out / "result.json").read_text())
    assert saved == result
    assert saved["method"] == method and saved["task"] == TASK
    assert 0.0 <= saved["accuracy"] <= 100.0
    assert saved["trainable_params"] > 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2, 3]
    assert metrics[0]["train_loss"] > 0
    if method in ("elalora", "lora", "adalora"):
        meta = read_adapter_metadata(out / "adapter.safetensors")
        assert meta["rank_pattern"] == saved["rank_pattern"]
        assert meta["modules_to_save"] == ["head"]
        assert (out / "rank_heatmap.png").stat().st_size > 1000
        assert isinstance(json.loads((out / "rank_history.json").read_text()), list)
    else:
        assert (out / "trained.safetensors").is_file() and saved["rank_pattern"] == {}
    if method == "elalora":
        assert saved["total_rank"] == 6 * 2 and saved["rounds"] > 0
        assert len(json.loads((out / "rank_history.json").read_text())) == saved["rounds"]
    if method == "adalora":  # from 3 (1.5 x rank) down to 2 per adapter
        assert saved["total_rank"] == 6 * 2
    if method == "linear":
        assert saved["trainable_params"] == 192 * 10 + 10  # the head of a 10-class task


def test_parameter_budgets_are_comparable(folder_root, tmp_path):
    results = {
        m: train(load_config(None, tiny_overrides(folder_root, tmp_path / m, method=m, **{"optim.epochs": 1})))
        for m in ("elalora", "lora", "linear")
    }
    head = results["linear"]["trainable_params"]
    # only active ranks count: a rank of q/k/v/proj costs 192 + 192 (+1 for lambda), of fc1/fc2 192 + 768
    per_rank = {"q": 384, "k": 384, "v": 384, "proj": 384, "fc1": 960, "fc2": 960}
    kind = lambda name: name.rsplit(".", 1)[-1]
    ela = results["elalora"]["rank_pattern"]
    assert results["elalora"]["trainable_params"] == head + sum(r * (per_rank[kind(n)] + 1) for n, r in ela.items())
    assert results["lora"]["trainable_params"] == head + sum(2 * per_rank[kind(n)] for n in ela)


def test_learns_the_generated_task(folder_root, tmp_path):
    overrides = tiny_overrides(folder_root, tmp_path / "learn", method="full", **{"optim.epochs": 6})
    assert train(load_config(None, overrides))["accuracy"] >= 50.0  # 4 classes: chance is 25%


def test_resume_reaches_the_uninterrupted_result(folder_root, tmp_path):
    full = train(load_config(None, tiny_overrides(folder_root, tmp_path / "full")))
    cfg = load_config(None, tiny_overrides(folder_root, tmp_path / "resumed"))
    assert train(cfg, stop_after_epoch=1) == {"interrupted_after_epoch": 1}
    assert not (tmp_path / "resumed" / "result.json").exists()
    resumed = train(load_config(None, tiny_overrides(folder_root, tmp_path / "resumed")), resume=True)
    assert resumed["accuracy"] == full["accuracy"]
    assert resumed["rank_pattern"] == full["rank_pattern"]
    history = [json.loads((tmp_path / d / "rank_history.json").read_text()) for d in ("full", "resumed")]
    assert history[0] == history[1]
    tensors = []
    for d in ("full", "resumed"):
        with safe_open(str(tmp_path / d / "adapter.safetensors"), framework="pt") as f:
            tensors.append({k: f.get_tensor(k) for k in f.keys()})
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][k], tensors[1][k]) for k in tensors[0])
    metrics = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["epoch"] for m in metrics] == [1, 2, 3]


def test_resume_with_other_settings_is_refused(folder_root, tmp_path):
    out = tmp_path / "run"
    train(load_config(None, tiny_overrides(folder_root, out)), stop_after_epoch=1)
    other = load_config(None, tiny_overrides(folder_root, out, **{"adapter.rank": 3}))
    with pytest.raises(CheckpointError, match=r"other settings \(adapter.rank\)(.|\n)*adapter.rank: 2 -> 3"):
        train(other, resume=True)


def test_finished_run_is_not_overwritten(folder_root, tmp_path):
    overrides = tiny_overrides(folder_root, tmp_path / "done", method="linear", **{"optim.epochs": 1})
    first = train(load_config(None, overrides))
    with pytest.raises(TrainingError, match="already holds a finished run"):
        train(load_config(None, overrides))
    assert train(load_config(None, overrides), resume=True) == first


def _linear_output_dtypes(cfg) -> tuple[set, dict]:
    """Train ``cfg``; return the dtypes of every nn.Linear output while training (seen
    through a global forward hook: the loop is not touched) and the result."""
    seen: set = set()

    def hook(module, args, output):
        if isinstance(module, torch.nn.Linear) and torch.is_grad_enabled():
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        result = train(cfg)
    finally:
        handle.remove()
    return seen, result


@pytest.mark.parametrize("precision, dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_setting_decides_the_dtype_of_the_activations(precision, dtype, folder_root, tmp_path):
    overrides = tiny_overrides(folder_root, tmp_path / precision, precision=precision, **{"optim.epochs": 1})
    seen, result = _linear_output_dtypes(load_config(None, overrides))
    assert seen == {dtype}  # bf16: autocast really ran, on every linear layer
    assert result["skipped_steps"] == 0
    with safe_open(str(tmp_path / precision / "adapter.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}  # adapters train in fp32


def test_precision_auto_is_the_default_fp32_on_cpu_and_bf16_on_a_bf16_gpu(folder_root, tmp_path, monkeypatch):
    from elalora_vit.train.runtime import resolve_precision

    assert load_config(None, {}).precision == "auto"
    assert resolve_precision("auto") == "fp32" and resolve_precision("fp16") == "fp16"
    overrides = tiny_overrides(folder_root, tmp_path / "auto", **{"optim.epochs": 1})
    assert _linear_output_dtypes(load_config(None, overrides))[0] == {torch.float32}  # auto on CPU: fp32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto") == "fp32"  # an older GPU: fp32 (with TF32 matmuls)


def test_unknown_task_lists_valid_ones(folder_root, tmp_path):
    with pytest.raises(UnknownTaskError, match="dtd"):
        train(load_config(None, tiny_overrides(folder_root, tmp_path / "x", **{"data.task": "imagenet"})))


def test_missing_data_folder_shows_layout_and_prepare_command(tmp_path):
    with pytest.raises(DataError, match="prepare-vtab"):
        train(load_config(None, tiny_overrides(tmp_path / "nowhere", tmp_path / "x", **{"data.task": "dtd"})))


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("method", "dora", "'method'.*allowed: elalora, lora"),
        ("optim.lr", -1, "'optim.lr'"),
        ("optim.batch_size", 2.5, "'optim.batch_size'.*integer"),
        ("adapter.beta1", 1.5, "'adapter.beta1'"),  # the full key, not the core's field name
        ("optim.lr_schedule", "step", "'optim.lr_schedule'"),
        ("adapter.rnak", 3, r"unknown config key.*adapter.rnak"),
    ],
)
def test_invalid_config_values_name_the_key(key, value, message, folder_root, tmp_path):
    with pytest.raises(ConfigError, match=message):
        load_config(None, {key: value})


def test_yaml_config_with_base_and_overrides(tmp_path):
    (tmp_path / "base.yaml").write_text("optim:\n  lr: 0.01\n  epochs: 7\nadapter:\n  rank: 4\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim:\n  epochs: 9\n")
    cfg = load_config(tmp_path / "child.yaml", {"adapter.rank": 6})
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.adapter.rank, cfg.optim.batch_size) == (0.01, 9, 6, 64)
    (tmp_path / "bad.yaml").write_text("optim: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_schedule_fractions_resolve_against_the_run_length():
    assert steps_of(0.1, 1600) == 160 and steps_of(500, 1600) == 500
    cfg = TrainConfig()
    core = cfg.core_config(total_steps=1600)
    assert (core.warmup_steps, core.adjust_interval, core.stabilize_steps) == (160, 48, 480)


def test_lr_schedule_warms_up_then_decays():
    cfg = load_config(None, {"optim.warmup_epochs": 2, "optim.lr_schedule": "cosine"})
    factor = lr_factor(cfg, steps_per_epoch=10, total_steps=100)
    assert factor(0) == pytest.approx(0.05) and factor(19) == pytest.approx(1.0)
    assert factor(20) == pytest.approx(1.0) and factor(60) == pytest.approx(0.5)
    assert factor(99) < 0.01
    linear = lr_factor(load_config(None, {"optim.warmup_epochs": 0, "optim.lr_schedule": "linear"}), 10, 100)
    assert linear(50) == pytest.approx(0.5)


@pytest.mark.parametrize("every, expected", [(1, [1, 2, 3]), (2, [2, 3]), (0, [3])])
def test_checkpoints_come_every_n_epochs_and_after_the_last(every, expected, folder_root, tmp_path, monkeypatch):
    from elalora_vit.train import loop

    written = []
    save = loop.save_run_checkpoint
    monkeypatch.setattr(loop, "save_run_checkpoint", lambda path, cfg, state, acc: (written.append(state.epoch),
                                                                                    save(path, cfg, state, acc)))
    out = tmp_path / f"every{every}"
    train(load_config(None, tiny_overrides(folder_root, out, method="lora", checkpoint_every=every)))
    assert written == expected
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 3


@pytest.mark.parametrize("epoch_seconds, expected", [(10.0, [1, 6, 7]), (60.0, [1, 2, 3, 4, 5, 6, 7])])
def test_by_default_checkpoints_cost_at_most_2_percent_of_the_run(epoch_seconds, expected, folder_root, tmp_path,
                                                                   monkeypatch):
    """``checkpoint_every: null`` (the default): one after the first epoch, which measures the
    cost, then one whenever 49x that cost has passed, and one after the last. A fake clock:
    each epoch takes ``epoch_seconds``, each checkpoint 1 s; with 10 s epochs, every 5th."""
    import time as real_time

    from elalora_vit.train import loop

    class Clock:
        now = 0.0
        time = staticmethod(real_time.time)
        perf_counter = staticmethod(real_time.perf_counter)

        @classmethod
        def monotonic(cls):
            return cls.now

    written, save, epoch = [], loop.save_run_checkpoint, loop._train_epoch

    def timed_save(path, cfg, state, acc):
        written.append(state.epoch)
        Clock.now += 1.0
        return save(path, cfg, state, acc)

    def timed_epoch(*args, **kwargs):
        Clock.now += epoch_seconds
        return epoch(*args, **kwargs)

    monkeypatch.setattr(loop, "time", Clock)
    monkeypatch.setattr(loop, "save_run_checkpoint", timed_save)
    monkeypatch.setattr(loop, "_train_epoch", timed_epoch)
    cfg = load_config(None, tiny_overrides(folder_root, tmp_path / "auto", method="lora", **{"optim.epochs": 7}))
    assert cfg.checkpoint_every is None
    train(cfg)
    assert written == expected


def test_a_stop_between_checkpoints_still_writes_one(folder_root, tmp_path):
    out = tmp_path / "stopped"
    cfg = load_config(None, tiny_overrides(folder_root, out, method="lora", checkpoint_every=5))
    assert train(cfg, stop_after_epoch=1) == {"interrupted_after_epoch": 1}
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 1
