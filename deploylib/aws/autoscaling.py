"""Auto Scaling: server groups (an environment's fleet in a region, one group per
launch template version, named `<app>-<env>-vNNN`), their capacity, their target
groups and their instances' lifecycle."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from deploylib import waits
from deploylib.aws import calling, tag_map
from deploylib.errors import CloudError

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_autoscaling import AutoScalingClient

# The launch lifecycle hook every server group has: an instance stays out of service
# until its user data has put the live release on it (deploylib/templates/boot.sh.j2).
BOOT_HOOK = "deploy-boot"
LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
# What a procedure suspends on the groups it works on: no scale-in, no replacement
# underneath it, no rebalancing; launches (scale-out) go on, and boot into the right
# release on their own.
HELD = ["Terminate", "AZRebalance", "ReplaceUnhealthy"]
# What a group kept out of service for a rollback has suspended: its scheduled actions and
# its scaling policies' alarms would otherwise scale it up while it serves nobody.
KEPT = ["ScheduledActions", "AlarmNotification"]
# Where the group counts an instance as its capacity.
COUNTED = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
# How often a wait for instances in service reads the console of those still waiting.
CONSOLE_EVERY = 3.0
# A group made this recently (seconds) is the wait's own: every launch it refused counts.
FRESH_GROUP = 600.0
# A group AWS is deleting: listed a while yet, its name taken, every change refused.
PENDING_DELETE = "Delete in progress"
# How long a delete waits out the group's scaling activities in progress (a launch):
# AWS refuses it meanwhile (ScalingActivityInProgress); Terraform's provider waits as long.
DELETE_WAIT = 300.0
# How long a group's create or update waits for IAM to propagate an instance profile made
# moments ago: Auto Scaling answers "Invalid IAM Instance Profile" meanwhile (for seconds;
# terraform-provider-aws#5633, #40088) and botocore does not retry it.
PROPAGATION = 120.0
_NOT_YET_KNOWN = "Invalid IAM Instance Profile"
_NAME = re.compile(r"-v(\d{3,})$")


@dataclass(frozen=True)
class ServerGroup:
    name: str
    region: str
    template_id: str
    template_version: str
    min_size: int
    max_size: int
    desired: int
    target_groups: tuple[str, ...]
    # instance id -> lifecycle state (Pending:Wait, InService, Terminating, ...)
    instances: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    suspended: tuple[str, ...] = ()
    created: float = 0.0  # epoch seconds
    deleting: bool = False  # pending delete: gone for every purpose but its name
    propagated: frozenset[str] = frozenset()  # tag keys its instances get at launch
    termination: tuple[str, ...] = ()  # termination policies, AWS's Default left out

    @classmethod
    def from_api(cls, region: str, g: Mapping[str, Any]) -> ServerGroup:
        lt = g.get("LaunchTemplate") or {}
        return cls(
            name=g["AutoScalingGroupName"], region=region,
            template_id=lt.get("LaunchTemplateId", ""),
            template_version=str(lt.get("Version", "")),
            min_size=int(g["MinSize"]), max_size=int(g["MaxSize"]),
            desired=int(g["DesiredCapacity"]),
            target_groups=tuple(g.get("TargetGroupARNs", [])),
            instances={i["InstanceId"]: i["LifecycleState"] for i in g.get("Instances", [])},
            tags=tag_map(g.get("Tags")),
            suspended=tuple(sorted(p["ProcessName"] for p in g.get("SuspendedProcesses", []))),
            created=g["CreatedTime"].timestamp() if hasattr(g.get("CreatedTime"), "timestamp")
            else 0.0,
            deleting=g.get("Status") == PENDING_DELETE,
            propagated=frozenset(t["Key"] for t in g.get("Tags", [])
                                 if t.get("PropagateAtLaunch")),
            termination=tuple(p for p in g.get("TerminationPolicies", []) if p != "Default"))

    @property
    def in_service(self) -> list[str]:
        return sorted(i for i, st in self.instances.items() if st == "InService")

    @property
    def counted(self) -> list[str]:
        return sorted(i for i, st in self.instances.items() if st in COUNTED)


@dataclass(frozen=True)
class Settings:
    """What a team set on its live group that the next group keeps (Spinnaker's
    clouddriver carries the same from one server group to the next): scaling policies,
    scheduled actions, lifecycle hooks of its own, tags of its own (not `deploy:*`),
    termination policies."""

    policies: tuple[dict[str, Any], ...] = ()
    scheduled: tuple[dict[str, Any], ...] = ()
    hooks: tuple[dict[str, Any], ...] = ()
    tags: tuple[dict[str, Any], ...] = ()  # {Key, Value, PropagateAtLaunch}
    termination: tuple[str, ...] = ()

    def said(self) -> str:
        parts = [f"{len(v)} {k}" for k, v in (
            ("scaling policies", self.policies), ("scheduled actions", self.scheduled),
            ("lifecycle hooks", self.hooks), ("tags", self.tags)) if v]
        if self.termination:
            parts.append("termination policies " + ",".join(self.termination))
        return ", ".join(parts)


# PutScalingPolicy's and PutScheduledUpdateGroupAction's parameters, as the Describe calls
# list them (the rest of what they list is AWS's own: ARNs, alarms, times).
_POLICY_KEYS = ("PolicyName", "PolicyType", "AdjustmentType", "MinAdjustmentStep",
                "MinAdjustmentMagnitude", "ScalingAdjustment", "Cooldown",
                "MetricAggregationType", "StepAdjustments", "EstimatedInstanceWarmup",
                "TargetTrackingConfiguration", "Enabled", "PredictiveScalingConfiguration")
_SCHEDULE_KEYS = ("ScheduledActionName", "StartTime", "EndTime", "Recurrence", "MinSize",
                  "MaxSize", "DesiredCapacity", "TimeZone")
_HOOK_KEYS = ("LifecycleHookName", "LifecycleTransition", "RoleARN", "NotificationTargetARN",
              "NotificationMetadata", "HeartbeatTimeout", "DefaultResult")


def group_name(prefix: str, number: int) -> str:
    return f"{prefix}-v{number:03d}"


def number_of(name: str) -> int | None:
    m = _NAME.search(name)
    return int(m.group(1)) if m else None


def next_name(prefix: str, existing: list[str]) -> str:
    """The next server group's name: one past the highest `<prefix>-vNNN` there is."""
    numbers = [n for name in existing if name.startswith(f"{prefix}-v")
               and (n := number_of(name)) is not None]
    return group_name(prefix, max(numbers, default=0) + 1)


