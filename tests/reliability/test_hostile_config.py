"""Hostile configs: every YAML the tool reads is bounded (size, depth, aliases), refuses
duplicate keys, BOMs and bytes that are not UTF-8, and says so in one line naming the
file and the line, within a second, wherever the YAML comes from."""

from __future__ import annotations

import time

import pytest

from elalora_vit import cli
from elalora_vit.config import MAX_DEPTH, load_yaml
from elalora_vit.core import ConfigError
from elalora_vit.train import load_config


def alias_bomb(levels: int = 7) -> str:
    """``model.kwargs`` whose aliases expand to 10**levels values ("billion laughs")."""
    lines = ["model:", "  kwargs:", "    l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels + 1):
        lines.append(f"    l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]")
    return "\n".join(lines) + "\n"


HOSTILE = {  # name -> (file bytes, the line and rule the message must give)
    "alias bomb": (alias_bomb().encode(), r"line 7: expands to more than 100,000 values"),
    "deep nesting": (("a: " + "[" * 3000 + "]" * 3000 + "\n").encode(), rf"line 1: nested more than {MAX_DEPTH} levels"),
    "duplicate key": (b"optim:\n  lr: 0.1\n  epochs: 3\n  lr: 0.2\n", r"line 4: duplicate key 'lr' \(first given on line 2\)"),
    "byte 0xff": (b"optim:\n  lr: \xff\n", r"line 2: byte 0xff is not UTF-8"),
    "UTF-8 BOM": (b"\xef\xbb\xbfoptim:\n  lr: 0.1\n", r"line 1: starts with a UTF-8 byte-order mark"),
    "NUL byte": (b"optim:\n  lr: 0.1\x00\n", r"line 2: not valid YAML"),
    "too large": (b"# " + b"x" * (1 << 20) + b"\n", r"a config may have at most 1,048,576"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_config_file_is_refused_in_one_line_within_a_second(name, tmp_path, capsys):
    data, rule = HOSTILE[name]
    config = tmp_path / "hostile.yaml"
    config.write_bytes(data)
    started = time.monotonic()
    with pytest.raises(ConfigError, match=rf"config file {config}, {rule}" if "line" in rule else rule):
        load_config(config)
    # the same through the command line: exit code 2 and one line naming the file
    assert cli.main(["train", "--config", str(config), "--dry-run", "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert str(config) in err and len(err.splitlines()) == 1, err
    assert time.monotonic() - started < 2.0
    assert not (tmp_path / "run").exists()


def test_hostile_base_file_is_named_with_the_file_that_includes_it(tmp_path):
    (tmp_path / "bomb.yaml").write_text(alias_bomb())
    child = tmp_path / "child.yaml"
    child.write_text("base: bomb.yaml\n")
    with pytest.raises(ConfigError, match=r"bomb\.yaml, line 7: expands to more than .*the 'base:' of .*child\.yaml"):
        load_config(child)


@pytest.mark.parametrize("value, rule", [
    ("[" * 3000 + "]" * 3000, "nested more than"),
    ("{a: 1, a: 2}", "duplicate key 'a'"),
    ("&a [x, x, x, x, x, x, x, x, x, x, x]", None),  # an anchor alone is fine
])
def test_hostile_set_value(value, rule, capsys):
    code = cli.main(["train", "--set", f"model.kwargs={value}", "--dry-run"])
    err = capsys.readouterr().err
    if rule is None:
        assert "nested" not in err and "duplicate" not in err
    else:
        assert code == 2 and rule in err and len(err.strip().splitlines()) == 1, err


def test_alias_bomb_in_a_run_folder_config_is_refused_by_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(alias_bomb())
    (run / "adapter.safetensors").write_bytes(b"")
    started = time.monotonic()
    assert cli.main(["evaluate", str(run)]) != 0
    err = capsys.readouterr().err
    assert f"{run / 'config.yaml'}, line 7: expands to more than" in err, err
    assert time.monotonic() - started < 2.0


def test_ordinary_yaml_still_reads():
    assert load_yaml("a: &x {b: 1}\nc: *x\nd: [1, 2, 3e-3, 010]\n<<: {e: 5}\n") == {
        "a": {"b": 1}, "c": {"b": 1}, "d": [1, 2, 0.003, 10], "e": 5}


@pytest.mark.parametrize("content, message", [
    (b"\xef\xbb\xbfimages/test/000000.png 0\n", None),  # a BOM (Windows editors) is dropped, line 1 reads
    (b"images/test/000000.png 0\nimages/test/\x00.png 1\n", r"test\.txt, line 2: holds a NUL byte"),
    (b"images/test/000000.png 0\nimages/test/\xff.png 1\n", r"test\.txt, line 2: byte 0xff is not UTF-8"),
])
def test_hostile_list_file_names_the_file_and_line(content, message, tmp_path):
    from elalora_vit.data import DataError, get_task
    from elalora_vit.data.folder import read_split_list
    from tests.data.conftest import build_task_folder

    build_task_folder(tmp_path)
    (tmp_path / "eurosat" / "test.txt").write_bytes(content)
    if message is None:
        assert [e.label for e in read_split_list(tmp_path, get_task("eurosat"), "test")] == [0]
    else:
        with pytest.raises(DataError, match=message):
            read_split_list(tmp_path, get_task("eurosat"), "test")
