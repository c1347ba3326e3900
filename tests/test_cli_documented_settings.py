"""The `train`, `vtab-sweep` and `prepare-vtab` command lines shown in the README, the --help
examples and the config comments resolve to valid settings as written (issue 11): a
documented command can no longer be refused for its own flags.  Nothing is trained."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from elalora_vit.cli import EXAMPLES, SWEEP_EXAMPLES, _train_overrides, build_parser
from elalora_vit.data import parse_task_list, task_names
from elalora_vit.train import load_config

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ("train", "vtab-sweep", "prepare-vtab")


def _shell_lines(text: str) -> list[str]:
    """Lines of shell, backslash continuations joined (comment prefixes of YAML files dropped)."""
    text = re.sub(r"\\\n\s*#?", " ", text)
    return [re.sub(r"^\s*#?\s*", "", line) for line in text.splitlines()]


def _documented_commands() -> list[tuple[str, list[str]]]:
    from tests.docs_pages import pages_text

    sources = {"docs": pages_text(), "cli.EXAMPLES": EXAMPLES + SWEEP_EXAMPLES}
    for path in [REPO / "configs" / "default.yaml", REPO / "configs" / "quickstart-digits.yaml",
                 *sorted((REPO / "configs" / "vtab").glob("*.yaml"))]:
        sources[str(path.relative_to(REPO))] = path.read_text()
    found: dict[tuple[str, ...], str] = {}  # each distinct command once, with its first place
    for where, text in sources.items():
        for line in _shell_lines(text):
            match = re.search(r"(?:elalora-vit|-m elalora_vit\.cli) ((?:%s)\b[^`]*)" % "|".join(COMMANDS), line)
            if match and "..." not in match.group(1) and "--help" not in match.group(1):
                argv = shlex.split(match.group(1).replace("${SLURM_ARRAY_TASK_ID}", "1")
                                   .replace("$SLURM_ARRAY_TASK_ID", "1"), comments=True)
                found.setdefault(tuple(argv), where)
    return [(where, list(argv)) for argv, where in found.items()]


DOCUMENTED = _documented_commands()


def test_the_documented_commands_are_found():
    kinds = {argv[0] for _, argv in DOCUMENTED}
    places = {where for where, _ in DOCUMENTED}
    assert kinds == set(COMMANDS) and {"docs", "cli.EXAMPLES", "configs/vtab/dtd.yaml"} <= places
    assert len(DOCUMENTED) > 30 and ["train", "--task", "cifar100", "--rank", "8"] in [a for _, a in DOCUMENTED]


@pytest.mark.parametrize("where, argv", DOCUMENTED, ids=[" ".join(argv)[:60] for _, argv in DOCUMENTED])
def test_a_documented_command_resolves_to_valid_settings(where, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # config paths in the examples are relative to the repository
    args = build_parser().parse_args(argv)
    if argv[0] == "train":
        cfg = load_config(args.config, _train_overrides(args))
        assert cfg.data.task in [*task_names(), "digits"]  # aliases resolved
    elif argv[0] == "prepare-vtab":
        assert parse_task_list(args.tasks)
    else:  # the sweep's planning resolves (and validates) every run's settings and writes nothing
        from elalora_vit.sweep import plan_sweep
        from elalora_vit.sweep.grid import parse_grid
        from elalora_vit.sweep.plan import DEFAULT_PRESETS
        from elalora_vit.config import parse_override

        overrides = dict(parse_override(text) for text in args.set or [])
        runs = plan_sweep(parse_task_list(args.tasks), args.methods, args.seeds, output=tmp_path / "sweep",
                          config=args.config, overrides=overrides, presets=DEFAULT_PRESETS,
                          grid=parse_grid(args.grid or []))
        assert runs and all(run.config.data.task in task_names() for run in runs)


def _subcommands():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return sub.choices


# What each command needs besides the flag, so that only the flag can be refused.
REQUIRED = {"evaluate": ["run"], "predict": ["run", "a.png"], "export": ["run", "--format", "timm", "--out", "x"],
            "vtab-report": ["runs"], "inspect-adapter": ["adapter.safetensors"]}


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_an_abbreviated_flag_is_refused(command, capsys):
    """A flag counts only as spelled: a prefix such as `--stag` for `--stage` is an error,
    so a command in the docs or a script cannot pass with a typo."""
    sub = _subcommands()[command]
    flags = {o for a in sub._actions for o in a.option_strings if o.startswith("--")}
    abbreviated = [f[:-1] for f in sorted(flags) if len(f) > 4 and not any(g.startswith(f[:-1]) and g != f for g in flags)]
    assert abbreviated, command
    for flag in abbreviated:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([command, *REQUIRED.get(command, []), flag, "1"])
        assert exit_info.value.code == 2, (command, flag)
        assert f"unrecognized arguments: {flag}" in capsys.readouterr().err, (command, flag)
