"""Unit tests of the benchmarks' sizing rules (bench.sizing): pure logic, no Redis, no HTTP."""

import math

import pytest

from bench.sizing import LATENESS_SHARE_OF_CREATE_RATE, lateness_rate, steady_rate, timers_for_work


def test_timers_for_work_takes_the_work_time_at_the_rate():
    assert timers_for_work(2000.0, 5.0, 500, 60_000) == {
        "timers": 10_000, "rate_per_s": 2000.0, "work_s": 5.0, "expected_s": 5.0, "limited_by": None}


def test_timers_for_work_rounds_up_so_the_work_is_never_shorter():
    sized = timers_for_work(1234.5, 3.0, 1, 10**9)
    assert sized["timers"] == 3704
    assert sized["expected_s"] == 3.0


def test_timers_for_work_scales_with_the_machine_speed():
    slow, fast = timers_for_work(1000.0, 5.0, 500, 10**6), timers_for_work(3000.0, 5.0, 500, 10**6)
    assert (slow["timers"], fast["timers"]) == (5000, 15_000)
    assert slow["expected_s"] == fast["expected_s"] == 5.0


def test_timers_for_work_is_capped_and_says_so():
    sized = timers_for_work(50_000.0, 5.0, 500, 60_000)
    assert (sized["timers"], sized["limited_by"], sized["expected_s"]) == (60_000, "cap", 1.2)


def test_timers_for_work_has_a_floor_and_says_so():
    sized = timers_for_work(10.0, 5.0, 500, 60_000)
    assert (sized["timers"], sized["limited_by"], sized["expected_s"]) == (500, "floor", 50.0)


@pytest.mark.parametrize("rate", [0.0, -5.0, math.nan, math.inf])
def test_timers_for_work_without_a_usable_rate_gives_the_floor(rate):
    sized = timers_for_work(rate, 5.0, 500, 60_000)
    assert (sized["timers"], sized["limited_by"]) == (500, "floor")


def test_lateness_rate_is_half_the_create_rate():
    assert LATENESS_SHARE_OF_CREATE_RATE == 0.5
    assert lateness_rate(3428.4) == 1714
    assert lateness_rate(1000.0) == 500
    assert lateness_rate(1.0) == 1


@pytest.mark.parametrize("rps", [None, 0.0, -1.0, math.nan, math.inf])
def test_lateness_rate_without_a_create_rate_raises(rps):
    with pytest.raises(ValueError, match="no product create rate"):
        lateness_rate(rps)


def test_steady_rate_leaves_out_the_ramp_up():
    # 2 s window from t=100: a slow first quarter (10 arrivals), then 1000/s.
    ramp = [100.0 + k * 0.05 for k in range(10)]
    steady = [100.5 + k / 1000 for k in range(1500)]
    assert steady_rate(ramp + steady, 100.0, 102.0) == 1000.0


def test_steady_rate_ignores_arrivals_outside_the_window():
    inside = [101.0, 101.5, 101.9]
    assert steady_rate([99.0, 100.1, *inside, 102.5], 100.0, 102.0) == 2.0
