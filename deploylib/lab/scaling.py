"""The lab's Auto Scaling: moto's autoscaling backend, made to act as AWS documents it.

moto launches a group's instances through EC2's run_instances (so they boot lab hosts:
deploylib.lab.cloud) and registers them in the group's target groups. What it lacks,
and this supplies (AWS's words in the Auto Scaling user guide's chapters on lifecycle
hooks, Elastic Load Balancing and health checks):
- a launch template *version*: moto boots a group pinned to version N with the default
  version's user data and tags; here the version's own.
- `CreateLaunchTemplateVersion` with UserData: moto keeps it unencoded, which breaks
  the group's launches; here it is kept as `CreateLaunchTemplate` keeps it.
- a launch lifecycle hook holds the instance in `Pending:Wait` until
  `CompleteLifecycleAction` (CONTINUE: it goes in service; ABANDON: it is terminated and
  replaced) or the hook's heartbeat timeout (its default result). Until it is in
  service the group does not register it in its target groups.
- target groups follow the group: an instance registered when it goes in service,
  deregistered when it leaves (scale-in, detach, terminate, standby); a scale-in
  deregisters first and terminates once the target group's deregistration delay is over.
  A group detached and attached again at once registers its instances again (moto's
  detach deregisters them but leaves the group's own count of them behind).
- an instance that is stopped or terminated from outside is unhealthy: the group
  replaces it (unless ReplaceUnhealthy or Launch is suspended).
- `DeleteLaunchTemplateVersions`, which moto lacks: a version deleted is gone from
  DescribeLaunchTemplateVersions and cannot be launched; the default one cannot be
  deleted (AWS: delete the template instead).
- scaling activities (moto lists none): each launch a group makes, and each it could not
  make. A launch fails — no instance, only a `Failed` activity and its StatusMessage, as
  AWS reports an IAM, KMS, capacity, quota or template error ("Troubleshoot Amazon EC2
  Auto Scaling: EC2 instance launch failures") — while the lab's faults.json has a rule
  for the action `LaunchInstance` (its `message` the reason); the group tries again.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from typing import Any

from moto.autoscaling.exceptions import ValidationError
from moto.autoscaling.models import (
    ASG_NAME_TAG,
    AutoScalingBackend,
    FakeAutoScalingGroup,
    InstanceState,
    autoscaling_backends,
)
from moto.autoscaling.responses import AutoScalingResponse
from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.models.launch_templates import LaunchTemplate, LaunchTemplateBackend
from moto.ec2.responses.launch_templates import LaunchTemplates
from moto.ec2.utils import parse_user_data

from deploylib.lab import cloud

LAUNCHING = "autoscaling:EC2_INSTANCE_LAUNCHING"
# Where the group counts an instance as its own capacity (launching, waiting or serving).
_COUNTED = ("Pending", "Pending:Wait", "Pending:Proceed", "InService")
_GONE = ("shutting-down", "terminated", "stopping", "stopped")

_lock = threading.RLock()
# (region, group) -> target group ARN -> instance ids the group registered there
_registered: dict[tuple[str, str], dict[str, set[str]]] = {}
# (region, group) -> its scaling activities, newest last (the last KEPT_ACTIVITIES)
_activities: dict[tuple[str, str], list[dict[str, Any]]] = {}
KEPT_ACTIVITIES = 50
LAUNCH_FAULT = "LaunchInstance"  # the faults.json action that fails a group's launches
# After a launch that failed, a group tries again this many seconds later (AWS backs off
# longer); (region, group) -> when (time.monotonic()).
LAUNCH_RETRY = 2.0
_retry_at: dict[tuple[str, str], float] = {}


def _activity(region: str, group: str, *, failed: str | None = None,
              instance_id: str | None = None) -> None:
    """Record a launch, as DescribeScalingActivities lists it."""
    now = datetime.datetime.now(datetime.UTC)
    entry: dict[str, Any] = {
        "ActivityId": str(uuid.uuid4()), "AutoScalingGroupName": group,
        "Cause": f"At {now:%Y-%m-%dT%H:%M:%SZ} an instance was started in response to a "
                 "difference between desired and actual capacity.",
        "StartTime": now, "EndTime": now, "Progress": 100, "Details": "{}"}
    if failed is None:
        entry.update(StatusCode="Successful",
                     Description=f"Launching a new EC2 instance: {instance_id}")
    else:
        entry.update(StatusCode="Failed", StatusMessage=failed,
                     Description=f"Launching a new EC2 instance.  Status Reason: {failed}. "
                                 "Launching EC2 instance failed.")
    with _lock:
        kept = _activities.setdefault((region, group), [])
        kept.append(entry)
        del kept[:-KEPT_ACTIVITIES]


def _backends() -> list[AutoScalingBackend]:
    return [b for _, b in autoscaling_backends[DEFAULT_ACCOUNT_ID].items()]


def _hook(backend: AutoScalingBackend, group: str) -> Any | None:
    return next((h for h in backend.lifecycle_hooks.values()
                 if h.auto_scaling_group_name == group
                 and h.lifecycle_transition == LAUNCHING), None)


def _suspended(group: FakeAutoScalingGroup, process: str) -> bool:
    return process in group._suspended_processes


def _deregistration_delay(backend: AutoScalingBackend, arn: str) -> float:
    group = backend.elbv2_backend.target_groups.get(arn)
    if group is None:
        return 0.0
    return float(group.attributes.get("deregistration_delay.timeout_seconds", 300))


def converge(backend: AutoScalingBackend, group: FakeAutoScalingGroup) -> None:
    """Make the target groups and the group's instances agree with what the group holds:
    lost instances replaced, in-service ones registered, the others deregistered."""
    with _lock:
        for state in list(group.instance_states):
            inst = state.instance
            if inst.state in _GONE and state.lifecycle_state in _COUNTED:
                # Unhealthy: EC2 says it is not running. The group lets it go.
                group.instance_states.remove(state)
            elif state.lifecycle_state == "Pending" and inst.state == "running":
                state.lifecycle_state = "InService"
        counted = len([s for s in group.instance_states if s.lifecycle_state in _COUNTED])
        desired = group.desired_capacity or 0
        backing_off = time.monotonic() < _retry_at.get((backend.region_name, group.name), 0.0)
        if counted < desired and not _suspended(group, "Launch") \
                and not _suspended(group, "ReplaceUnhealthy") and not backing_off:
            FakeAutoScalingGroup.set_desired_capacity(group, desired)
        elif counted > desired and not _suspended(group, "Terminate"):
            FakeAutoScalingGroup.set_desired_capacity(group, desired)  # held scale-in, resumed
        serving = {s.instance.id for s in group.instance_states
                   if s.lifecycle_state == "InService" and s.instance.state == "running"}
        mine = _registered.setdefault((backend.region_name, group.name), {})
        for arn in list(mine):
            if arn not in group.target_group_arns:
                mine.pop(arn)  # detached: DetachLoadBalancerTargetGroups deregistered them
        for arn in group.target_group_arns:
            if arn not in backend.elbv2_backend.target_groups:
                continue
            port = backend.elbv2_backend.target_groups[arn].port
            had = mine.setdefault(arn, set())
            new, leaving = serving - had, had - serving
            if new:
                backend.elbv2_backend.register_targets(
                    arn, [{"Id": i, "Port": port} for i in sorted(new)])
            # Only what is still registered (a terminated instance is out already).
            leaving &= set(backend.elbv2_backend.target_groups[arn].targets)
            if leaving:
                backend.elbv2_backend.deregister_targets(
                    arn, [{"Id": i, "Port": port} for i in sorted(leaving)])
            mine[arn] = set(serving)


def converge_all() -> None:
    for backend in _backends():
        for group in list(backend.autoscaling_groups.values()):
            try:
                converge(backend, group)
            except Exception:  # noqa: BLE001 - one group's bad round must not stop the rest
                pass


def _complete(backend: AutoScalingBackend, group_name: str, instance_id: str,
              result: str) -> None:
    group = backend.autoscaling_groups.get(group_name)
    state = next((s for s in (group.instance_states if group else [])
                  if s.instance.id == instance_id and s.lifecycle_state == "Pending:Wait"),
                 None)
    if state is None:
        raise ValidationError(f"No active Lifecycle Action found with instance ID {instance_id}")
    if result == "CONTINUE":
        state.lifecycle_state = "InService"
    else:  # ABANDON: terminated, and the group launches another
        group.instance_states.remove(state)
        backend.ec2_backend.terminate_instances([instance_id])
    converge(backend, group)


def _later(seconds: float, fn: Any) -> None:
    timer = threading.Timer(seconds, fn)
    timer.daemon = True
    timer.start()


def describe_scaling_activities(self: AutoScalingResponse) -> ActionResult:
    """A group's activities, newest first (MaxRecords of them), as Auto Scaling lists them."""
    name = self._get_param("AutoScalingGroupName")
    most = int(self._get_param("MaxRecords") or 100)
    with _lock:
        found = list(reversed(_activities.get((self.region, name), [])))[:most]
    return ActionResult({"Activities": found})


