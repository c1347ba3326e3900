"""Every shell command in the code blocks of README.md and of the documentation's guides
(docs/*.md, ``tests/docs_pages.py``) runs, so that a documented command cannot rot.

Commands are found in the ```bash / ```sh / ```shell / ```console blocks (comments
dropped, ``\\`` continuations joined) and handled by what they run, not by their exact
text, so a new README command of a known subcommand is run without touching this file:

- ``NAME=value`` lines set a shell variable: not run, their value is substituted in the
  later commands (``$NAME``, ``${NAME}``); ``VARIABLES`` gives the values of those the
  README does not set (a Slurm array index). ``NAME=$(command)`` runs ``command``.
- ``elalora-vit <subcommand>`` (or ``python -m elalora_vit.cli``) runs in-process in a
  scratch folder holding generated data for every VTAB task (``data/vtab-1k``) and the
  repository's ``configs/``, by the handler of its subcommand in ``HANDLERS``: ``train``,
  ``vtab-sweep`` and ``vtab-tune`` get a tiny random-weight model appended and
  ``--dry-run`` (which checks settings, data, weights and output folder); ``evaluate``,
  ``predict`` and ``export`` run on a real finished run trained (1 epoch, tiny model) at
  the folder they name, with the image files they name; the others run as they are on
  generated inputs;
- a launcher (``accelerate launch``, ``torchrun``, ``sbatch``) cannot run here (several
  GPUs or processes, Slurm): listed in ``LAUNCHERS`` with the reason, and the command it
  launches (for ``sbatch``, its ``--wrap`` command) is run as above;
- ``python <folder>/<script>.py`` runs by the handler of its folder in ``SCRIPTS``
  (benchmarks get ``--quick``), so a new script of a known folder needs no edit here;
- anything else must be listed in ``NOT_RUN`` with the reason; an unknown program or
  subcommand fails the test, saying where to classify it.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from elalora_vit import cli
from tests.docs_pages import PAGES, REPO, pages_text
from tests.train.conftest import write_folder_task

# Programs (or program + first arguments) that are not run, and why.
NOT_RUN = {
    "python -m venv": "creates a virtual environment (.ci/run does it in CI)",
    "pip install": "installs packages from the network (.ci/run does it in CI)",
    "source": "activates a virtual environment",
    "python -m pytest": "the test suite itself",
    "mkdocs": "builds or serves the documentation site; .ci/run runs `mkdocs build --strict`",
    "tfds": "TensorFlow Datasets' own CLI: needs TensorFlow and apache-beam, and downloads; "
            "tests/data/fixtures/make_tfds_fixtures.py runs the real builders",
}
# Launchers of several processes or GPUs: not run (no GPUs, and one process per test);
# the elalora-vit command after ``-m elalora_vit.cli`` is run instead.
LAUNCHERS = {
    "accelerate launch": "needs several GPUs (--multi_gpu); multi-process training is tested "
                         "with torchrun in tests/reliability/test_distributed.py",
    "torchrun": "starts several processes; tests/reliability/test_distributed.py runs it",
    "sbatch": "submits a Slurm job (no Slurm here); its --wrap command is run",
}
# Shell variables the README uses but does not set, and the values they get here
# (the README's own NAME=value lines give the others).
VARIABLES = {"SLURM_ARRAY_TASK_ID": "1"}
ASSIGNMENT = re.compile(r"^([A-Za-z_]\w*)=(.*)$")
SUBSTITUTION = re.compile(r"^\$\((.*)\)$", flags=re.S)  # NAME=$(command)
# Arguments that cannot run offline: the command is parsed (flags checked), not run.
OFFLINE_IMPOSSIBLE = {"--download": "downloads datasets (needs TensorFlow and internet)"}

TINY_MODEL = [
    "--set", "model.name=vit_tiny_patch16_224", "--set", "model.pretrained=false", "--set", "model.checkpoint=null",
    "--set", 'model.kwargs={"img_size": 32, "patch_size": 8, "depth": 1}', "--set", "data.image_size=32",
    "--set", "optim.batch_size=4",  # the generated splits hold 4 to 12 images; a larger batch is refused
]


# ------------------------------------------------------------------ finding the commands
def readme_commands(text: str | None = None) -> list[str]:
    """The shell commands of the pages' shell code blocks (README.md and the guides), one string each."""
    text = pages_text() if text is None else text
    blocks = re.findall(r"^([ \t]*)```(?:bash|sh|shell|console)[ \t]*\n(.*?)^\1```", text, flags=re.S | re.M)
    commands = []
    for indent, body in blocks:
        body = "\n".join(line[len(indent):] if line.startswith(indent) else line for line in body.splitlines())
        for line in body.replace("\\\n", " ").splitlines():
            if line.strip() and not line.strip().startswith("#"):
                commands.append(line.strip())
    return commands


