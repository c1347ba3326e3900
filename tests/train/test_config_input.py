"""What users type into configs and --set: number spellings, types checked per key by its
full name, task aliases, task lists, and the messages of a refused resume (issue 11)."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml

from elalora_vit.cli import EXAMPLES, SWEEP_EXAMPLES, _train_overrides, build_parser
from elalora_vit.core.config import ConfigError
from elalora_vit.data import UnknownTaskError, parse_task_list
from elalora_vit.train import load_config
from elalora_vit.train.checkpoint import CheckpointError, check_same_run
from elalora_vit.config import TrainConfig, parse_override

REPO = Path(__file__).resolve().parents[2]


def _set(*texts: str) -> TrainConfig:
    """The config `elalora-vit train --set TEXT ...` resolves to (the CLI's own parsing)."""
    args = build_parser().parse_args(["train", *[arg for text in texts for arg in ("--set", text)]])
    return load_config(args.config, _train_overrides(args))


def _file(tmp_path: Path, text: str) -> TrainConfig:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


def _get(cfg: TrainConfig, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


# ----------------------------------------------------------------------------- point 1: numbers
SPELLINGS = [
    ("optim.lr", "3e-3", 0.003),
    ("optim.min_lr", "1e-6", 1e-6),
    ("adapter.init_std", "2e-2", 0.02),
    ("optim.epochs", "1e2", 100),
    ("optim.lr", ".5", 0.5),
    ("optim.lr", "1E-3", 0.001),
    ("optim.lr", "+3e-3", 0.003),
    ("optim.warmup_epochs", "5.", 5.0),
    ("optim.warmup_epochs", "1_000", 1000.0),
    ("optim.batch_size", "1_000", 1000),
    ("optim.epochs", "2.0", 2),
    ("adapter.warmup", "1e-1", 0.1),
    ("data.image_size", "2.24e2", 224),
    ("optim.epochs", "2.5e1", 25),
    # Integers are decimal: YAML 1.1 reads 010 and 0_10 as octal 8, and 08 as a string.
    ("optim.epochs", "010", 10),
    ("optim.epochs", "0_10", 10),
    ("adapter.rank", "08", 8),
]


@pytest.mark.parametrize("key, text, expected", SPELLINGS)
def test_every_float_spelling_on_the_command_line(key, text, expected):
    value = _get(_set(f"{key}={text}"), key)
    assert value == pytest.approx(expected) and type(value) is type(expected)


@pytest.mark.parametrize("key, text, expected", SPELLINGS)
def test_every_float_spelling_in_a_config_file(tmp_path, key, text, expected):
    section, name = key.split(".")
    value = _get(_file(tmp_path, f"{section}:\n  {name}: {text}\n"), key)
    assert value == pytest.approx(expected) and type(value) is type(expected)


def test_numeric_flags_take_the_same_spellings():
    args = build_parser().parse_args(["train", "--lr", "3e-3", "--epochs", "1e2", "--rank", "8.0", "--batch-size", "1_024",
                                      "--seed", "2", "--eval-every", "1e1", "--image-size", "2.24e2"])
    cfg = load_config(None, _train_overrides(args))
    assert (cfg.optim.lr, cfg.optim.epochs, cfg.adapter.rank, cfg.optim.batch_size) == (0.003, 100, 8, 1024)
    assert (cfg.seed, cfg.eval_every, cfg.data.image_size) == (2, 10, 224)
    with pytest.raises(ConfigError, match=r"'optim.epochs': '1.5'; expected an integer \(1.5 is not a whole number\)"):
        load_config(None, _train_overrides(build_parser().parse_args(["train", "--epochs", "1.5"])))


def test_checkpoint_every_is_auto_by_default_and_takes_auto_or_a_number(tmp_path):
    def parsed(*flags):
        return load_config(None, _train_overrides(build_parser().parse_args(["train", *flags]))).checkpoint_every

    assert parsed() is None and parsed("--checkpoint-every", "auto") is None
    assert parsed("--checkpoint-every", "10") == 10 and parsed("--checkpoint-every", "0") == 0
    assert _file(tmp_path, "checkpoint_every: null\n").checkpoint_every is None
    with pytest.raises(ConfigError, match="checkpoint_every"):
        parsed("--checkpoint-every", "-1")


def test_numbers_in_lists_mappings_and_python_overrides(tmp_path):
    cfg = _file(tmp_path, "data:\n  mean: [1e-1, .2, 3e-1]\nmodel:\n  kwargs: {drop_path_rate: 1e-1}\n")
    assert cfg.data.mean == pytest.approx([0.1, 0.2, 0.3])
    assert cfg.model.kwargs == {"drop_path_rate": 0.1}  # timm gets a number, not the string '1e-1'
    assert load_config(None, {"optim.lr": "3e-3", "optim.epochs": "1e2"}).optim.epochs == 100


@pytest.mark.parametrize(
    "text, message",
    [
        ("optim.epochs=1.5", r"'optim.epochs': 1.5; expected an integer \(1.5 is not a whole number\)"),
        ("optim.lr=inf", r"'optim.lr': 'inf'; expected a number \(it is not finite\)"),
        ("optim.lr=.nan", r"'optim.lr': nan; expected a number \(it is not finite\)"),
        ("optim.epochs=1e400", r"'optim.epochs'.*not finite"),
        ("optim.lr=fast", r"'optim.lr': 'fast'; expected a number"),
    ],
)
def test_numbers_that_do_not_fit_say_why(text, message):
    with pytest.raises(ConfigError, match=message):
        _set(text)


# ----------------------------------------------------------------------------- point 8: types
def _leaf_keys(cls=TrainConfig, prefix=""):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from _leaf_keys(hint, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", hint


LEAVES = list(_leaf_keys())


def _wrong_values(hint) -> list:
    """Values no key of type `hint` accepts."""
    text = repr(hint)
    if "dict" in text:
        return ["foo", [1, 2], 3]
    if "list[str]" in text:
        return [{"x": 1}, [1, 2], 3.5]
    if "list[float]" in text:
        return [0.5, "foo", [0.5, 0.5], [0.5, "x", 0.5]]
    if hint is str or "str" in text:
        return [{"x": 1}, [1], 12, True]
    if hint is bool:
        return ["foo", 1, {"x": 1}]
    return ["foo", [1], {"x": 1}, True]  # int and float keys, optional or not


def test_the_walk_covers_every_key_of_default_yaml():
    documented = yaml.safe_load((REPO / "configs" / "default.yaml").read_text())
    keys = {f"{name}.{inner}" if isinstance(value, dict) and inner is not None else name
            for name, value in documented.items() for inner in (value if isinstance(value, dict) and value else [None])}
    assert keys == dict(LEAVES).keys() and len(keys) > 40


@pytest.mark.parametrize("key, hint", LEAVES, ids=[k for k, _ in LEAVES])
def test_every_key_refuses_a_wrong_type_naming_the_full_key(key, hint):
    for value in _wrong_values(hint):
        with pytest.raises(ConfigError) as info:
            load_config(None, {key: value})
        message = str(info.value)
        assert f"'{key}'" in message and repr(value) in message and "expected" in message, message


@pytest.mark.parametrize(
    "text, message",
    [
        ("data.mean=0.5", r"'data.mean': 0.5; expected a list of 3 numbers, e.g. \[0.5, 0.5, 0.5\], or null"),
        ("data.std=[0.5,0.5]", r"'data.std': \[0.5, 0.5\]; expected a list of 3 numbers.*2 value\(s\) given"),
        ("model.kwargs=foo", r"'model.kwargs': 'foo'; expected a mapping of names to values, e.g. \{img_size: 32\}"),
        ("model.split=qkv", r"'model.split': 'qkv'; expected a mapping of names to lists of strings"),
        ("adapter.rank=eight", r"'adapter.rank': 'eight'; expected an integer"),
        ("model.pretrained=maybe", r"'model.pretrained': 'maybe'; expected true or false"),
        ("optim.lr=", r"'optim.lr': None; expected a number \(null is not allowed here\)"),
        ("data=5", r"'data': 5; expected a section"),
        ("optim.lr.x=1", r"'optim.lr': \{'x': 1\}; expected a number"),
        ("optim.nope=1", r"unknown config key\(s\) \['optim.nope'\]"),
    ],
)
def test_config_errors_instead_of_tracebacks(text, message):
    with pytest.raises(ConfigError, match=message):
        _set(text)


@pytest.mark.parametrize(
    "key, value",
    [("adapter.rank", 0), ("adapter.max_rank", 2), ("adapter.alpha", 0), ("adapter.dropout", 1), ("adapter.init", "foo"),
     ("adapter.init_std", 0), ("adapter.lambda_lr_multiplier", 0), ("adapter.k", 0), ("adapter.b", -1),
     ("adapter.beta1", 1), ("adapter.beta2", 1), ("adapter.warmup", 2.5), ("adapter.adjust_interval", 1.5),
     ("adapter.stabilize", -1), ("adapter.orth_reg_weight", -1)],
)
def test_values_the_core_refuses_are_named_by_their_config_key(key, value):
    with pytest.raises(ConfigError, match=rf"invalid value for '{re.escape(key)}': {re.escape(repr(value))}"):
        load_config(None, {key: value})


def test_a_single_target_is_a_one_element_list_and_matches_real_timm_blocks():
    from elalora_vit.train.methods import final_rank_pattern, setup_method
    from elalora_vit.vit import create_backbone

    cfg = _set("model.targets=blocks.*.attn.proj", "adapter.rank=2")
    assert cfg.model.targets == ["blocks.*.attn.proj"]
    model = create_backbone("vit_tiny_patch16_224", 4, pretrained=False, img_size=32, patch_size=8, depth=2)
    setup_method(model, cfg, total_steps=100)
    assert sorted(final_rank_pattern(model)) == ["blocks.0.attn.proj", "blocks.1.attn.proj"]


def test_a_config_built_in_python_gets_the_same_checks():
    cfg = TrainConfig()
    cfg.model.targets = "blocks.*.attn.proj"
    cfg.optim.epochs = 1e2
    cfg.validate()
    assert cfg.model.targets == ["blocks.*.attn.proj"] and cfg.optim.epochs == 100 and type(cfg.optim.epochs) is int
    cfg.data.mean = 0.5
    with pytest.raises(ConfigError, match="'data.mean'"):
        cfg.validate()


def test_a_missing_base_file_names_the_config_that_includes_it(tmp_path):
    preset = tmp_path / "presets" / "mine.yaml"
    preset.parent.mkdir()
    preset.write_text("base: ../defaults.yaml\noptim: {lr: 3e-3}\n")
    with pytest.raises(ConfigError, match=rf"not found: .*defaults.yaml \(the 'base:' of {re.escape(str(preset))}"):
        load_config(preset)
    preset.write_text("base: mine.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(preset)


# ----------------------------------------------------------------------------- point 9: tasks
def test_task_aliases_resolve_to_the_canonical_name_and_folder():
    args = build_parser().parse_args(["train", "--task", "cifar100"])
    cfg = load_config(None, _train_overrides(args))
    assert cfg.data.task == "cifar"
    assert cfg.resolved_output_dir() == Path("runs/cifar/elalora/seed0")
    assert load_config(None, {"data.task": "Oxford_Pet"}).data.task == "oxford_iiit_pet"
    assert load_config(None, {"data.task": "digits", "data.source": "digits"}).data.task == "digits"
    with pytest.raises(UnknownTaskError, match="'data.task'.*Valid names: cifar"):
        load_config(None, {"data.task": "imagenet"})


def test_one_task_list_parser_takes_spaces_commas_or_both():
    natural_kitti = parse_task_list(["natural", "kitti"])
    assert natural_kitti[-1] == "kitti" and len(natural_kitti) == 8
    for form in ("natural kitti", "natural,kitti", ["natural,kitti"], ["natural,", "KITTI"], " natural , kitti "):
        assert parse_task_list(form) == natural_kitti
    assert parse_task_list("dtd cifar100 dtd") == ["cifar", "dtd"]


# ----------------------------------------------------------------------------- point 5: resume
def test_a_refused_resume_lists_only_the_differing_keys_and_why(tmp_path):
    saved = load_config(None, {"optim.epochs": 100}).to_dict()
    now = load_config(None, {"optim.epochs": 150, "adapter.rank": 4, "model.kwargs": {"depth": 2}}).to_dict()
    with pytest.raises(CheckpointError) as info:
        check_same_run(saved, now, tmp_path / "checkpoint.pt")
    message = str(info.value)
    lines = message.splitlines()
    assert "other settings (model.kwargs.depth, adapter.rank, optim.epochs)" in lines[0]
    assert "--output" in lines[0]
    assert re.search(r"optim.epochs: 100 -> 150 \(.*total steps", message)
    assert "adapter.rank: 8 -> 4" in message and "model.kwargs.depth: (unset) -> 2" in message
    assert len(lines) == 4 and "weight_decay" not in message and "alpha" not in message
    check_same_run(saved, load_config(None, {"optim.epochs": 1e2}).to_dict(), tmp_path / "checkpoint.pt")


# ----------------------------------------------------------------------------- documented examples
_SET = re.compile(r"--set\s+(?:'([^']*)'|\"([^\"]*)\"|([^\s`'\"]+))")


def _documented_sets() -> list[tuple[str, str]]:
    """Every `--set KEY=VALUE` in the README and the guides, the --help texts and the config comments."""
    parser = build_parser()
    helps = [parser.format_help(), EXAMPLES, SWEEP_EXAMPLES]
    helps += [sub.format_help() for action in parser._subparsers._group_actions for sub in action.choices.values()]
    from tests.docs_pages import pages_text

    sources = {"docs": pages_text(), "--help": "\n".join(helps)}
    for path in [REPO / "configs" / "default.yaml", *sorted((REPO / "configs" / "vtab").glob("*.yaml"))]:
        sources[str(path.relative_to(REPO))] = path.read_text()
    found = []
    for where, text in sources.items():
        for match in _SET.finditer(text):
            value = next(group for group in match.groups() if group is not None)
            if not value.startswith("KEY="):  # the placeholder of the usage lines
                found.append((where, value))
    return found


def test_every_documented_set_example_parses_and_validates():
    examples = _documented_sets()
    places = {where for where, _ in examples}
    assert {"docs", "--help", "configs/default.yaml", "configs/vtab/kitti.yaml"} <= places
    assert ("docs", "optim.lr=3e-3") in examples and len(examples) > 50
    for where, text in examples:
        key, value = parse_override(text)
        try:
            load_config(None, {key: value})
        except ConfigError as err:
            pytest.fail(f"{where}: --set {text} is refused: {err}")
    key, value = parse_override(re.search(r"e\.g\. (\S+)$", _malformed_set_message()).group(1))
    assert load_config(None, {key: value}).optim.lr == 0.003


def _malformed_set_message() -> str:
    with pytest.raises(ConfigError) as info:
        parse_override("optim.lr")
    return str(info.value)
