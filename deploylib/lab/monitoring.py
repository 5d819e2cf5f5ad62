"""The lab's CloudWatch: what moto stores but does not do.

moto keeps metrics and alarms; nothing publishes a load balancer's metrics into it, its
statistics stop at Sum/Average/Minimum/Maximum/SampleCount, and no alarm is ever
evaluated (an alarm stays as made, `OK`). The lab supplies, following CloudWatch's
documentation ("Application Load Balancer metrics"; "Using Amazon CloudWatch alarms":
evaluation periods, datapoints to alarm, missing data):
- each balancer's metrics (RequestCount, HTTPCode_Target_5XX_Count, HTTPCode_ELB_5XX_Count,
  TargetResponseTime per request) per target group and load balancer, one datapoint per
  `metric_period`, published `metric_delay` after the period ends, as ALB's arrive late
  (the latency profile scales both; by default 1 s each, lab time). As on ALB, the count
  metrics are published only for a period that had some;
- percentile statistics (p90, p99.9) over the stored values, nearest rank;
- metric alarm evaluation, each alarm once per its period: the last EvaluationPeriods
  periods, M of N breaching (DatapointsToAlarm) for ALARM; missing periods as
  TreatMissingData says (`missing`, the default: INSUFFICIENT_DATA when none has data).
  An alarm set by SetAlarmState keeps that state until its next evaluation, as in AWS.
Metrics older than RETAIN seconds are dropped (CloudWatch keeps them for 15 days; the
lab's windows look back minutes), so a lab left up does not grow without bound.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from deploylib.aws.cloudwatch import NAMESPACE, dimension_value

PERIOD = 1.0
DELAY = 1.0
RETAIN = 3600.0
_PERCENTILE = re.compile(r"p(\d{1,2}(?:\.\d+)?)")


@dataclass
class Meter:
    """One balancer's requests, by the period they ended in."""

    period: float = PERIOD
    lock: threading.Lock = field(default_factory=threading.Lock)
    periods: dict[float, dict[str, Any]] = field(default_factory=dict)

    def count(self, status: int, seconds: float | None, *, from_target: bool) -> None:
        """One request: its status, and (when a target answered) its response time."""
        now = time.time()
        start = math.floor(now / self.period) * self.period
        with self.lock:
            p = self.periods.setdefault(start, {"requests": 0, "target_5xx": 0, "elb_5xx": 0,
                                                "times": []})
            p["requests"] += 1
            if from_target:
                p["times"].append(seconds or 0.0)
                p["target_5xx"] += 500 <= status < 600
            else:
                p["elb_5xx"] += 500 <= status < 600

    def due(self, delay: float) -> list[tuple[float, dict[str, Any]]]:
        """The periods whose metrics arrive now (ended `delay` ago or more), taken."""
        now = time.time()
        with self.lock:
            ready = sorted(s for s in self.periods if s + self.period + delay <= now)
            return [(s, self.periods.pop(s)) for s in ready]


def datapoints(start: float, counts: dict[str, Any], group_arn: str, balancer_arn: str
               ) -> list[dict[str, Any]]:
    """One period of one balancer's requests as PutMetricData's MetricData."""
    when = datetime.fromtimestamp(start, UTC).replace(tzinfo=None)
    pair = [{"Name": "LoadBalancer", "Value": dimension_value(balancer_arn)},
            {"Name": "TargetGroup", "Value": dimension_value(group_arn)}]
    out: list[dict[str, Any]] = []
    if counts["requests"]:
        out.append({"MetricName": "RequestCount", "Value": counts["requests"],
                    "Unit": "Count", "Dimensions": pair, "Timestamp": when})
    if counts["target_5xx"]:
        out.append({"MetricName": "HTTPCode_Target_5XX_Count", "Value": counts["target_5xx"],
                    "Unit": "Count", "Dimensions": pair, "Timestamp": when})
    if counts["elb_5xx"]:  # the balancer's own: per load balancer only
        out.append({"MetricName": "HTTPCode_ELB_5XX_Count", "Value": counts["elb_5xx"],
                    "Unit": "Count", "Dimensions": pair[:1], "Timestamp": when})
    if counts["times"]:
        # Milliseconds apart at most: as many values as there are distinct times.
        binned: dict[float, int] = defaultdict(int)
        for t in counts["times"]:
            binned[round(t, 3)] += 1
        out.append({"MetricName": "TargetResponseTime", "Unit": "Seconds",
                    "Values": list(binned), "Counts": list(binned.values()),
                    "Dimensions": pair, "Timestamp": when})
    return out


# -- statistics ----------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float | None:
    """Nearest rank: the smallest value with at least p % of the values at or below it."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def install_statistics() -> None:
    """Percentiles in moto's GetMetricData (once per process: deploylib.lab.cloud.fill_gaps)."""
    from moto.cloudwatch.models import Statistics

    plain = Statistics.get_statistics_for_type

    def get_statistics_for_type(self: Any, stat: str) -> Any:
        found = _PERCENTILE.fullmatch(stat)
        if found is None:
            return plain(self, stat)
        return percentile(self.metric_single_values_list, float(found.group(1)))

    Statistics.get_statistics_for_type = get_statistics_for_type