def substitute(text: str, variables: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` (escaped ``\\$`` too: the shell of an sbatch job expands
    those) replaced by their values; unknown names are left as they are."""
    def value(match: re.Match) -> str:
        name = match.group(2) or match.group(3)
        return variables.get(name, match.group(0))
    return re.sub(r"\\?\$(\{(\w+)\}|(\w+))", value, text)


def readme_variables(commands: list[str] | None = None) -> dict[str, str]:
    """The shell variables the README's ``NAME=value`` lines set (a ``NAME=$(command)``
    line: a stand-in value, e.g. a job id), over ``VARIABLES``."""
    variables = dict(VARIABLES)
    for command in readme_commands() if commands is None else commands:
        match = ASSIGNMENT.match(command)
        if match:
            name, raw = match.groups()
            if SUBSTITUTION.match(raw.strip()):
                variables[name] = "1234"  # what `sbatch --parsable` prints: a job id
            else:
                variables[name] = " ".join(shlex.split(substitute(raw, variables), comments=True))
    return variables


def words(command: str, variables: dict[str, str] | None = None) -> list[str]:
    """The command's arguments, comments dropped, variables given their values (the
    command of a ``NAME=$(command)`` line)."""
    command = substitute(command, readme_variables() if variables is None else variables)
    match = ASSIGNMENT.match(command)
    if match and SUBSTITUTION.match(match.group(2).strip()):
        command = SUBSTITUTION.match(match.group(2).strip()).group(1)
    return [w for w in shlex.split(command, comments=True) if w != "..."]  # "..." stands for "more flags"


def elalora_args(argv: list[str]) -> list[str] | None:
    """The arguments of the elalora-vit command in ``argv`` (after a launcher, or in
    sbatch's ``--wrap``), or None."""
    if argv[0] == "elalora-vit":
        return argv[1:]
    if argv[0] == "sbatch":
        wrapped = next((a.split("=", 1)[1] for a in argv if a.startswith("--wrap=")), None)
        if "--wrap" in argv:
            wrapped = argv[argv.index("--wrap") + 1]
        return elalora_args(shlex.split(wrapped)) if wrapped else None
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
    for folder in ("configs", "tests", "benchmarks", "examples", "tools"):  # what the documented commands name
        (root / folder).symlink_to(REPO / folder)
    for task in TASKS:
        write_folder_task(root / "data" / "vtab-1k", task=task.name, classes=2, train=8, test=4)
    return root


def run_train(args: list[str], workdir: Path) -> int:
    if "--data-source" in args and args[args.index("--data-source") + 1] == "tfds":  # the generated folders instead
        args[args.index("--data-source") + 1] = "folder"
    return cli.main([*args, *TINY_MODEL, "--no-progress", "--dry-run"])


def run_sweep(args: list[str], workdir: Path) -> int:
    return cli.main([*args, *TINY_MODEL, "--dry-run"])


def run_tune(args: list[str], workdir: Path) -> int:
    return cli.main([*args, *TINY_MODEL, "--dry-run"])


# Every problem the generated data must have: tiny splits (8/4/12/4 images) of 2 classes.
TINY_DATA_PROBLEM = re.compile(r"NONSTANDARD: \S+: (\d+ images, VTAB-1k has \d+ in \w+|missing class\(es\) .*)")


def run_check_data(args: list[str], workdir: Path) -> int:
    """The real check on the generated data: a table per task, and exit code 1 for the
    violations tiny data must have (sizes, missing classes) and no other."""
    import contextlib
    import io

    from elalora_vit.data import TASKS

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(args)
    text = out.getvalue()
    tables = re.findall(r"^(\w+): \d+ problem\(s\).*\n  split +images +expected", text, flags=re.M)
    problems = re.findall(r"^  ([A-Z]+: .*)$", text, flags=re.M)
    assert sorted(tables) == sorted(task.name for task in TASKS), text[-3000:]
    assert problems and all(TINY_DATA_PROBLEM.fullmatch(p) for p in problems), [
        p for p in problems if not TINY_DATA_PROBLEM.fullmatch(p)]
    assert code == 1, text[-3000:]
    return 0


def finished_run(run: Path) -> Path:
    """A real finished run at ``run`` (trained once per module: the quick start's config,
    the tiny model, 1 epoch on digits' val200 split)."""
    if not (run / "result.json").is_file():
        code = cli.main(["train", "--config", "configs/quickstart-digits.yaml", "--output", str(run), *TINY_MODEL,
                         "--set", "optim.epochs=1", "--set", "data.train_split=val200", "--set", "eval_every=0",
                         "--no-progress"])
        assert code == 0 and (run / "result.json").is_file(), f"training the run {run} for the README failed"
    return run


def run_use(args: list[str], workdir: Path) -> int:
    """evaluate / predict / export on a finished run, with the images a command names."""
    import numpy as np
    from PIL import Image

    finished_run(Path(args[1]))
    for name in args[2:]:
        if Path(name).suffix.lower() in (".png", ".jpg", ".jpeg") and not Path(name).exists():
            Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(name)
    return cli.main(args)


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
    "vtab-tune": run_tune,
    "check-data": run_check_data,
    "evaluate": run_use,
    "predict": run_use,
    "export": run_use,
    "vtab-report": run_report,
    "inspect-adapter": run_inspect,
    "list-tasks": lambda args, workdir: cli.main(args),
    "prepare-vtab": parse_only,  # reads prepared tensorflow-datasets data
}


# ------------------------------------------------------------------ python <folder>/<script>.py
def run_script(argv: list[str], workdir: Path, timeout: float = 300) -> str:
    """``python SCRIPT ARGS`` in the scratch folder, with this checkout importable; its stdout."""
    import os

    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *argv[1:]], cwd=workdir, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(argv)} failed:\n{(proc.stdout + proc.stderr)[-3000:]}"
    return proc.stdout


def run_mutations(argv: list[str], workdir: Path) -> None:
    """Every form runs ``--list`` (a second): a full run copies the checkout and runs the
    affected test files once per mutation, 10+ minutes, too slow for this test. The names
    after ``--only`` must be mutations that exist, so a renamed one is caught."""
    listed = run_script([*argv[:2], "--list"], workdir)
    if "--only" in argv:
        names = argv[argv.index("--only") + 1:]
        names = names[: next((i for i, n in enumerate(names) if n.startswith("-")), len(names))]
        missing = [n for n in names if not re.search(rf"^{re.escape(n)}$", listed, flags=re.M)]
        assert names and not missing, f"tests/mutations.py --list has no mutation {missing}:\n{listed}"


def run_benchmark(argv: list[str], workdir: Path) -> None:
    """A benchmark's smoke run (``--quick``: every benchmark has it)."""
    run_script(argv if "--quick" in argv else [*argv, "--quick"], workdir)


# Flags that make an example small and offline, added when the example's source defines them.
EXAMPLE_FLAGS = ("--quick", "--tiny", "--offline", "--dry-run")


def run_example(argv: list[str], workdir: Path) -> None:
    source = (REPO / argv[1]).read_text()  # a README naming a missing example fails here
    run_script([*argv, *(f for f in EXAMPLE_FLAGS if f'"{f}"' in source and f not in argv)], workdir)


def run_tool(argv: list[str], workdir: Path) -> None:
    """A maintenance tool in its checking form (``--check``: writes nothing, fails when stale)."""
    run_script(argv if "--check" in argv else [*argv, "--check"], workdir)


# Scripts by their path or folder ("python benchmarks/<any>.py ..." is run by run_benchmark).
SCRIPTS = {"tests/mutations.py": run_mutations, "benchmarks/": run_benchmark, "examples/": run_example,
           "tools/": run_tool}


def script_kind(argv: list[str]) -> str | None:
    if argv[0] not in ("python", "python3") or len(argv) < 2 or not argv[1].endswith(".py"):
        return None
    return next((key for key in SCRIPTS if argv[1] == key or (key.endswith("/") and argv[1].startswith(key))), None)


def classify(command: str) -> tuple[str, str]:
    """("run", subcommand or SCRIPTS key), ("set", what) for a variable, or ("skip",
    reason); an unclassified command fails."""
    match = ASSIGNMENT.match(command)
    if match and not SUBSTITUTION.match(match.group(2).strip()):
        return "set", f"sets ${match.group(1)} for the commands after it"
    argv = words(command)
    if prefix(argv, NOT_RUN):
        return "skip", NOT_RUN[prefix(argv, NOT_RUN)]
    if script_kind(argv):
        return "run", script_kind(argv)
    args = elalora_args(argv)
    if args is None:
        pytest.fail(f"documented command not classified: {command!r}; add its program to NOT_RUN or LAUNCHERS "
                    "in tests/test_readme_commands.py, with the reason")
    if argv[0] != "elalora-vit" and argv[:3] != ["python", "-m", "elalora_vit.cli"] and not prefix(argv, LAUNCHERS):
        pytest.fail(f"documented command with an unknown launcher: {command!r}; add it to LAUNCHERS")
    if "--help" in args or "-h" in args:
        return "run", "--help"
    if not args or args[0] not in HANDLERS:
        pytest.fail(f"documented command of an unknown subcommand: {command!r}; add a handler to HANDLERS")
    return "run", args[0]


@pytest.mark.parametrize("command", readme_commands(), ids=lambda c: re.sub(r"\s+", " ", c.split("  #")[0])[:100])
def test_readme_command_runs(command, workdir, monkeypatch, capsys):
    kind, what = classify(command)
    if kind != "run":
        pytest.skip(what)
    monkeypatch.chdir(workdir)
    if what in SCRIPTS:
        SCRIPTS[what](words(command), workdir)
        return
    args = elalora_args(words(command))
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
    assert {"train", "vtab-sweep", "vtab-tune", "vtab-report", "check-data", "evaluate", "predict", "export", "--help",
            "tests/mutations.py", "tools/"} <= {what for kind, what in kinds if kind == "run"}
    # every page's commands are read: the README's and the guides'
    for page in PAGES:
        assert set(readme_commands(page.read_text())) <= set(commands), page
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


def test_variables_sbatch_and_scripts():
    text = ('```bash\nRUN=runs/x\ncommon="--tasks dtd --seeds 0"\n'
            'j=$(sbatch --parsable --wrap "elalora-vit vtab-tune --shard \\${SLURM_ARRAY_TASK_ID}/4 $common")\n'
            'elalora-vit evaluate $RUN\npython benchmarks/new.py --n 2\npython examples/new.py\n```\n')
    commands = readme_commands(text)
    variables = readme_variables(commands)
    assert variables["RUN"] == "runs/x" and variables["common"] == "--tasks dtd --seeds 0" and variables["j"] == "1234"
    assert classify(commands[0]) == ("set", "sets $RUN for the commands after it")
    assert elalora_args(words(commands[2], variables)) == ["vtab-tune", "--shard", "1/4", "--tasks", "dtd", "--seeds", "0"]
    assert words(commands[3], variables) == ["elalora-vit", "evaluate", "runs/x"]
    assert [classify(c) for c in commands[4:]] == [("run", "benchmarks/"), ("run", "examples/")]
    with pytest.raises(pytest.fail.Exception, match="not classified"):
        classify("sbatch job.sh")
