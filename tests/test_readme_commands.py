"""Every shell command in README.md's code blocks runs, so that a documented command
cannot rot.

Commands are found in the ```bash / ```sh / ```shell / ```console blocks (comments
dropped, ``\\`` continuations joined) and handled by what they run, not by their exact
text, so a new README command of a known subcommand is run without touching this file:

- ``elalora-vit <subcommand>`` (or ``python -m elalora_vit.cli``) runs in-process in a
  scratch folder holding generated data for every VTAB task (``data/vtab-1k``) and the
  repository's ``configs/``, by the handler of its subcommand in ``HANDLERS``: ``train``
  and ``vtab-sweep`` get a tiny random-weight model appended and ``--dry-run`` (which
  checks settings, data, weights and output folder); the others run as they are on
  generated inputs;
- a launcher (``accelerate launch``, ``torchrun``) cannot run here (several GPUs or
  processes): listed in ``LAUNCHERS`` with the reason, and the command it launches is
  run as above;
- anything else must be listed in ``NOT_RUN`` with the reason; an unknown program or
  subcommand fails the test, saying where to classify it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from elalora_vit import cli
from tests.train.conftest import write_folder_task

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"

# Programs (or program + first arguments) that are not run, and why.
NOT_RUN = {
    "python -m venv": "creates a virtual environment (.ci/run does it in CI)",
    "pip install": "installs packages from the network (.ci/run does it in CI)",
    "source": "activates a virtual environment",
    "python -m pytest": "the test suite itself",
}
# Launchers of several processes or GPUs: not run (no GPUs, and one process per test);
# the elalora-vit command after ``-m elalora_vit.cli`` is run instead.
LAUNCHERS = {
    "accelerate launch": "needs several GPUs (--multi_gpu); multi-process training is tested "
                         "with torchrun in tests/reliability/test_distributed.py",
    "torchrun": "starts several processes; tests/reliability/test_distributed.py runs it",
}
# Shell variables a command may use, and the values they get here.
VARIABLES = {"SLURM_ARRAY_TASK_ID": "1"}
# Arguments that cannot run offline: the command is parsed (flags checked), not run.
OFFLINE_IMPOSSIBLE = {"--download": "downloads datasets (needs TensorFlow and internet)"}

TINY_MODEL = [
    "--set", "model.name=vit_tiny_patch16_224", "--set", "model.pretrained=false", "--set", "model.checkpoint=null",
    "--set", 'model.kwargs={"img_size": 32, "patch_size": 8, "depth": 1}', "--set", "data.image_size=32",
]


# ------------------------------------------------------------------ finding the commands
def readme_commands(text: str | None = None) -> list[str]:
    """The shell commands of README's shell code blocks, one string each."""
    text = README.read_text() if text is None else text
    blocks = re.findall(r"^([ \t]*)```(?:bash|sh|shell|console)[ \t]*\n(.*?)^\1```", text, flags=re.S | re.M)
    commands = []
    for indent, body in blocks:
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in body.splitlines())
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                commands.append(line.strip())
    return commands


def words(command: str) -> list[str]:
    """The command's arguments, comments dropped, variables given their test values."""
    for name, value in VARIABLES.items():
        command = command.replace(f"${{{name}}}", value).replace(f"${name}", value)
    return [w for w in shlex.split(command, comments=True) if w != "..."]  # "..." stands for "more flags"


def elalora_args(argv: list[str]) -> list[str] | None:
    """The arguments of the elalora-vit command in ``argv`` (after a launcher), or None."""
    if argv[0] == "elalora-vit":
        return argv[1:]
    if "-m" in argv and argv[argv.index("-m") + 1] == "elalora_vit.cli":
        return argv[argv.index("-m") + 2:]
    return None


def prefix(argv: list[str], table: dict[str, str]) -> str | None:
    return next((key for key in table if argv[: len(key.split())] == key.split()), None)


