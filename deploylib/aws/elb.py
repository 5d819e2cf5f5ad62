"""ELBv2 target groups: which targets are registered and how the balancer sees them;
putting hosts in (register, then wait until healthy) and taking them out (deregister,
then wait until drained)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from deploylib import waits
from deploylib.aws import calling

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client as ELBv2Client

# States in which a target is still in the group (draining: on its way out).
_LISTED = ("draining", "healthy", "initial", "unhealthy", "unused", "unavailable")


def _targets(region: str, instance_ids: list[str]) -> str:
    return f"targets {', '.join(instance_ids)} in {region}"


def resolve_target_group(elbv2: ELBv2Client, name_or_arn: str, region: str) -> str:
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    with calling(f"target group {name_or_arn} in {region}",
                 "check target_group in deploy.toml names a group in this region"):
        groups = elbv2.describe_target_groups(Names=[name_or_arn])["TargetGroups"]
    return groups[0]["TargetGroupArn"]


def describe_target_group(elbv2: ELBv2Client, name_or_arn: str, region: str) -> dict[str, Any]:
    """The target group (VpcId, LoadBalancerArns), by name or ARN."""
    with calling(f"target group {name_or_arn} in {region}",
                 "check target_group in deploy.toml names a group in this region"):
        found = elbv2.describe_target_groups(TargetGroupArns=[name_or_arn]) \
            if name_or_arn.startswith("arn:") else elbv2.describe_target_groups(
                Names=[name_or_arn])
        return dict(found["TargetGroups"][0])


def first_healthy_within(elbv2: ELBv2Client, region: str, name_or_arn: str) -> int:
    """Seconds within which a target just registered that serves is healthy: one passing
    check ("After your target is registered, it must pass one health check to be
    considered healthy", ALB guide), due within an interval and answered within the
    check's timeout — with a second interval's room. A server group's health check grace
    period: no sooner is an instance in service judged by its target group."""
    found = describe_target_group(elbv2, name_or_arn, region)
    interval = int(found.get("HealthCheckIntervalSeconds") or 30)
    timeout = int(found.get("HealthCheckTimeoutSeconds") or 5)
    return 2 * interval + timeout


def load_balancer_zones(elbv2: ELBv2Client, region: str, arns: list[str]) -> dict[str, set[str]]:
    """The Availability Zones each load balancer serves, by its name."""
    if not arns:
        return {}
    with calling(f"load balancers in {region}", "check elasticloadbalancing read access"):
        found = elbv2.describe_load_balancers(LoadBalancerArns=arns)["LoadBalancers"]
    return {lb["LoadBalancerName"]: {z["ZoneName"] for z in lb.get("AvailabilityZones", [])}
            for lb in found}


def target_states(elbv2: ELBv2Client, region: str, group_arn: str) -> dict[str, str]:
    """Registered targets of a group and their health state (initial, healthy, draining…)."""
    with calling(f"target group {group_arn} in {region}", "check the target group exists"):
        out = elbv2.describe_target_health(TargetGroupArn=group_arn)
    return {d["Target"]["Id"]: d["TargetHealth"]["State"]
            for d in out.get("TargetHealthDescriptions", [])}


def healthy(elbv2: ELBv2Client, region: str, group_arn: str) -> list[str]:
    """The targets the balancer routes to: registered and healthy."""
    return sorted(i for i, s in target_states(elbv2, region, group_arn).items()
                  if s == "healthy")


def register(elbv2: ELBv2Client, region: str, group_arn: str, instance_ids: list[str],
             port: int) -> None:
    if instance_ids:
        with calling(_targets(region, instance_ids),
                     "check the instances are in the target group's VPC"):
            elbv2.register_targets(TargetGroupArn=group_arn,
                                   Targets=[{"Id": i, "Port": port} for i in instance_ids])


def deregister(elbv2: ELBv2Client, region: str, group_arn: str, instance_ids: list[str],
               port: int) -> None:
    if instance_ids:
        with calling(_targets(region, instance_ids), "check the target group exists"):
            elbv2.deregister_targets(TargetGroupArn=group_arn,
                                     Targets=[{"Id": i, "Port": port} for i in instance_ids])


def wait_healthy(elbv2: ELBv2Client, region: str, group_arn: str, instance_ids: list[str],
                 timeout: float) -> None:
    def check() -> bool:
        states = target_states(elbv2, region, group_arn)
        return all(states.get(i) == "healthy" for i in instance_ids)

    waits.until(check, timeout=timeout, what="targets to be healthy in the target group",
                resource=f"{', '.join(instance_ids)} in {region}",
                fix="check the service on those hosts answers the health path, and the "
                "security group lets the load balancer reach the app port")


def wait_drained(elbv2: ELBv2Client, region: str, group_arn: str, instance_ids: list[str],
                 timeout: float) -> None:
    """Wait until deregistered targets have finished draining (no longer listed)."""

    def check() -> bool:
        states = target_states(elbv2, region, group_arn)
        return not any(states.get(i) in _LISTED for i in instance_ids)

    waits.until(check, timeout=timeout, what="targets to finish draining",
                resource=f"{', '.join(instance_ids)} in {region}",
                fix="long-lived connections hold draining open; lower the target group's "
                "deregistration_delay or raise timeouts.drain")


def deregistration_delay(elbv2: ELBv2Client, region: str, group_arn: str) -> float:
    """The target group's deregistration delay: how long a deregistered target is shown
    draining, and the longest the balancer lets its requests run (ALB's default 300 s)."""
    with calling(f"target group {group_arn} in {region}",
                 "grant elasticloadbalancing:DescribeTargetGroupAttributes"):
        attrs = elbv2.describe_target_group_attributes(TargetGroupArn=group_arn)["Attributes"]
    value = {a["Key"]: a["Value"] for a in attrs}.get("deregistration_delay.timeout_seconds")
    return float(value) if value not in (None, "") else 300.0


def leave(elbv2: ELBv2Client, region: str, group_arn: str, instance_ids: list[str], port: int
          ) -> None:
    """Deregister hosts; those already draining are on their way out (deregistering one
    again is an error) and those not registered are left as they are."""
    if instance_ids:
        states = target_states(elbv2, region, group_arn)
        deregister(elbv2, region, group_arn,
                   [i for i in instance_ids if states.get(i) not in (None, "draining")], port)


def put_in(elbv2: ELBv2Client, region: str, group_arn: str, instance_ids: list[str], port: int, *,
           timeout: float) -> None:
    """Register hosts and wait until the balancer finds them healthy (routes to them)."""
    if instance_ids:
        register(elbv2, region, group_arn, instance_ids, port)
        wait_healthy(elbv2, region, group_arn, instance_ids, timeout)


def take_out(elbv2: ELBv2Client, region: str, group_arn: str, instance_ids: list[str], port: int, *,
             timeout: float) -> None:
    """Deregister hosts and wait until their in-flight requests are done. Hosts already
    draining are left to finish (deregistering one again is an error)."""
    if instance_ids:
        leave(elbv2, region, group_arn, instance_ids, port)
        wait_drained(elbv2, region, group_arn, instance_ids, timeout)
