"""CloudWatch against moto's server over real HTTP: a target group's metrics as ALB
publishes them (a dimension set per load balancer, summed), a percentile (the lab's, as
CloudWatch computes it), and the team's alarms."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from deploylib import aws
from deploylib.errors import CloudError


def _balanced_group(aws_clients, network, balancers: int) -> str:
    elb = aws_clients.elbv2("us-east-1")
    arn = elb.create_target_group(Name=f"cw-{network['n']}", Protocol="HTTP", Port=8080,
                                  VpcId=network["vpc"])["TargetGroups"][0]["TargetGroupArn"]
    for k in range(balancers):
        front = elb.create_load_balancer(Name=f"cw-{network['n']}-{k}",
                                         Subnets=[network["subnet"]], Scheme="internal")
        elb.create_listener(LoadBalancerArn=front["LoadBalancers"][0]["LoadBalancerArn"],
                            Protocol="HTTP", Port=80,
                            DefaultActions=[{"Type": "forward", "TargetGroupArn": arn}])
    return arn


def test_a_target_groups_traffic_is_summed_over_its_load_balancers(aws_clients, network):
    arn = _balanced_group(aws_clients, network, balancers=2)
    src = aws.cloudwatch.source(aws_clients.elbv2("us-east-1"), "us-east-1", arn)
    assert len(src.dimensions) == 2
    assert {dict(d)["TargetGroup"] for d in src.dimensions} == {arn.split(":")[-1]}
    assert all(dict(d)["LoadBalancer"].startswith("app/cw-") for d in src.dimensions)
    cloudwatch = aws_clients.cloudwatch("us-east-1")
    start = int(time.time()) // 60 * 60 - 120
    when = datetime.fromtimestamp(start + 5, UTC)
    for n, dims in enumerate(src.dimensions):
        pair = [{"Name": k, "Value": v} for k, v in dims]
        cloudwatch.put_metric_data(Namespace=aws.cloudwatch.NAMESPACE, MetricData=[
            {"MetricName": "RequestCount", "Value": 100 * (n + 1), "Dimensions": pair,
             "Timestamp": when},
            {"MetricName": "HTTPCode_Target_5XX_Count", "Value": 7, "Dimensions": pair,
             "Timestamp": when},
            {"MetricName": "TargetResponseTime", "Values": [0.01, 0.02, 0.5],
             "Counts": [80, 10, 10], "Dimensions": pair, "Timestamp": when}])
    seen = aws.cloudwatch.traffic(cloudwatch, src, start, start + 60, "p90")
    assert (seen.requests, seen.errors) == (300, 14)
    assert seen.latency == pytest.approx(0.02)  # the 90th of 100 values, nearest rank
    assert aws.cloudwatch.traffic(cloudwatch, src, start + 60, start + 120,
                                  "p90").requests == 0


def test_a_target_group_no_balancer_forwards_to_has_no_traffic(aws_clients, network):
    arn = _balanced_group(aws_clients, network, balancers=0)
    src = aws.cloudwatch.source(aws_clients.elbv2("us-east-1"), "us-east-1", arn)
    assert aws.cloudwatch.traffic(aws_clients.cloudwatch("us-east-1"), src, 0, 60,
                                  "p90").requests == 0


def test_alarms_in_alarm_are_named_with_their_reason_and_missing_ones_found(aws_clients):
    cloudwatch = aws_clients.cloudwatch("us-east-1")
    for name in ("team-5xx", "team-latency"):
        cloudwatch.put_metric_alarm(AlarmName=name, Namespace="Team", MetricName=name,
                                    Statistic="Sum", Period=60, EvaluationPeriods=1,
                                    Threshold=1, ComparisonOperator="GreaterThanThreshold")
    cloudwatch.set_alarm_state(AlarmName="team-5xx", StateValue="ALARM",
                               StateReason="too many errors")
    names = ["team-5xx", "team-latency", "team-gone"]
    assert aws.cloudwatch.firing(cloudwatch, "us-east-1", names) == {
        "team-5xx": "too many errors"}
    assert aws.cloudwatch.missing(cloudwatch, "us-east-1", names) == ["team-gone"]
    assert aws.cloudwatch.firing(cloudwatch, "us-east-1", []) == {}


def test_an_unknown_target_group_is_named(aws_clients, network):
    with pytest.raises(CloudError, match="target group"):
        aws.cloudwatch.source(aws_clients.elbv2("us-east-1"), "us-east-1",
                              "arn:aws:elasticloadbalancing:us-east-1:123456789012:"
                              "targetgroup/none/0123456789abcdef")
