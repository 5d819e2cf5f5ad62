"""CloudWatch: what an Application Load Balancer says users saw, and the team's alarms.

ALB publishes per target group (with its load balancer: the pair is the dimension set)
RequestCount, HTTPCode_Target_5XX_Count and TargetResponseTime, every 60 s, up to a
minute late. It offers no per-target metric, so a window compares the target group with
itself before the run. The balancer's own 5xx (HTTPCode_ELB_5XX_Count) are per load
balancer, not per target group, and are not counted: a load balancer may serve several.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from deploylib.aws import calling
from deploylib.verdict import Traffic

NAMESPACE = "AWS/ApplicationELB"


def dimension_value(arn: str) -> str:
    """An ELB ARN's resource part, as ALB's dimensions name it (targetgroup/NAME/ID,
    app/NAME/ID)."""
    return arn.split(":", 5)[-1].split("loadbalancer/", 1)[-1]


@dataclass(frozen=True)
class Source:
    """One target group's metrics: a dimension set per load balancer forwarding to it."""

    region: str
    target_group: str  # its ARN
    dimensions: tuple[tuple[tuple[str, str], ...], ...]


def source(elbv2: Any, region: str, group_arn: str) -> Source:
    with calling(f"target group {group_arn}",
                 "grant elasticloadbalancing:DescribeTargetGroups (`invoke policy`)"):
        group = elbv2.describe_target_groups(TargetGroupArns=[group_arn])["TargetGroups"][0]
    return Source(region, group_arn, tuple(
        (("LoadBalancer", dimension_value(lb)), ("TargetGroup", dimension_value(group_arn)))
        for lb in group.get("LoadBalancerArns") or []))


def traffic(cloudwatch: Any, src: Source, start: float, end: float, percentile: str
            ) -> Traffic:
    """Requests, target 5xx and the latency percentile over [start, end) (epoch seconds,
    a whole number of the metrics' periods), as one datapoint each."""
    if not src.dimensions:
        return Traffic(0, 0)
    span = max(1, round(end - start))
    queries = []
    for n, dims in enumerate(src.dimensions):
        metric = [{"Name": k, "Value": v} for k, v in dims]
        for tag, name, stat in (("r", "RequestCount", "Sum"),
                                ("e", "HTTPCode_Target_5XX_Count", "Sum"),
                                ("l", "TargetResponseTime", percentile)):
            queries.append({"Id": f"{tag}{n}", "ReturnData": True, "MetricStat": {
                "Metric": {"Namespace": NAMESPACE, "MetricName": name, "Dimensions": metric},
                "Period": span, "Stat": stat}})
    with calling(f"metrics of {src.target_group}",
                 "grant cloudwatch:GetMetricData (`invoke policy`)"):
        results = cloudwatch.get_metric_data(
            MetricDataQueries=queries, StartTime=datetime.fromtimestamp(start, UTC),
            EndTime=datetime.fromtimestamp(end, UTC))["MetricDataResults"]
    found = {r["Id"]: [v for v in r.get("Values") or [] if v is not None] for r in results}
    total = Traffic(0, 0)
    for n in range(len(src.dimensions)):
        latency = found.get(f"l{n}") or []
        total = total + Traffic(sum(found.get(f"r{n}") or []), sum(found.get(f"e{n}") or []),
                                max(latency) if latency else None)
    return total


def _alarms(cloudwatch: Any, region: str, names: list[str]) -> list[dict[str, Any]]:
    with calling(f"alarms in {region}", "grant cloudwatch:DescribeAlarms (`invoke policy`)"):
        pages = cloudwatch.get_paginator("describe_alarms").paginate(
            AlarmNames=names, AlarmTypes=["MetricAlarm", "CompositeAlarm"])
        return [a for page in pages for kind in ("MetricAlarms", "CompositeAlarms")
                for a in page.get(kind, [])]


def firing(cloudwatch: Any, region: str, names: list[str]) -> dict[str, str]:
    """The alarms among `names` in ALARM now: name -> CloudWatch's reason."""
    return {a["AlarmName"]: a.get("StateReason", "") for a in
            (_alarms(cloudwatch, region, names) if names else [])
            if a.get("StateValue") == "ALARM"}


def missing(cloudwatch: Any, region: str, names: list[str]) -> list[str]:
    """The alarms among `names` that do not exist in the region (preflight)."""
    there = {a["AlarmName"] for a in (_alarms(cloudwatch, region, names) if names else [])}
    return [n for n in names if n not in there]
