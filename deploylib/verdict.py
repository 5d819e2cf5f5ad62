"""The verification window's judge: what users saw during a window against what they saw
before the run. Pure: numbers in, a verdict out (deploylib.steps.verify reads the numbers
from CloudWatch).

Two questions, each asked only with enough requests to answer it:
- errors: is the window's 5xx share above the share before the run plus
  `max_error_rise`, beyond chance? The test is exact: the probability that a release
  exactly at the allowed share would show at least this many errors in this many
  requests (binomial upper tail) must be under ALPHA. With few requests it takes a
  larger excess to fail (against a 1 % allowance: 5 errors of 50, 22 of 1,000, 133 of
  10,000), so a quiet service is not rolled back on noise, and a busy one is caught at
  a small excess.
- latency: is the window's percentile above both `max_latency_ratio` times the one
  before and that one plus `min_latency_rise`? Percentiles are robust to a few slow
  requests; the rise keeps a 2 ms service's jitter from counting as a regression.
Without enough requests before the run, errors are judged against the allowance alone
(share 0 before) and latency is not judged, and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# A release exactly at the allowed error share fails a window at most once in 1000.
ALPHA = 0.001


@dataclass(frozen=True)
class Traffic:
    """What the balancer saw over a span: requests, those answered 5xx, a latency
    percentile in seconds (None: no request)."""

    requests: float
    errors: float
    latency: float | None = None

    @property
    def share(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def __add__(self, other: Traffic) -> Traffic:
        # Percentiles do not add: the slower of the two is the conservative one.
        lat = [x for x in (self.latency, other.latency) if x is not None]
        return Traffic(self.requests + other.requests, self.errors + other.errors,
                       max(lat) if lat else None)


@dataclass(frozen=True)
class Limits:
    max_error_rise: float
    max_latency_ratio: float
    min_latency_rise: float
    min_requests: int
    latency: str = "p90"  # the percentile's name, for what the verdict says


@dataclass(frozen=True)
class Verdict:
    passed: bool
    # Metric by metric, what was looked at and what it showed, in one line each.
    findings: tuple[str, ...]
    # The first failing finding (empty when passed).
    why: str = ""
    # Whether enough requests were seen to judge on metrics at all.
    judged: bool = True


def upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space (n may be millions)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0:
        return 0.0
    if p >= 1:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)

    def term(i: int) -> float:
        return math.exp(math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                        + i * log_p + (n - i) * log_q)

    # From k outwards, each way the terms only shrink: stop once they no longer count.
    if k <= n * p:  # at or below the mean: one minus the lower tail
        below = 0.0
        for i in range(k - 1, -1, -1):
            t = term(i)
            below += t
            if t <= below * 1e-12:
                break
        return max(0.0, 1.0 - below)
    total = 0.0
    for i in range(k, n + 1):
        t = term(i)
        total += t
        if t <= total * 1e-12:
            break
    return min(1.0, total)


def judge(window: Traffic, before: Traffic, limits: Limits) -> Verdict:
    """The window's verdict against the traffic before the run."""
    if window.requests < limits.min_requests:
        return Verdict(True, (f"{window.requests:.0f} request(s), fewer than min_requests="
                              f"{limits.min_requests}: metrics not judged",), judged=False)
    findings: list[str] = []
    failures: list[str] = []
    compared = before.requests >= limits.min_requests
    base = before.share if compared else 0.0
    allowed = min(1.0, base + limits.max_error_rise)
    tail = upper_tail(round(window.errors), round(window.requests), allowed)
    errors = (f"5xx {window.errors:.0f} of {window.requests:.0f} requests "
              f"({window.share:.1%}) against {base:.1%} before"
              + ("" if compared else " (too few requests before the run: taken as 0)")
              + f" + {limits.max_error_rise:.1%} allowed")
    if tail < ALPHA:
        failures.append(f"{errors}: beyond chance (p={tail:.1e})")
    findings.append(errors)
    name = limits.latency
    if window.latency is None or not compared or before.latency is None:
        findings.append(f"{name} latency not compared (too few requests before the run)")
    else:
        limit = max(before.latency * limits.max_latency_ratio,
                    before.latency + limits.min_latency_rise)
        latency = (f"{name} latency {window.latency * 1000:.0f} ms against "
                   f"{before.latency * 1000:.0f} ms before (limit {limit * 1000:.0f} ms)")
        if window.latency > limit:
            failures.append(latency)
        findings.append(latency)
    return Verdict(not failures, tuple(findings), failures[0] if failures else "")