def _where(name: str, region: str) -> str:
    return f"server group {name} in {region}"


def server_groups(asg: AutoScalingClient, region: str, prefix: str, *,
                  deleting: bool = False) -> list[ServerGroup]:
    """The environment's server groups in a region, oldest first; with `deleting`, those
    AWS is deleting too (their names are still taken)."""
    with calling(f"server groups {prefix}-v* in {region}",
                 "check autoscaling:DescribeAutoScalingGroups is allowed"):
        pages = asg.get_paginator("describe_auto_scaling_groups").paginate()
        found = [ServerGroup.from_api(region, g) for page in pages
                 for g in page["AutoScalingGroups"]
                 if g["AutoScalingGroupName"].startswith(f"{prefix}-v")
                 and number_of(g["AutoScalingGroupName"]) is not None]
    return sorted((g for g in found if deleting or not g.deleting),
                  key=lambda g: number_of(g.name) or 0)


def describe(asg: AutoScalingClient, region: str, name: str) -> ServerGroup | None:
    """The group, or None when there is none or AWS is deleting it."""
    with calling(_where(name, region), "check autoscaling:DescribeAutoScalingGroups is allowed"):
        found = asg.describe_auto_scaling_groups(AutoScalingGroupNames=[name])[
            "AutoScalingGroups"]
    group = ServerGroup.from_api(region, found[0]) if found else None
    return None if group is None or group.deleting else group