def install(*, interval: float = 0.5, faults: Any = None) -> threading.Event:
    """Wrap moto's autoscaling so it acts as AWS documents; start the group watcher
    (the health checks that find a lost instance). Returns the event that stops it.
    `faults` (deploylib.lab.faults.Faults): where a launch failure is asked for."""
    original_set_desired = FakeAutoScalingGroup.set_desired_capacity
    original_delete = AutoScalingBackend.delete_auto_scaling_group
    original_version = LaunchTemplates.create_launch_template_version
    original_enter_standby = AutoScalingBackend.enter_standby_instances

    def replace_instances(self: FakeAutoScalingGroup, count_needed: int,
                          propagated_tags: dict[str, str]) -> None:
        # moto's own, with the group's launch template version (not the default one) for
        # the instance's user data and tags, and the launch lifecycle hook applied.
        region = self.autoscaling_backend.region_name
        if time.monotonic() < _retry_at.get((region, self.name), 0.0):
            return  # backing off after a launch that failed
        failure = faults.match(LAUNCH_FAULT, region) if faults is not None else None
        if failure is not None:  # no instance: only the activity says why
            _activity(region, self.name, failed=failure.get("message", "injected by the lab"))
            _retry_at[(region, self.name)] = time.monotonic() + LAUNCH_RETRY
            return
        propagated_tags[ASG_NAME_TAG] = self.name
        propagated_tags.update(self.instance_tags)
        subnet_id = self.vpc_zone_identifier.split(",")[0] if self.vpc_zone_identifier else None
        template, profile = None, None
        if self.ec2_launch_template:
            version = self.ec2_launch_template.get_version(self.launch_template_version)
            template = {"LaunchTemplateId": self.ec2_launch_template.id,
                        "Version": str(version.number)}
            # moto applies a template's instance profile on RunInstances' path only
            profile = version.data.get("IamInstanceProfile")
        # Each instance's lifecycle state is attached before its host boots: its user data
        # completes the lifecycle action, and a boot quicker than this launch would find
        # none to complete (as on AWS, the state exists before the instance's OS starts).
        with cloud.deferred_boots():
            reservation = self.autoscaling_backend.ec2_backend.run_instances(
                self.image_id, count_needed, self.user_data, self.security_groups,
                instance_type=self.instance_type, tags={"instance": propagated_tags},
                placement=self.availability_zones[0], launch_config=self.launch_config,
                launch_template=template, is_instance_type_default=False,
                associate_public_ip=None, subnet_id=subnet_id, iam_instance_profile=profile)
            hook = _hook(self.autoscaling_backend, self.name)
            for instance in reservation.instances:
                _activity(region, self.name, instance_id=instance.id)
                instance.autoscaling_group = self
                protected = self.new_instances_protected_from_scale_in
                state = InstanceState(instance,
                                      lifecycle_state="Pending:Wait" if hook else "Pending",
                                      protected_from_scale_in=protected)
                self.instance_states.append(state)
                if hook:
                    def expire(state: InstanceState = state, hook: Any = hook,
                               group: FakeAutoScalingGroup = self) -> None:
                        if (state.lifecycle_state == "Pending:Wait"
                                and state in group.instance_states):
                            _complete(group.autoscaling_backend, group.name, state.instance.id,
                                      hook.default_result or "ABANDON")

                    _later(float(hook.heartbeat_timeout), expire)

    def active_instances(self: FakeAutoScalingGroup) -> list[InstanceState]:
        return [s for s in self.instance_states if s.lifecycle_state in _COUNTED]

    def set_desired_capacity(self: FakeAutoScalingGroup, new_capacity: int | None) -> None:
        with _lock:
            desired = self.min_size if new_capacity is None else new_capacity
            counted = active_instances(self)
            surplus = len(counted) - (desired or 0)
            if surplus > 0 and _suspended(self, "Terminate"):
                self.desired_capacity = desired  # no scale-in while Terminate is suspended
                return
            if surplus > 0:
                # Scale-in: the oldest instances go first (AWS's default policy, zones
                # aside: the oldest launch template first); protected ones stay.
                victims = [s for s in counted if not s.protected_from_scale_in][:surplus]
                for state in victims:
                    state.lifecycle_state = "Terminating"
                delay = max([_deregistration_delay(self.autoscaling_backend, arn)
                             for arn in self.target_group_arns] or [0.0])

                def finish(states: list[InstanceState] = victims,
                           group: FakeAutoScalingGroup = self) -> None:
                    with _lock:
                        ids = [s.instance.id for s in states if s in group.instance_states]
                        for s in states:
                            if s in group.instance_states:
                                group.instance_states.remove(s)
                        if ids:
                            group.autoscaling_backend.ec2_backend.terminate_instances(ids)

                if delay:
                    _later(delay, finish)
                # Deregistered now (converge below); terminated once drained.
                self.desired_capacity = desired
                if self.name in self.autoscaling_backend.autoscaling_groups:
                    converge(self.autoscaling_backend, self)
                if not delay:
                    finish()
                return
            original_set_desired(self, new_capacity)

    def update_attached_target_groups(self: AutoScalingBackend, group_name: str) -> None:
        converge(self, self.autoscaling_groups[group_name])

    def delete_group(self: AutoScalingBackend, group_name: str) -> None:
        # As ForceDelete: out of the target groups first, then terminated with the group.
        with _lock:
            group = self.autoscaling_groups.get(group_name)
            if group is None:
                return original_delete(self, group_name)  # moto's error
            for state in group.instance_states:
                state.lifecycle_state = "Terminating"
            converge(self, group)
            ids = [s.instance.id for s in group.instance_states]
            group.instance_states = []
            group.desired_capacity = 0
            if ids:
                self.ec2_backend.terminate_instances(ids)
            _registered.pop((self.region_name, group_name), None)
            self.autoscaling_groups.pop(group_name, None)

    def detach_target_groups(self: AutoScalingBackend, group_name: str,
                             target_group_arns: list[str]) -> None:
        with _lock:
            group = self.autoscaling_groups[group_name]
            group.target_group_arns = [a for a in group.target_group_arns
                                       if a not in target_group_arns]
            mine = {s.instance.id for s in group.instance_states}
            for arn in target_group_arns:
                # As AWS's Auto Scaling detaches: what of the group is registered leaves;
                # an instance a scale-in already deregistered (draining, not yet
                # terminated) is no error. moto deregisters every instance of the group
                # and fails on that one (InvalidTarget).
                target_group = self.elbv2_backend.target_groups.get(arn)
                registered = [{"Id": i} for i in (target_group.targets if target_group else ())
                              if i in mine]
                if registered or target_group is None:  # moto's error for an unknown group
                    self.elbv2_backend.deregister_targets(arn, registered)
            converge(self, group)  # forgets what it registered

    def enter_standby(self: AutoScalingBackend, *args: Any, **kw: Any) -> Any:
        out = original_enter_standby(self, *args, **kw)
        for group in self.autoscaling_groups.values():
            converge(self, group)
        return out

    def create_version(self: LaunchTemplates) -> ActionResult:
        # As CreateLaunchTemplate keeps it: decoded on launch, not a raw string.
        data = self._get_param("LaunchTemplateData", {})
        if "UserData" in data:
            original_get = self._get_param

            def get_param(name: str, default: Any = None) -> Any:
                value = original_get(name, default)
                if name == "LaunchTemplateData" and isinstance(value, dict):
                    value = dict(value, UserData=parse_user_data(value.get("UserData")))
                return value

            self._get_param = get_param
        return original_version(self)

    def complete_lifecycle_action(self: AutoScalingResponse) -> ActionResult:
        instance_id = self._get_param("InstanceId")
        result = self._get_param("LifecycleActionResult")
        if result not in ("CONTINUE", "ABANDON"):
            raise ValidationError("LifecycleActionResult must be CONTINUE or ABANDON")
        _complete(self.autoscaling_backend, self._get_param("AutoScalingGroupName"),
                  instance_id, result)
        return EmptyResult()

    original_get_version = LaunchTemplate.get_version
    original_describe_versions = LaunchTemplateBackend.describe_launch_template_versions

    def get_version(self: LaunchTemplate, num: Any) -> Any:
        version = original_get_version(self, num)
        if getattr(version, "deleted", False):
            from moto.ec2.exceptions import InvalidLaunchTemplateVersionNotFound

            raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num)
        return version

    def describe_versions(self: LaunchTemplateBackend, *args: Any, **kw: Any) -> Any:
        return [(t, v) for t, v in original_describe_versions(self, *args, **kw)
                if not getattr(v, "deleted", False)]

    def delete_versions(self: LaunchTemplates) -> ActionResult:
        template = self.ec2_backend.get_launch_template(self._get_param("LaunchTemplateId"))
        done, refused = [], []
        for number in self._get_param("Versions", []):
            where = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name,
                     "VersionNumber": int(number)}
            if int(number) == int(template.default_version_number):
                refused.append({**where, "ResponseError": {
                    "Code": "launchTemplateVersionCannotBeDeleted",
                    "Message": "Cannot delete the default version of a launch template"}})
                continue
            try:
                version = original_get_version(template, number)
            except Exception:  # noqa: BLE001 - moto's not-found, answered as AWS answers it
                version = None
            if version is None or getattr(version, "deleted", False):
                refused.append({**where, "ResponseError": {
                    "Code": "launchTemplateVersionDoesNotExist",
                    "Message": "The specified launch template version does not exist"}})
                continue
            version.deleted = True
            done.append(where)
        return ActionResult({"SuccessfullyDeletedLaunchTemplateVersions": done,
                             "UnsuccessfullyDeletedLaunchTemplateVersions": refused})

    LaunchTemplate.get_version = get_version
    LaunchTemplateBackend.describe_launch_template_versions = describe_versions
    LaunchTemplates.delete_launch_template_versions = delete_versions
    FakeAutoScalingGroup.replace_autoscaling_group_instances = replace_instances
    FakeAutoScalingGroup.active_instances = active_instances
    FakeAutoScalingGroup.set_desired_capacity = set_desired_capacity
    AutoScalingBackend.update_attached_target_groups = update_attached_target_groups
    AutoScalingBackend.delete_auto_scaling_group = delete_group
    AutoScalingBackend.enter_standby_instances = enter_standby
    AutoScalingBackend.detach_load_balancer_target_groups = detach_target_groups
    LaunchTemplates.create_launch_template_version = create_version
    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action
    AutoScalingResponse.describe_scaling_activities = describe_scaling_activities

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            try:
                converge_all()
            except Exception:  # noqa: BLE001 - a watcher that dies would hide every later loss
                pass

    threading.Thread(target=watch, name="lab-autoscaling", daemon=True).start()
    return stop
