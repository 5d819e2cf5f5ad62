"""The verification window's judge (deploylib.verdict): an exact binomial test on the
5xx share, a latency percentile against before the run, and what it says when there are
too few requests to judge."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploylib.verdict import Limits, Traffic, judge, upper_tail

LIMITS = Limits(max_error_rise=0.01, max_latency_ratio=2.0, min_latency_rise=0.05,
                min_requests=50)


@given(n=st.integers(0, 60), k=st.integers(0, 62), p=st.floats(0.001, 0.999))
def test_the_upper_tail_is_the_binomial_sum(n, k, p):
    exact = sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))
    assert upper_tail(k, n, p) == pytest.approx(min(1.0, exact), abs=1e-9)


def test_the_upper_tail_of_a_million_requests_is_quick_and_right():
    # the mean of Binomial(10**6, 0.01) is 10000: its tail at the mean is about a half,
    # at twice the mean nothing
    assert upper_tail(10_000, 1_000_000, 0.01) == pytest.approx(0.5, abs=0.01)
    assert upper_tail(20_000, 1_000_000, 0.01) < 1e-300


@pytest.mark.parametrize(("errors", "requests", "fails"), [
    (10, 50, True),    # a fifth of 50 against a 1 % allowance
    (3, 50, False),    # 6 %: not beyond chance with so few (p 0.014)
    (30, 300, True),
    (4, 300, False),   # 1.3 % of 300
    (200, 10_000, True),  # 2 % of a busy window: a small excess, caught
    (130, 10_000, False),
])
def test_errors_fail_a_window_only_beyond_chance(errors, requests, fails):
    verdict = judge(Traffic(requests, errors, 0.01), Traffic(1000, 0, 0.01), LIMITS)
    assert verdict.passed is not fails
    assert ("beyond chance" in verdict.why) is fails


def test_the_share_before_the_run_is_what_errors_are_compared_with():
    noisy_before = Traffic(1000, 50, 0.01)  # 5 % before the run
    assert judge(Traffic(1000, 55, 0.01), noisy_before, LIMITS).passed
    assert not judge(Traffic(1000, 120, 0.01), noisy_before, LIMITS).passed


def test_latency_fails_past_both_the_ratio_and_the_rise():
    before = Traffic(1000, 0, 0.100)
    assert judge(Traffic(1000, 0, 0.190), before, LIMITS).passed      # under 2x
    failed = judge(Traffic(1000, 0, 0.300), before, LIMITS)
    assert not failed.passed and failed.why.startswith("p90 latency 300 ms")
    # a 2 ms service at 3x is under the 50 ms rise: jitter, not a regression
    assert judge(Traffic(1000, 0, 0.006), Traffic(1000, 0, 0.002), LIMITS).passed


def test_a_quiet_window_is_not_judged_on_its_metrics_and_says_so():
    verdict = judge(Traffic(12, 6, 2.0), Traffic(1000, 0, 0.01), LIMITS)
    assert verdict.passed and not verdict.judged
    assert "fewer than min_requests=50" in verdict.findings[0]


def test_without_enough_requests_before_the_run_errors_meet_the_allowance_alone():
    verdict = judge(Traffic(1000, 5, 0.5), Traffic(10, 0, 0.01), LIMITS)
    assert verdict.passed
    assert "taken as 0" in verdict.findings[0]
    assert "not compared" in verdict.findings[1]
    assert not judge(Traffic(1000, 40, 0.5), Traffic(10, 0, 0.01), LIMITS).passed