def create(asg: AutoScalingClient, *, region: str, name: str, template_id: str, version: int,
           subnet_ids: list[str], tag_list: list[dict[str, str]], min_size: int,
           max_size: int, desired: int, hook_timeout: int, grace: int,
           kept: Settings | None = None) -> ServerGroup:
    """Create a server group (no target group yet: it is attached when it is promoted)
    with its launch lifecycle hook in place before its first instance launches, and the
    settings `kept` from the live group. `grace`: the health check grace period, which
    starts once the hook lets the instance go in service (so not the boot's time: the
    first health checks')."""
    kept = kept or Settings()
    tags: list[Any] = [{"Key": t["Key"], "Value": t["Value"], "PropagateAtLaunch": False}
                       for t in tag_list] + list(kept.tags)
    tags = [{**t, "ResourceId": name, "ResourceType": "auto-scaling-group"} for t in tags]
    where = _where(name, region)
    fix = "check autoscaling:CreateAutoScalingGroup and iam:PassRole are allowed"
    existing = describe(asg, region, name)
    if existing is None:
        _once_propagated(where, fix, lambda: asg.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateId": template_id, "Version": str(version)},
            MinSize=0, MaxSize=max_size, DesiredCapacity=0,
            VPCZoneIdentifier=",".join(subnet_ids), HealthCheckType="ELB",
            HealthCheckGracePeriod=grace,
            Tags=tags))
    with calling(where, fix):
        asg.put_lifecycle_hook(AutoScalingGroupName=name, LifecycleHookName=BOOT_HOOK,
                               LifecycleTransition=LAUNCHING, HeartbeatTimeout=hook_timeout,
                               DefaultResult="ABANDON")
    carry(asg, region, name, kept)  # before its first launch: the team's hooks apply to it
    set_capacity(asg, region, name, min_size=min_size, max_size=max_size, desired=desired)
    return describe(asg, region, name)  # type: ignore[return-value]


def settings(asg: AutoScalingClient, group: ServerGroup) -> Settings:
    """The team's settings on a group (Settings), to carry to the next one."""
    name = group.name
    with calling(_where(name, group.region), "check autoscaling:DescribePolicies, "
                 "DescribeScheduledActions and DescribeLifecycleHooks are allowed "
                 "(`invoke policy`)"):
        # (as plain dicts: what is read is put back as it was read)
        policies = [dict(p) for page in asg.get_paginator("describe_policies").paginate(
            AutoScalingGroupName=name) for p in page.get("ScalingPolicies", [])]
        scheduled = [dict(a) for page in asg.get_paginator(
            "describe_scheduled_actions").paginate(AutoScalingGroupName=name)
            for a in page.get("ScheduledUpdateGroupActions", [])]
        hooks = [dict(h) for h in asg.describe_lifecycle_hooks(
            AutoScalingGroupName=name).get("LifecycleHooks", [])]
    return Settings(
        # (an empty value is AWS's way of saying none: put back, it would be refused)
        policies=tuple({k: p[k] for k in _POLICY_KEYS if p.get(k) not in (None, {}, [])}
                       for p in policies),
        scheduled=tuple(a for a in (_still_to_run(a) for a in scheduled) if a),
        hooks=tuple({k: h[k] for k in _HOOK_KEYS if k in h} for h in hooks
                    if h["LifecycleHookName"] != BOOT_HOOK),
        tags=tuple({"Key": k, "Value": v, "PropagateAtLaunch": k in group.propagated}
                   for k, v in group.tags.items() if not k.startswith(("deploy:", "aws:"))),
        termination=group.termination)


def _still_to_run(action: Mapping[str, Any]) -> dict[str, Any] | None:
    """A scheduled action as PutScheduledUpdateGroupAction takes it again, or None when it
    will not run again (a one-off that has run, a recurrence that has ended). A start
    time that has passed is left out: AWS refuses one in the past."""
    now = time.time()

    def past(key: str) -> bool:
        when = action.get(key) if key in ("StartTime", "EndTime") else None
        return when is not None and when.timestamp() <= now

    if past("EndTime") or (past("StartTime") and not action.get("Recurrence")):
        return None
    return {k: action[k] for k in _SCHEDULE_KEYS if k in action and not past(k)}


def carry(asg: AutoScalingClient, region: str, name: str, kept: Settings) -> None:
    """Put a team's scaling policies, scheduled actions and lifecycle hooks on a group
    (each by its name: again is the same), and its termination policies; tags go with the
    group's creation (create's `kept`)."""
    where = _where(name, region)
    with calling(where, "check autoscaling:PutScalingPolicy, PutScheduledUpdateGroupAction "
                 "and PutLifecycleHook are allowed, and iam:PassRole of a hook's role "
                 "(`invoke policy`)"):
        for policy in kept.policies:
            asg.put_scaling_policy(AutoScalingGroupName=name, **policy)
        for action in kept.scheduled:
            asg.put_scheduled_update_group_action(AutoScalingGroupName=name, **action)
        for hook in kept.hooks:
            asg.put_lifecycle_hook(AutoScalingGroupName=name, **hook)
        if kept.termination:
            asg.update_auto_scaling_group(AutoScalingGroupName=name,
                                          TerminationPolicies=list(kept.termination))


