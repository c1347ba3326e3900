"""The documentation site's generated references match the code, and name every CLI flag of
every subcommand and every config key; the site builds strictly where MkDocs is installed
(.ci/run installs the `docs` extra, so CI always builds it)."""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import subprocess
import sys

import pytest

from tests.docs_pages import REPO

spec = importlib.util.spec_from_file_location("gen_reference", REPO / "tools" / "gen_reference.py")
gen = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gen)


def test_the_committed_references_are_the_generated_ones():
    for name, text in {"cli": gen.cli_reference(), "config": gen.config_reference()}.items():
        assert gen.PAGES[name].read_text() == text, (
            f"{gen.PAGES[name].relative_to(REPO)} is stale: run `python tools/gen_reference.py` and commit it")
        assert str(REPO) not in text, "a generated page names this checkout's path: it would differ on every clone"


def _every_flag():
    from elalora_vit.cli import build_parser

    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, subparser in {"": parser, **sub.choices}.items():
        for action in subparser._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    yield name, flag


def test_every_flag_of_every_subcommand_is_in_the_cli_reference():
    page = gen.PAGES["cli"].read_text()
    sections = {s.split("`", 1)[0].strip(): s for s in page.split("\n## `elalora-vit")[1:]}
    flags = list(_every_flag())
    assert len(flags) > 70 and {name for name, _ in flags} >= {"train", "vtab-sweep", "vtab-tune", "export"}
    for name, flag in flags:
        assert f"`{flag}`" in sections[name], f"elalora-vit {name} {flag} is missing from docs/reference/cli.md"


def test_every_config_key_is_in_the_config_reference():
    page = gen.PAGES["config"].read_text()
    keys = [key for key, *_ in gen.config_keys()]
    assert len(keys) > 50 and {"adapter.rank", "optim.lr", "data.cache_dir", "checkpoint_every"} <= set(keys)
    for key, type_name, _, doc in gen.config_keys():
        assert doc, f"config key {key} has no documentation in elalora_vit/config/schema.py"
        assert f"| `{key}` | `{type_name}` |" in page, f"config key {key} is missing from docs/reference/config.md"


def test_a_new_flag_makes_the_reference_stale(monkeypatch):
    """The comparison fails when the code gains a flag the committed page lacks."""
    from elalora_vit import cli

    build = cli.build_parser

    def with_a_new_flag():
        parser = build()
        (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        sub.choices["train"].add_argument("--brand-new-flag", help="added by the test")
        return parser

    monkeypatch.setattr(cli, "build_parser", with_a_new_flag)
    assert "--brand-new-flag" in gen.cli_reference()
    assert gen.main(["--check"]) == 1


@pytest.mark.skipif(shutil.which("mkdocs") is None and importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs is not installed (pip install -e '.[docs]'); .ci/run builds the site")
def test_the_site_builds_strictly(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=REPO, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
