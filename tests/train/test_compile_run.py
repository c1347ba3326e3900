"""``compile: true`` (``--compile``): a real run trains through rank changes without
recompiling, and computes what the uncompiled run computes."""

from __future__ import annotations

import json

import torch

from elalora_vit import cli
from elalora_vit.train import load_config, train
from tests.reliability.conftest import cli_train_args
from tests.train.conftest import tiny_overrides


REAL_COMPILE = torch.compile


def _compiled_run(folder_root, out, epochs, monkeypatch):
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    monkeypatch.setattr(torch, "compile", lambda model, **kw: REAL_COMPILE(model, backend=counting_backend))
    torch._dynamo.reset()
    result = train(load_config(None, tiny_overrides(folder_root, out, compile=True, **{"optim.epochs": epochs})))
    return result, len(graphs)


def test_compiled_run_is_traced_the_same_whatever_the_number_of_rounds(folder_root, tmp_path, monkeypatch):
    short, short_graphs = _compiled_run(folder_root, tmp_path / "short", 3, monkeypatch)
    long, long_graphs = _compiled_run(folder_root, tmp_path / "long", 6, monkeypatch)
    rounds = [len(json.loads((tmp_path / name / "rank_history.json").read_text())) for name in ("short", "long")]
    assert 1 <= rounds[0] < rounds[1]  # ranks moved, more often in the longer run
    assert 1 <= short_graphs == long_graphs  # ... and no rank change recompiled anything
    plain = train(load_config(None, tiny_overrides(folder_root, tmp_path / "plain", **{"optim.epochs": 3})))
    assert abs(plain["accuracy"] - short["accuracy"]) <= 100 / 16 + 1e-9  # at most one test image apart


def test_compile_flag_sets_the_config_key(folder_root, tmp_path):
    args = cli_train_args(tiny_overrides(folder_root, tmp_path / "run"))
    assert cli.main([*args, "--compile", "--dry-run"]) == 0
    assert load_config(None, {"compile": True}).compile is True
