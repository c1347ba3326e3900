import pytest

from elalora_vit import ConfigError, ElaLoRAConfig, adjustment_steps, check_schedule, phase, ranks_to_move

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


def test_constant_b_without_cubic_schedule():
    cfg = ElaLoRAConfig(b=3, cubic_schedule=False, warmup_steps=500, stabilize_steps=1500)
    assert {ranks_to_move(t, T, cfg) for t in adjustment_steps(T, cfg)} == {3}


def test_schedule_that_does_not_fit_is_a_clear_error():
    with pytest.raises(ConfigError, match=r"warmup_steps \(500\) \+ stabilize_steps \(1500\) must be smaller than total_steps \(1000\)"):
        check_schedule(PAPER, 1000)


@pytest.mark.parametrize(
    "field, value, allowed",
    [("rank", 0, ">= 1"), ("max_rank", 4, ">= rank"), ("beta1", 1.0, "[0, 1)"), ("adjust_interval", 0, ">= 1"), ("init", "xavier", "'gaussian'")],
)
def test_invalid_config_names_the_key(field, value, allowed):
    kwargs = {"rank": 8, field: value}
    with pytest.raises(ConfigError, match=f"'{field}'.*{allowed.replace('[', '.').replace(')', '.')}"):
        ElaLoRAConfig(**kwargs)


def test_unknown_config_key_lists_allowed_keys():
    with pytest.raises(ConfigError, match="unknown ElaLoRA config key.*'rnak'"):
        ElaLoRAConfig.from_dict({"rnak": 3})