# -- alarms --------------------------------------------------------------------------------

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": lambda v, t: v > t,
    "GreaterThanOrEqualToThreshold": lambda v, t: v >= t,
    "LessThanThreshold": lambda v, t: v < t,
    "LessThanOrEqualToThreshold": lambda v, t: v <= t,
}


def alarm_state(values: list[float | None], *, operator: str, threshold: float,
                to_alarm: int, missing: str) -> tuple[str, str]:
    """An alarm's state from its last N periods' values (oldest first, None: no data),
    and CloudWatch's kind of reason."""
    compare = _COMPARE.get(operator)
    if compare is None:  # anomaly detection bands: not evaluated by the lab
        return "INSUFFICIENT_DATA", f"the lab does not evaluate {operator}"
    present = [v for v in values if v is not None]
    if not present and missing in ("missing", "ignore"):
        return "INSUFFICIENT_DATA", "no datapoints were received in the evaluation periods"
    breaching = sum(compare(v, threshold) for v in present)
    if missing == "breaching":
        breaching += len(values) - len(present)
    if breaching >= to_alarm:
        return "ALARM", (f"Threshold Crossed: {breaching} out of the last {len(values)} "
                         f"datapoints were {operator} {threshold:g}")
    return "OK", (f"Threshold not crossed: {breaching} out of the last {len(values)} "
                  f"datapoints breached {threshold:g}")


def _evaluate(backend: Any, alarm: Any, now: datetime) -> None:
    from moto.cloudwatch.models import Statistics

    if alarm.metric_data_queries or not alarm.metric_name:
        return  # metric math: not evaluated by the lab
    period = timedelta(seconds=int(alarm.period))
    n = int(alarm.evaluation_periods)
    stat = alarm.extended_statistic or alarm.statistic
    end = datetime.fromtimestamp(
        math.floor(now.timestamp() / period.total_seconds()) * period.total_seconds(), UTC
    ).replace(tzinfo=None)
    start = end - n * period
    wanted = sorted(alarm.dimensions)
    data = [d for d in backend.get_all_metrics()
            if start <= d.timestamp < end and d.namespace == alarm.namespace
            and d.name == alarm.metric_name and sorted(d.dimensions) == wanted]
    values: list[float | None] = []
    for k in range(n):
        lo = start + k * period
        stats = Statistics([stat], lo)
        stats.metric_data = [d for d in data if lo <= d.timestamp < lo + period]
        value = stats.get_statistics_for_type(stat) if stats.metric_data else None
        values.append(None if value is None else float(value))
    state, reason = alarm_state(values, operator=alarm.comparison_operator,
                                threshold=float(alarm.threshold),
                                to_alarm=int(alarm.datapoints_to_alarm or n),
                                missing=alarm.treat_missing_data or "missing")
    if state != alarm.state_value:
        alarm.update_state(reason, json.dumps({"version": "1.0", "recentDatapoints": [
            v for v in values if v is not None]}), state)


# -- the loop ------------------------------------------------------------------------------


@dataclass
class Feed:
    """One balancer's meter and where its metrics go."""

    region: str
    group_arn: str
    balancer_arn: str
    meter: Meter


def run(feeds: Iterable[Feed], regions: list[str], *, delay: float = DELAY,
        account: str = "123456789012") -> threading.Event:
    """Publish every balancer's due periods and evaluate alarms, until the event is set."""
    from moto.cloudwatch.models import cloudwatch_backends

    stop = threading.Event()
    evaluated: dict[tuple[str, str], float] = {}

    def loop() -> None:
        while not stop.is_set():
            try:
                for feed in feeds:
                    backend = cloudwatch_backends[account][feed.region]
                    for start, counts in feed.meter.due(delay):
                        data = datapoints(start, counts, feed.group_arn, feed.balancer_arn)
                        if data:
                            backend.put_metric_data(NAMESPACE, data)
                now = datetime.now(UTC).replace(tzinfo=None)
                for region in regions:
                    backend = cloudwatch_backends[account][region]
                    old = now - timedelta(seconds=RETAIN)
                    if backend.metric_data and backend.metric_data[0].timestamp < old:
                        backend.metric_data = [d for d in backend.metric_data
                                               if d.timestamp >= old]
                    for alarm in list(backend.alarms.values()):
                        key = (region, alarm.name)
                        if now.timestamp() >= evaluated.get(key, 0) + int(alarm.period or 60):
                            evaluated[key] = now.timestamp()
                            _evaluate(backend, alarm, now)
            except Exception:  # noqa: BLE001 - one bad round must not stop the lab's metrics
                pass
            stop.wait(0.2)

    threading.Thread(target=loop, daemon=True, name="lab-cloudwatch").start()
    return stop
