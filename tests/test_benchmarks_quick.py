"""A smoke run (--quick) measures too little to judge a target: it says so instead of
printing MISSED (or met) for every target."""

from tests.test_benchmarks_smoke import FAST, TINY, _script


def test_quick_step_time_does_not_judge_targets(capsys):
    step_time = _script("step_time")
    args = ["--models", TINY, "--rounds", "1", "--project-batches", "--variants", "elalora", "lora", *FAST]
    quick = step_time.main([*args, "--quick"])
    printed = capsys.readouterr().out
    verdicts = [t["verdict"] for t in quick["models"][0]["targets"].values()]
    assert verdicts and all(v.startswith("not judged") for v in verdicts)
    assert "MISSED" not in printed and "-> met" not in printed and "not judged (--quick" in printed
    full = step_time.main(args)
    assert all(t["verdict"] in ("met", "MISSED") for t in full["models"][0]["targets"].values())