def set_capacity(asg: AutoScalingClient, region: str, name: str, *, min_size: int, max_size: int,
                 desired: int) -> None:
    with calling(_where(name, region), "check autoscaling:UpdateAutoScalingGroup is allowed"):
        asg.update_auto_scaling_group(AutoScalingGroupName=name, MinSize=min_size,
                                      MaxSize=max_size, DesiredCapacity=desired)


def use_template(asg: AutoScalingClient, region: str, name: str, template_id: str,
                 version: int | str) -> None:
    """Point a group at another launch template version: its next launches use it; the
    instances it has are left as they are."""
    _once_propagated(_where(name, region), "check autoscaling:UpdateAutoScalingGroup is allowed",
                     lambda: asg.update_auto_scaling_group(
                         AutoScalingGroupName=name, LaunchTemplate={
                             "LaunchTemplateId": template_id, "Version": str(version)}))


def _once_propagated(where: str, fix: str, call: Callable[[], Any]) -> None:
    """Make a call that gives a group a launch template, again while Auto Scaling does
    not know the template's instance profile yet (IAM propagating), up to PROPAGATION."""
    last: list[CloudError] = []

    def attempt() -> bool:
        try:
            with calling(where, fix):
                call()
        except CloudError as exc:
            if exc.code == "ValidationError" and _NOT_YET_KNOWN in exc.problem:
                last[:] = [exc]
                return False
            raise
        return True

    waits.until(attempt, timeout=PROPAGATION, first=1.0, longest=8.0,
                what="Auto Scaling to know the launch template's instance profile",
                resource=where, fix=lambda: f"AWS said: {last[0].problem if last else '-'}; "
                "check instance_profile names a profile that exists, with its role "
                "(`invoke preflight`)")


def attach(asg: AutoScalingClient, region: str, name: str, target_groups: list[str]) -> None:
    with calling(_where(name, region),
                 "check autoscaling:AttachLoadBalancerTargetGroups is allowed"):
        asg.attach_load_balancer_target_groups(AutoScalingGroupName=name,
                                               TargetGroupARNs=target_groups)


def detach(asg: AutoScalingClient, region: str, name: str, target_groups: list[str]) -> None:
    if not target_groups:
        return
    with calling(_where(name, region),
                 "check autoscaling:DetachLoadBalancerTargetGroups is allowed"):
        asg.detach_load_balancer_target_groups(AutoScalingGroupName=name,
                                               TargetGroupARNs=target_groups)


def hold(asg: AutoScalingClient, region: str, name: str) -> None:
    """No scale-in or replacement underneath a procedure (HELD)."""
    with calling(_where(name, region), "check autoscaling:SuspendProcesses is allowed"):
        asg.suspend_processes(AutoScalingGroupName=name, ScalingProcesses=HELD)


def release(asg: AutoScalingClient, region: str, name: str, processes: list[str] = HELD
            ) -> None:
    with calling(_where(name, region), "check autoscaling:ResumeProcesses is allowed"):
        asg.resume_processes(AutoScalingGroupName=name, ScalingProcesses=processes)


def keep_quiet(asg: AutoScalingClient, region: str, name: str) -> None:
    """A group kept out of service: no scheduled action or alarm scales it (KEPT)."""
    with calling(_where(name, region), "check autoscaling:SuspendProcesses is allowed"):
        asg.suspend_processes(AutoScalingGroupName=name, ScalingProcesses=KEPT)


def delete(asg: AutoScalingClient, region: str, name: str) -> None:
    """Delete a server group and terminate its instances (ForceDelete). A launch in
    progress is waited out (AWS refuses the delete meanwhile); a group already being
    deleted is as good as gone."""
    where = _where(name, region)
    fix = "check autoscaling:DeleteAutoScalingGroup is allowed"
    if describe(asg, region, name) is None:
        return

    def attempt() -> bool:
        try:
            with calling(where, fix):
                asg.delete_auto_scaling_group(AutoScalingGroupName=name, ForceDelete=True)
        except CloudError as exc:
            if exc.code == "ScalingActivityInProgress":
                return False  # a launch still going: try again
            if exc.code == "ValidationError" and describe(asg, region, name) is None:
                return True  # deleted meanwhile (by a second delete, or a person)
            raise
        return True

    waits.until(attempt, timeout=DELETE_WAIT, first=1.0, longest=5.0,
                what=f"{name}'s scaling activities in progress to end, to delete it",
                resource=where, fix="read its scaling activities (aws autoscaling "
                "describe-scaling-activities) and run `invoke gc` once they are over")


