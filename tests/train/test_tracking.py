"""--log-to: the optional trackers, imported only when chosen."""

import json
import subprocess
import sys

import pytest

from elalora_vit.core import ConfigError
from elalora_vit.train import TrainingError, load_config, train
from elalora_vit.train.tracking import make_tracker
from tests.train.conftest import tiny_overrides


def test_no_tracker_library_is_needed_unless_chosen():
    # With both libraries made unimportable, the package and a silent tracker still work.
    code = ("import sys\n"
            "for m in ('wandb', 'tensorboard', 'torch.utils.tensorboard'): sys.modules[m] = None\n"
            "import elalora_vit.cli, elalora_vit.train.loop\n"
            "from elalora_vit.train.tracking import Tracker, make_tracker\n"
            "assert type(make_tracker('none', '.', 'run', {})) is Tracker\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_unknown_tracker_names_the_choices():
    with pytest.raises(ConfigError, match="'log_to': 'mlflow'; allowed: none, tensorboard, wandb"):
        load_config(None, {"log_to": "mlflow"})


def test_a_missing_tracker_library_says_what_to_install(tmp_path):
    for name in ("wandb", "tensorboard"):
        try:
            __import__(name)
        except ImportError:
            with pytest.raises(TrainingError, match=f"needs the {name} package.*pip install {name}"):
                make_tracker(name, tmp_path, "run", {})


def test_tensorboard_gets_the_loss_every_step_the_ranks_every_round_and_the_figures(folder_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    result = train(load_config(None, tiny_overrides(folder_root, out, log_to="tensorboard")))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    steps = lambda tag: [e.step for e in events.Scalars(tag)]  # noqa: E731
    assert steps("train/loss") == list(range(1, result["steps"] + 1))
    history = json.loads((out / "rank_history.json").read_text())
    assert steps("rank/total") == [r["step"] for r in history]
    name = next(iter(result["rank_pattern"]))
    assert [e.value for e in events.Scalars(f"rank/{name}")] == [r["rank_pattern"][name] for r in history]
    assert steps("epoch/train_loss") == [5, 10, 15]
    assert set(events.Tags()["images"]) == {"figures/rank_heatmap", "figures/rank_evolution", "figures/importance_scores"}


def test_wandb_offline_run_gets_the_scalars_and_figures(folder_root, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = tmp_path / "run"
    result = train(load_config(None, tiny_overrides(folder_root, out, log_to="wandb")))
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    media = sorted(p.name.rsplit("_", 1)[0] for p in (runs[0] / "files" / "media" / "images" / "figures").glob("*.png"))
    steps = result["steps"]
    assert media == [f"importance_scores_{steps}", f"rank_evolution_{steps}", f"rank_heatmap_{steps}"]
    log = next(runs[0].glob("run-*.wandb")).read_bytes()  # wandb's own record of the run (protobuf)
    assert log.count(b"rank/total") >= result["rounds"] and b"train/loss" in log and b"epoch/train_loss" in log
