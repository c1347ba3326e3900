"""benchmarks/transfer.py runs end to end in its quick mode and reports what BENCHMARKS.md shows."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "transfer.py"


@pytest.fixture(scope="module")
def transfer():
    spec = importlib.util.spec_from_file_location("transfer_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_method(transfer, tmp_path, capsys):
    out = tmp_path / "transfer.json"
    result = transfer.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert list(tmp_path.joinpath("cache").glob("transfer_backbone_*.pt")), "the backbone is cached"

    rows = {r["method"]: r for r in result["summary"]}
    assert set(rows) == set(transfer.METHODS)
    for row in rows.values():
        assert 0.0 <= row["test_acc_mean"] <= 100.0 and row["test_acc_std"] >= 0.0
        assert row["lr"] in result["settings"]["lrs"]
        assert len(row["test_acc_per_seed"]) == len(result["settings"]["seeds"])
    # Equal budget: the adapter methods share the rank; LoRA (ours) and PEFT's have the same parameters.
    rank = result["settings"]["rank"]
    assert {rows[m]["rank"] for m in ("lora", "lora (PEFT)", "adalora", "elalora")} == {rank}
    assert rows["lora"]["trainable_params"] == rows["lora (PEFT)"]["trainable_params"]
    assert rows["linear probe"]["trainable_params"] < rows["lora"]["trainable_params"] < rows["full fine-tuning"]["trainable_params"]

    runs = result["runs"]
    assert len(runs) == len(transfer.METHODS) * len(result["settings"]["lrs"]) * len(result["settings"]["seeds"])
    elalora = next(r for r in runs if r["method"] == "elalora")
    assert elalora["total_rank"] is not None and {"ranks_moved", "fired", "warnings"} <= set(elalora["health"])
    assert result["paired"][0]["a"] == "elalora" and result["paired"][0]["b"] == "lora"
    assert "| elalora |" in capsys.readouterr().out

    # A second run finds the backbone in the cache.
    again = transfer.main(["--quick", "--cache-dir", str(tmp_path / "cache"), "--methods", "linear probe"])
    assert again["pretrain"] == result["pretrain"]

    # Every run was also appended to <json>.runs.jsonl, which --summarise turns into the paired table.
    partial = out.with_suffix(".runs.jsonl")
    assert len(partial.read_text().splitlines()) == len(runs)
    table = transfer.main(["--summarise", str(partial)])["table"]
    assert "| transfer | 1 | elalora |" in table and "| transfer | 1 | lora |" in table


def test_summary_pairs_each_method_at_its_chosen_rate_with_a_95_percent_interval(transfer, tmp_path):
    # LoRA's validation picks 3e-3, ElaLoRA's 1e-2; the paired differences at those rates
    # are 1, 2 and 3 (mean 2, sd 1), so the interval is 2 ± t(0.975, 2) / sqrt(3) = 2 ± 2.48.
    test = {("lora", 1e-2): [70.0, 70.0, 70.0], ("lora", 3e-3): [80.0, 81.0, 82.0],  # files list rates in any order
            ("elalora", 3e-3): [60.0, 61.0, 65.0], ("elalora", 1e-2): [81.0, 83.0, 85.0]}
    val = {("lora", 3e-3): 90.0, ("lora", 1e-2): 50.0, ("elalora", 3e-3): 50.0, ("elalora", 1e-2): 90.0}
    runs = tmp_path / "w64_r8.runs.jsonl"
    runs.write_text("".join(
        json.dumps({"method": m, "kind": m, "lr": lr, "seed": s, "val_acc": val[m, lr], "val_loss": 0.5,
                    "test_acc": acc, "trainable_params": 100, "seconds": 1.0}) + "\n"
        for (m, lr), accs in test.items() for s, acc in enumerate(accs)))
    table = transfer.main(["--summarise", str(runs)])["table"]
    elalora = next(line for line in table.splitlines() if "| elalora |" in line)
    assert "| 0.01 (edge) |" in elalora and "| 83.00 ± 2.00 |" in elalora
    assert "+2.00 ± 1.00 [-0.48, +4.48]" in elalora
    # Same rate, rates in ascending order: 3e-3 gives -20, -20, -17; 1e-2 gives 11, 13, 15.
    assert "0.003: -19.00 ± 1.73 [-23.30, -14.70]; 0.01: +13.00 ± 2.00 [+8.03, +17.97]" in elalora


def test_defaults_previous_reruns_the_tables_made_before_the_defaults_changed(transfer):
    """``--defaults previous`` puts the old adapter defaults under every method's own overrides."""
    args = transfer.parse_args(["--defaults", "previous"])
    settings = transfer.build_settings(args)
    cfg = transfer.run_config("elalora", {}, settings, 1e-2, 0)
    assert (cfg.adapter.init, cfg.adapter.lambda_lr_multiplier) == ("orthogonal", 20.0)
    own = transfer.run_config("elalora", {"lambda_lr_multiplier": 1.0}, settings, 1e-2, 0)
    assert (own.adapter.init, own.adapter.lambda_lr_multiplier) == ("orthogonal", 1.0)  # the variant's wins
    current = transfer.run_config("elalora", {}, transfer.build_settings(transfer.parse_args([])), 1e-2, 0)
    assert (current.adapter.init, current.adapter.lambda_lr_multiplier) == ("lora", 1.0)
