"""The lab's CloudWatch (deploylib.lab.monitoring): a balancer's requests as ALB's
metrics, published a period at a time and late; percentiles; metric alarms evaluated as
CloudWatch documents it (M of N, missing data), which moto does not do."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from deploylib import waits
from deploylib.lab import monitoring
from deploylib.lab.monitoring import Meter, alarm_state, datapoints, percentile


@pytest.mark.parametrize(("values", "to_alarm", "missing", "state"), [
    ([1, 9, 9], 2, "missing", "ALARM"),       # 2 of 3 breaching
    ([1, 9, 1], 2, "missing", "OK"),
    ([None, None, None], 2, "missing", "INSUFFICIENT_DATA"),
    ([None, None, None], 2, "notBreaching", "OK"),
    ([None, None, None], 2, "breaching", "ALARM"),
    ([None, 9, None], 2, "breaching", "ALARM"),
    ([None, 9, None], 2, "ignore", "OK"),
    ([9, 9, 9], 3, "missing", "ALARM"),
])
def test_an_alarm_is_in_alarm_when_m_of_its_n_periods_breach(values, to_alarm, missing,
                                                             state):
    found, reason = alarm_state(values, operator="GreaterThanThreshold", threshold=5,
                                to_alarm=to_alarm, missing=missing)
    assert found == state, reason


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 90) == 90
    assert percentile(values, 99.9) == 100
    assert percentile([0.5], 50) == 0.5
    assert percentile([], 90) is None


def test_a_meter_gives_a_period_only_once_it_is_over_and_its_delay_passed():
    meter = Meter(period=0.2)
    meter.count(200, 0.010, from_target=True)
    meter.count(500, 0.020, from_target=True)
    meter.count(502, None, from_target=False)
    assert meter.due(delay=60) == []
    # the period the counts are in ends within 0.2 s: with no delay it is due after that
    due = waits.until(lambda: meter.due(delay=0) or None, timeout=5, what="the period due",
                      resource="meter", fix="-", first=0.05)
    ((start, counts),) = due
    assert start == math.floor(start / 0.2) * 0.2
    assert (counts["requests"], counts["target_5xx"], counts["elb_5xx"]) == (3, 1, 1)
    assert meter.due(delay=0) == []


def test_a_period_is_published_as_alb_names_and_counts_it():
    group = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123"
    front = "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/4567"
    data = datapoints(60.0, {"requests": 3, "target_5xx": 0, "elb_5xx": 1,
                             "times": [0.0104, 0.0101, 0.2]}, group, front)
    named = {d["MetricName"]: d for d in data}
    assert set(named) == {"RequestCount", "HTTPCode_ELB_5XX_Count", "TargetResponseTime"}
    assert named["RequestCount"]["Dimensions"] == [
        {"Name": "LoadBalancer", "Value": "app/web/4567"},
        {"Name": "TargetGroup", "Value": "targetgroup/web/0123"}]
    # the balancer's own 5xx: per load balancer only, as on ALB
    assert named["HTTPCode_ELB_5XX_Count"]["Dimensions"] == [
        {"Name": "LoadBalancer", "Value": "app/web/4567"}]
    times = named["TargetResponseTime"]
    assert dict(zip(times["Values"], times["Counts"], strict=True)) == {0.01: 2, 0.2: 1}
    assert named["RequestCount"]["Timestamp"] == datetime(1970, 1, 1, 0, 1)


def test_the_lab_evaluates_an_alarm_on_what_was_published():
    from moto.cloudwatch.models import CloudWatchBackend

    backend = CloudWatchBackend("us-east-1", "123456789012")
    backend.put_metric_alarm(
        name="errors", namespace="Team", metric_name="Errors", metric_data_queries=None,
        comparison_operator="GreaterThanThreshold", evaluation_periods=2,
        datapoints_to_alarm=None, period=60, threshold=5, statistic="Sum",
        extended_statistic=None, description="", dimensions=[], alarm_actions=[],
        ok_actions=[], insufficient_data_actions=[], unit=None, actions_enabled=True,
        treat_missing_data=None, evaluate_low_sample_count_percentile=None,
        threshold_metric_id=None, rule=None, tags=[])
    alarm = backend.alarms["errors"]
    now = datetime.now(UTC).replace(tzinfo=None)
    monitoring._evaluate(backend, alarm, now)
    assert alarm.state_value == "INSUFFICIENT_DATA"  # nothing published yet
    minute = now.replace(second=0, microsecond=0)
    for back in (1, 2):
        backend.put_metric_data("Team", [{"MetricName": "Errors", "Value": 9,
                                          "Timestamp": minute - timedelta(minutes=back)}])
    monitoring._evaluate(backend, alarm, now)
    assert alarm.state_value == "ALARM"
    assert "2 out of the last 2" in alarm.state_reason
