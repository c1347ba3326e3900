import dataclasses
import warnings

import pytest

from elalora_vit import ConfigError, ElaLoRAConfig, adjustment_steps, check_schedule, phase, ranks_to_move
from elalora_vit.core.config import SCHEDULE_SHAPES
from elalora_vit.core.schedule import SHAPES

PAPER = ElaLoRAConfig(rank=8, b=4, k=2, warmup_steps=500, adjust_interval=150, stabilize_steps=1500)
T = 5000


def test_phases_at_their_boundaries():
    assert phase(1, T, PAPER) == "warmup"
    assert phase(500, T, PAPER) == "warmup"
    assert phase(501, T, PAPER) == "adjust"
    assert phase(3500, T, PAPER) == "adjust"
    assert phase(3501, T, PAPER) == "stabilize"
    assert phase(5000, T, PAPER) == "stabilize"


def test_rounds_every_interval_inside_the_adjustment_phase():
    steps = adjustment_steps(T, PAPER)
    assert steps[0] == 650 and steps[-1] == 3500
    assert all(b - a == 150 for a, b in zip(steps, steps[1:]))
    assert len(steps) == 20


@pytest.mark.parametrize(
    "step, expected",
    [
        # progress = (t - 500) / 3000; b_t = round(4 * (1 - progress^3)), halves up
        (650, 4),  # 4 * (1 - 0.05^3) = 3.9995
        (2000, 4),  # 4 * (1 - 0.5^3) = 3.5 -> 4
        (2450, 3),  # 4 * (1 - 0.65^3) = 2.9015
        (2900, 2),  # 4 * (1 - 0.8^3) = 1.952
        (3200, 1),  # 4 * (1 - 0.9^3) = 1.084
        (3350, 1),  # 4 * (1 - 0.95^3) = 0.5705
        (3500, 0),  # end of the adjustment phase
        (100, 4),  # before the phase: progress clamps to 0
    ],
)
def test_cubic_decay_of_b(step, expected):
    assert ranks_to_move(step, T, PAPER) == expected


def test_constant_schedule_keeps_b():
    cfg = ElaLoRAConfig(b=3, schedule="constant", warmup_steps=500, stabilize_steps=1500)
    assert {ranks_to_move(t, T, cfg) for t in adjustment_steps(T, cfg)} == {3}


def _b_t(schedule, b=4):
    cfg = dataclasses.replace(PAPER, b=b, schedule=schedule)
    return [ranks_to_move(t, T, cfg) for t in (100, 500, 650, 1250, 1700, 2000, 2300, 2750, 3200, 3500, 4000)]


# progress = (t - 500) / 3000 at t = 100 (clamped), 500, 650, 1250, 1700, 2000, 2300, 2750, 3200, 3500, 4000 (clamped):
# 0, 0, 0.05, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1, 1
@pytest.mark.parametrize(
    "schedule, expected",
    [
        # 4 * (1 - p^3): 3.9995, 3.9375, 3.744, 3.5 (half: up), 3.136, 2.3125, 1.084
        ("cubic", [4, 4, 4, 4, 4, 4, 3, 2, 1, 0, 0]),
        # 4 * (1 - p): 3.8, 3, 2.4, 2, 1.6, 1, 0.4
        ("linear", [4, 4, 4, 3, 2, 2, 2, 1, 0, 0, 0]),
        # 4 * (1 + cos(pi p)) / 2: 3.9753, 3.4142, 2.6180, 2, 1.3820, 0.5858, 0.0979
        ("cosine", [4, 4, 4, 3, 3, 2, 1, 1, 0, 0, 0]),
        ("constant", [4] * 11),
    ],
)
def test_each_schedule_shape_gives_exact_b_t(schedule, expected):
    assert _b_t(schedule) == expected


def test_halves_round_up_in_every_shape():
    # b = 1 at the phase's middle: 1 * 0.5 = 0.5 exactly for linear and cosine -> 1 (banker's rounding gives 0)
    cfg = dataclasses.replace(PAPER, b=1)
    for schedule in ("linear", "cosine"):
        assert ranks_to_move(2000, T, dataclasses.replace(cfg, schedule=schedule)) == 1
    # linear b = 2 at p = 0.75: 2 * 0.25 = 0.5 -> 1; b = 3 at p = 0.5: 1.5 -> 2
    assert ranks_to_move(2750, T, dataclasses.replace(PAPER, b=2, schedule="linear")) == 1
    assert ranks_to_move(2000, T, dataclasses.replace(PAPER, b=3, schedule="linear")) == 2


def test_schedule_names_are_the_shapes():
    assert tuple(SHAPES) == SCHEDULE_SHAPES == ("cubic", "linear", "cosine", "constant")
    assert ElaLoRAConfig().schedule == "cubic"  # the paper's


def test_unknown_schedule_names_the_allowed_shapes():
    with pytest.raises(ConfigError, match="'schedule': 'cubik'; expected cubic | linear | cosine | constant"):
        ElaLoRAConfig(schedule="cubik")


@pytest.mark.parametrize("old, shape", [(True, "cubic"), (False, "constant")])
def test_cubic_schedule_is_a_deprecated_alias(old, shape):
    with pytest.warns(FutureWarning, match=f"'cubic_schedule' is deprecated; write 'schedule: {shape}'"):
        config = ElaLoRAConfig(cubic_schedule=old)
    assert config.schedule == shape and "cubic_schedule" not in config.to_dict()
    with pytest.warns(FutureWarning):
        assert ElaLoRAConfig.from_dict({"cubic_schedule": old}).schedule == shape
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # files of older versions are read quietly
        assert ElaLoRAConfig.from_dict({"cubic_schedule": old}, warn=False).schedule == shape


def test_cubic_schedule_contradicting_schedule_is_an_error():
    with pytest.raises(ConfigError, match="'cubic_schedule: false' contradicts 'schedule: linear'"):
        ElaLoRAConfig(schedule="linear", cubic_schedule=False)


def test_schedule_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"warmup_steps \(500\) \+ stabilize_steps \(1500\) must be smaller than total_steps \(1000\)"):
        check_schedule(PAPER, 1000)


@pytest.mark.parametrize(
    "field, value, allowed",
    [("rank", 0, ">= 1"), ("max_rank", 4, ">= rank"), ("beta1", 1.0, "[0, 1)"), ("adjust_interval", 0, ">= 1"), ("init", "xavier", "lora | orthogonal | gaussian")],
)
def test_invalid_config_names_the_key(field, value, allowed):
    kwargs = {"rank": 8, field: value}
    with pytest.raises(ConfigError, match=f"'{field}'.*{allowed.replace('[', '.').replace(')', '.')}"):
        ElaLoRAConfig(**kwargs)


def test_unknown_config_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match="unknown ElaLoRA config key.*'rnak'"):
        ElaLoRAConfig.from_dict({"rnak": 3})