def boot_failure(name: str, console: str) -> str | None:
    """The line a boot of group `name` printed when it failed (deploylib/templates/boot.sh.j2),
    from an instance's console output; None when it printed none."""
    marker = f"[boot {name}] failed"
    return next((line.strip() for line in console.splitlines() if marker in line), None)


def failed_launch(asg: AutoScalingClient, region: str, name: str, since: float) -> str | None:
    """Why the group could not launch an instance since `since` (epoch seconds), in AWS's
    words (the StatusMessage of its newest Failed scaling activity); None when it could.
    A launch refused for IAM, KMS, capacity, a quota or the template makes no instance:
    this is the only place AWS says so."""
    with calling(_where(name, region),
                 "check autoscaling:DescribeScalingActivities is allowed (`invoke policy`)"):
        found = asg.describe_scaling_activities(AutoScalingGroupName=name, MaxRecords=20)
    for activity in found.get("Activities", []):
        started = activity.get("StartTime")
        if started is not None and started.timestamp() < since:
            break  # newest first: the rest are older still
        if activity.get("StatusCode") in ("Failed", "Cancelled"):
            return str(activity.get("StatusMessage") or activity.get("Description") or
                       activity["StatusCode"])
    return None


def wait_in_service(asg: AutoScalingClient, region: str, name: str, count: int, timeout: float,
                    console: Callable[[str], str] | None = None) -> list[str]:
    """Wait until `count` of the group's instances are in service (their boot done).
    Stops early once as many instances as were asked for have gone without ever going
    in service: their boot fails (the group would go on replacing them for ever); at once
    when the group could not launch an instance at all (its scaling activities say why);
    and at once when an instance still waiting on its lifecycle hook printed that its boot
    failed (`console(instance_id)`: its console output) — it will never go in service,
    and the hook would hold it for its whole timeout."""
    seen: list[ServerGroup] = []
    launched: set[str] = set()
    served: set[str] = set()
    looked = [0.0]
    began = time.time() - 5  # (a few seconds' room for the clocks)

    def failed_early(group: ServerGroup) -> None:
        """A launch refused, or a boot that printed its failure: the wait is over."""
        # Read every few seconds at most: EC2 throttles GetConsoleOutput, and Auto
        # Scaling its Describe calls.
        if time.monotonic() - looked[0] < CONSOLE_EVERY:
            return
        looked[0] = time.monotonic()
        # Launches refused since the wait began count, and for a group made moments ago
        # those since it was made: its first launch comes before the wait.
        fresh = time.time() - group.created < FRESH_GROUP
        reason = failed_launch(asg, region, name, min(began, group.created) if fresh else began)
        if reason:
            raise CloudError(f"the group could not launch an instance: {reason}",
                             resource=_where(name, region),
                             fix="fix what AWS names (the instance role and its profile, the "
                             "launch template, the EBS key's grants, capacity or a quota); "
                             "the run's group is removed on the way out")
        if console is None:
            return
        for iid in sorted(i for i, st in group.instances.items() if st == "Pending:Wait"):
            line = boot_failure(name, console(iid))
            if line:
                raise CloudError(f"instance {iid} failed its boot and is still held by the "
                                 f"lifecycle hook: {line}", resource=_where(name, region),
                                 fix="read the instance's console output (its boot script's "
                                 "log) and fix the release or the instance role; the run's "
                                 "group is removed on the way out")

    def check() -> bool:
        group = describe(asg, region, name)
        if group is None:
            raise CloudError("the server group is gone", resource=_where(name, region),
                             fix="look for who deleted it (CloudTrail); then deploy again")
        seen[:] = [group]
        launched.update(group.instances)
        served.update(group.in_service)
        failed = sorted(launched - set(group.instances) - served)
        if len(failed) >= max(1, count):
            raise CloudError(f"{len(failed)} instance(s) failed their boot and were "
                             f"abandoned ({' '.join(failed)})", resource=_where(name, region),
                             fix="read an instance's console output (its boot script's log: "
                             "the release it could not install, or the record or store it "
                             "could not read with its instance role)")
        if len(group.in_service) >= count:
            return True
        failed_early(group)
        return False

    waits.until(check, timeout=timeout, what=f"{count} instance(s) of {name} in service",
                resource=_where(name, region),
                fix="read the instances' console output (their boot script's log)")
    return seen[0].in_service
