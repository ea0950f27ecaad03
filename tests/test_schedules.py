"""World-model horizon schedule values (reference formula)."""

import math

import pytest

from sb3_mamba.schedules import WorldModelHorizonSchedule


def test_linear_growth_to_full_horizon():
    schedule = WorldModelHorizonSchedule(initial=50, horizon=200, ramp_steps=5_000_000)
    assert schedule.enabled
    assert schedule(0) == 50
    assert schedule(2_500_000) == 125
    assert schedule(5_000_000) == 200
    assert schedule(50_000_000) == 200
    for steps in (1, 12_345, 3_333_333):
        assert schedule(steps) == min(math.ceil(steps * 150 / 5_000_000 + 50), 200)
    values = [schedule(s) for s in range(0, 6_000_000, 100_000)]
    assert values == sorted(values)


def test_no_schedule_when_initial_covers_horizon():
    schedule = WorldModelHorizonSchedule(initial=400, horizon=200, ramp_steps=0)
    assert not schedule.enabled
    assert schedule(0) == 200 and schedule(10**9) == 200


@pytest.mark.parametrize("initial, horizon, ramp", [(0, 200, 10), (50, 0, 10), (50, 200, 0), (50, 200, -5)])
def test_invalid_schedules_raise(initial, horizon, ramp):
    with pytest.raises(ValueError):
        WorldModelHorizonSchedule(initial, horizon, ramp)