# ------------------------------------------------------------------ running them
@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder as a user's clone would look after preparing the data: configs/,
    and data/vtab-1k with a tiny folder for every VTAB task (2 classes, as pcam has)."""
    from elalora_vit.data import TASKS

    root = tmp_path_factory.mktemp("readme")
    (root / "configs").symlink_to(REPO / "configs")
    for task in TASKS:
        write_folder_task(root / "data" / "vtab-1k", task=task.name, classes=2, train=8, test=4)
    return root


def run_train(args: list[str], workdir: Path) -> int:
    if "--data-source" in args and args[args.index("--data-source") + 1] == "tfds":  # the generated folders instead
        args[args.index("--data-source") + 1] = "folder"
    return cli.main([*args, *TINY_MODEL, "--no-progress", "--dry-run"])


def run_sweep(args: list[str], workdir: Path) -> int:
    return cli.main([*args, *TINY_MODEL, "--dry-run"])


def run_report(args: list[str], workdir: Path) -> int:
    (workdir / args[1]).mkdir(parents=True, exist_ok=True)  # a sweep folder, empty here
    return cli.main(args)


def run_inspect(args: list[str], workdir: Path) -> int:
    from torch import nn

    from elalora_vit import ElaLoRAConfig, patch_model, save_adapters

    model = nn.Sequential(nn.Linear(4, 6))
    patch_model(model, ["0"], ElaLoRAConfig(rank=2))
    path = Path(args[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_adapters(model, path, ElaLoRAConfig(rank=2))
    return cli.main(args)


def parse_only(args: list[str], workdir: Path) -> int:
    """Subcommands that need data this machine cannot have (prepared TFDS builders):
    the flags are parsed by the real parser."""
    cli.build_parser().parse_args(args)
    return 0


HANDLERS = {
    "train": run_train,
    "vtab-sweep": run_sweep,
    "vtab-report": run_report,
    "inspect-adapter": run_inspect,
    "list-tasks": lambda args, workdir: cli.main(args),
    "prepare-vtab": parse_only,  # reads prepared tensorflow-datasets data
}


def classify(command: str) -> tuple[str, str]:
    """("run", subcommand) or ("skip", reason); an unclassified command fails."""
    argv = words(command)
    if prefix(argv, NOT_RUN):
        return "skip", NOT_RUN[prefix(argv, NOT_RUN)]
    args = elalora_args(argv)
    if args is None:
        pytest.fail(f"README command not classified: {command!r}; add its program to NOT_RUN or LAUNCHERS "
                    "in tests/test_readme_commands.py, with the reason")
    if argv[0] != "elalora-vit" and argv[:3] != ["python", "-m", "elalora_vit.cli"] and not prefix(argv, LAUNCHERS):
        pytest.fail(f"README command with an unknown launcher: {command!r}; add it to LAUNCHERS")
    if "--help" in args or "-h" in args:
        return "run", "--help"
    if not args or args[0] not in HANDLERS:
        pytest.fail(f"README command of an unknown subcommand: {command!r}; add a handler to HANDLERS")
    return "run", args[0]


@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_runs(command, workdir, monkeypatch, capsys):
    kind, what = classify(command)
    if kind == "skip":
        pytest.skip(what)
    args = elalora_args(words(command))
    monkeypatch.chdir(workdir)
    if what == "--help":
        with pytest.raises(SystemExit) as exit_info:
            cli.main(args)
        assert exit_info.value.code == 0
        return
    offline = [reason for flag, reason in OFFLINE_IMPOSSIBLE.items() if flag in args]
    code = parse_only(args, workdir) if offline else HANDLERS[what](list(args), workdir)
    err = capsys.readouterr().err
    assert code == 0, f"{command!r} failed:\n{err[-3000:]}"


def test_commands_are_found_and_classified():
    commands = readme_commands()
    kinds = [classify(c) for c in commands]
    assert sum(kind == "run" for kind, _ in kinds) >= 10
    assert {"train", "vtab-sweep", "vtab-report", "--help"} <= {what for kind, what in kinds if kind == "run"}
    # indented blocks (inside list items) and continuations are read too
    assert any("accelerate launch" in c and "vtab-sweep" in c for c in commands)
    assert any("--output runs/vtab-val/lr3e-3" in c for c in commands)


def test_an_unclassified_command_fails_the_test():
    text = "```bash\nelalora-vit train --task dtd   # fine\nmake-coffee --strong\n```\n"
    commands = readme_commands(text)
    assert commands == ["elalora-vit train --task dtd   # fine", "make-coffee --strong"]
    assert classify(commands[0]) == ("run", "train")
    with pytest.raises(pytest.fail.Exception, match="not classified"):
        classify(commands[1])
    with pytest.raises(pytest.fail.Exception, match="unknown subcommand"):
        classify("elalora-vit brew --now")
