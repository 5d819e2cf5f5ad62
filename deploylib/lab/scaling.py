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
- a group spanning several subnets launches each instance into the one (the zone) with
  the fewest of its instances, as AWS balances a group across its Availability Zones.
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
- deleting a group is not instant (the API reference's DeleteAutoScalingGroup; Terraform's
  provider retries and waits for both): while a launch is in progress (LAUNCH_ACTIVITY
  seconds here) DeleteAutoScalingGroup answers `ScalingActivityInProgress`; a deleted
  group stays listed with Status `Delete in progress` (DELETE_LINGER seconds here, while
  AWS terminates its instances) and refuses every change ("The AutoScaling group may
  not be modified while it is pending delete"); its name is taken until it is gone.
- a group given a launch template is checked as AWS checks it when it is created or
  updated (the Auto Scaling user guide, "Launch template permissions"; the IAM
  authorisation of the caller is deploylib.lab.iam's): its instance profile must exist
  in IAM and be known to Auto Scaling — one made less than PROFILE_PROPAGATION seconds
  ago is not yet (IAM is eventually consistent: "Invalid IAM Instance Profile name",
  terraform-provider-aws#5633) — and the first group of an account makes Auto Scaling's
  service-linked role.
- a launch uses the region's default EBS key as Auto Scaling's service-linked role: a
  customer-managed key whose key policy does not let that role use it (the user guide,
  "Required AWS KMS key policy for use with encrypted volumes") fails the launch with
  AWS's `Client.InternalError`.
"""

from __future__ import annotations

import datetime
import json
import threading
import time
import uuid
from typing import Any

from moto.autoscaling.exceptions import AutoscalingClientError, ValidationError
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
# A launch is an activity in progress this long (on AWS, the instance's own launch before
# its lifecycle hook takes it over: tens of seconds).
LAUNCH_ACTIVITY = 2.0
# A deleted group stays listed, `Delete in progress`, this long; (region, group) -> until
# when (time.monotonic()).
DELETE_LINGER = 10.0
PENDING_DELETE = "Delete in progress"
_deleting: dict[tuple[str, str], float] = {}
# The calls that change a group: each refused while it is pending delete.
_CHANGES = ("update_auto_scaling_group", "set_desired_capacity", "suspend_processes",
            "resume_processes", "attach_load_balancer_target_groups",
            "detach_load_balancer_target_groups", "put_lifecycle_hook",
            "delete_auto_scaling_group")


# An instance profile this young (seconds) is not yet known to Auto Scaling.
PROFILE_PROPAGATION = 8.0
SERVICE = cloud.AUTOSCALING_SERVICE
SERVICE_ROLE = "AWSServiceRoleForAutoScaling"
KEY_REFUSED = "Client.InternalError: Client error on launch"


def _iam() -> Any:
    from moto.iam.models import iam_backends

    return iam_backends[DEFAULT_ACCOUNT_ID]["aws"]


def service_role_arn() -> str:
    return f"arn:aws:iam::{DEFAULT_ACCOUNT_ID}:role/aws-service-role/{SERVICE}/{SERVICE_ROLE}"


def has_service_role() -> bool:
    return any(r.name == SERVICE_ROLE for r in _iam().roles.values())


def settle_iam() -> None:
    """What the account has when the lab hands it over is old enough to be known
    everywhere (its propagation is behind it)."""
    past = datetime.datetime.now(datetime.UTC).replace(tzinfo=None) - datetime.timedelta(hours=1)
    for made in [*_iam().instance_profiles.values(), *_iam().roles.values()]:
        made.create_date = past


def _profile_refusal(data: dict[str, Any]) -> str | None:
    """Why Auto Scaling refuses a launch template's instance profile, in its words; None
    when it takes it."""
    given = data.get("IamInstanceProfile") or {}
    name, arn = given.get("Name"), given.get("Arn")
    if not name and not arn:
        return None
    found = next((p for p in _iam().instance_profiles.values()
                  if (arn and p.arn == arn) or (name and p.name == name)), None)
    made = found.create_date if found is not None else None
    if made is not None and made.tzinfo is None:
        made = made.replace(tzinfo=datetime.UTC)
    young = made is not None and (datetime.datetime.now(datetime.UTC) - made
                                  ).total_seconds() < PROFILE_PROPAGATION
    if found is None or young:
        kind, value = ("arn", arn) if arn else ("name", name)
        return ("You must use a valid fully-formed launch template. Value "
                f"({value}) for parameter iamInstanceProfile.{kind} is invalid. Invalid "
                f"IAM Instance Profile {kind}")
    return None


def _key_refusal(backend: AutoScalingBackend) -> str | None:
    """A launch's failure for the region's default EBS key: customer-managed and its key
    policy not letting the service-linked role use it (encrypt the volume, and grant EC2
    that use)."""
    from moto.kms.models import kms_backends

    from deploylib.lab import iam

    chosen = cloud.customer_key(backend.ec2_backend, DEFAULT_ACCOUNT_ID, backend.region_name)
    if chosen is None:
        return None  # AWS's own key: every identity in the account may use it
    kms = kms_backends[DEFAULT_ACCOUNT_ID][backend.region_name]
    try:
        key = kms.describe_key(chosen)
        policy = json.loads(kms.get_key_policy(key.id))
    except Exception:  # noqa: BLE001 - a key that is not there: no launch can use it
        return KEY_REFUSED
    role = service_role_arn()
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    theirs = {"Statement": [s for s in statements if iam.names_principal(s, role)]}
    needed: list[tuple[str, iam.Keys]] = [
        ("kms:GenerateDataKeyWithoutPlaintext", {}), ("kms:Decrypt", {}),
              ("kms:CreateGrant", {"kms:GrantIsForAWSResource": "true"})]
    if all(iam.allowed(theirs, action, key.arn, keys) for action, keys in needed):
        return None
    return KEY_REFUSED


def _checking_the_template(method: Any) -> Any:
    """Create/UpdateAutoScalingGroup given a launch template: refused as AWS refuses an
    instance profile it does not know (yet); the account's first group makes the
    service-linked role (its caller authorised for that by deploylib.lab.iam)."""
    def checking(self: AutoScalingResponse) -> Any:
        given = self._get_param("LaunchTemplate") or {}
        if given:
            ec2 = self.autoscaling_backend.ec2_backend
            try:
                template = ec2.get_launch_template(given["LaunchTemplateId"]) \
                    if given.get("LaunchTemplateId") else \
                    ec2.get_launch_template_by_name(given.get("LaunchTemplateName"))
                data = template.get_version(given.get("Version") or "$Default").data
            except Exception:  # noqa: BLE001 - moto's own error follows from the call
                data = {}
            refusal = _profile_refusal(data)
            if refusal:
                raise ValidationError(refusal)
        if method.__name__ == "create_auto_scaling_group" and not has_service_role():
            _iam().create_service_linked_role(SERVICE, "", "")
        return method(self)

    checking.__name__ = method.__name__
    return checking


class ScalingActivityInProgress(AutoscalingClientError):
    code = "ScalingActivityInProgress"


class AlreadyExists(AutoscalingClientError):
    code = "AlreadyExists"


def _activity(region: str, group: str, *, failed: str | None = None,
              instance_id: str | None = None) -> None:
    """Record a launch, as DescribeScalingActivities lists it: in progress for
    LAUNCH_ACTIVITY seconds when it made an instance, failed at once when it made none."""
    now = datetime.datetime.now(datetime.UTC)
    entry: dict[str, Any] = {
        "ActivityId": str(uuid.uuid4()), "AutoScalingGroupName": group,
        "Cause": f"At {now:%Y-%m-%dT%H:%M:%SZ} an instance was started in response to a "
                 "difference between desired and actual capacity.",
        "StartTime": now, "EndTime": now, "Progress": 100, "Details": "{}"}
    if failed is None:
        entry.update(StatusCode="Successful",
                     Description=f"Launching a new EC2 instance: {instance_id}",
                     _ends=time.monotonic() + LAUNCH_ACTIVITY)
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
            if (backend.region_name, group.name) in _deleting:
                continue
            try:
                converge(backend, group)
            except Exception:  # noqa: BLE001 - one group's bad round must not stop the rest
                pass


def _in_subnet(group: FakeAutoScalingGroup, subnet_id: str | None, made: list[Any]) -> int:
    """How many of the group's instances (counted, or just made) are in a subnet."""
    mine = [s.instance for s in group.instance_states if s.lifecycle_state in _COUNTED]
    return sum(1 for i in [*mine, *made] if getattr(i, "subnet_id", None) == subnet_id)


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


def _shown(entry: dict[str, Any]) -> dict[str, Any]:
    """An activity as the API shows it now: a launch still going is InProgress."""
    shown = {k: v for k, v in entry.items() if not k.startswith("_")}
    if time.monotonic() < entry.get("_ends", 0.0):
        shown.update(StatusCode="InProgress", Progress=50)
        shown.pop("EndTime", None)
    return shown


def _in_progress(region: str, group: str) -> bool:
    with _lock:
        return any(_shown(e)["StatusCode"] == "InProgress"
                   for e in _activities.get((region, group), []))


def describe_scaling_activities(self: AutoScalingResponse) -> ActionResult:
    """A group's activities, newest first (MaxRecords of them), as Auto Scaling lists them."""
    name = self._get_param("AutoScalingGroupName")
    most = int(self._get_param("MaxRecords") or 100)
    with _lock:
        found = [_shown(e) for e in reversed(_activities.get((self.region, name), []))][:most]
    return ActionResult({"Activities": found})


def _refusing_when_pending_delete(method: Any) -> Any:
    """A call that changes a group, refused as AWS refuses it while the group is pending
    delete; a delete also while one of its launches is in progress."""
    def refusing(self: AutoScalingResponse) -> Any:
        name = self._get_param("AutoScalingGroupName")
        if (self.region, name) in _deleting:
            raise ValidationError("The AutoScaling group may not be modified while it is "
                                  "pending delete")
        if method.__name__ == "delete_auto_scaling_group" and _in_progress(self.region, name):
            raise ScalingActivityInProgress("You cannot delete an AutoScalingGroup while "
                                            "there are scaling activities in progress for "
                                            "that group.")
        return method(self)

    refusing.__name__ = method.__name__
    return refusing


def _refusing_a_name_taken(method: Any) -> Any:
    """CreateAutoScalingGroup with a name a group has (pending delete too): AWS refuses
    it; moto would replace the group."""
    def refusing(self: AutoScalingResponse) -> Any:
        name = self._get_param("AutoScalingGroupName")
        if name in self.autoscaling_backend.autoscaling_groups:
            raise AlreadyExists(f"AutoScalingGroup by this name already exists - A group "
                                f"with the name {name} already exists")
        return method(self)

    return refusing


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
        why = failure.get("message", "injected by the lab") if failure is not None else \
            _key_refusal(self.autoscaling_backend)
        if why is not None:  # no instance: only the activity says why
            _activity(region, self.name, failed=why)
            _retry_at[(region, self.name)] = time.monotonic() + LAUNCH_RETRY
            return
        propagated_tags[ASG_NAME_TAG] = self.name
        propagated_tags.update(self.instance_tags)
        subnets = [s for s in (self.vpc_zone_identifier or "").split(",") if s] or [None]
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
        ec2 = self.autoscaling_backend.ec2_backend
        with cloud.deferred_boots():
            made: list[Any] = []
            for _ in range(count_needed):
                # Spread across the group's subnets: each launch into the zone with the
                # fewest of its instances (AWS balances a group across its zones).
                subnet_id = min(subnets, key=lambda sub: _in_subnet(self, sub, made))
                zone = ec2.get_subnet(subnet_id).availability_zone if subnet_id else \
                    self.availability_zones[0]
                made += ec2.run_instances(
                    self.image_id, 1, self.user_data, self.security_groups,
                    instance_type=self.instance_type, tags={"instance": propagated_tags},
                    placement=zone, launch_config=self.launch_config,
                    launch_template=template, is_instance_type_default=False,
                    associate_public_ip=None, subnet_id=subnet_id,
                    iam_instance_profile=profile).instances
            hook = _hook(self.autoscaling_backend, self.name)
            for instance in made:
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
        # As ForceDelete: out of the target groups first, then terminated with the group,
        # which stays listed a while as pending delete.
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
            group.status = PENDING_DELETE
            where = (self.region_name, group_name)
            _deleting[where] = time.monotonic() + DELETE_LINGER

        def gone(backend: AutoScalingBackend = self, group: FakeAutoScalingGroup = group) -> None:
            with _lock:
                _deleting.pop(where, None)
                if backend.autoscaling_groups.get(group_name) is group:
                    backend.autoscaling_groups.pop(group_name)
                _activities.pop(where, None)

        _later(DELETE_LINGER, gone)

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
        # Every version not deleted, in one page: moto cuts the list at MaxResults (15 by
        # default) and gives no NextToken, so a template's newer versions were never
        # listed at all.
        kw["max_results"] = 1 << 30
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
    AutoScalingResponse.create_auto_scaling_group = _refusing_a_name_taken(
        _checking_the_template(AutoScalingResponse.create_auto_scaling_group))
    AutoScalingResponse.update_auto_scaling_group = _checking_the_template(
        AutoScalingResponse.update_auto_scaling_group)
    for name in _CHANGES:
        setattr(AutoScalingResponse, name,
                _refusing_when_pending_delete(getattr(AutoScalingResponse, name)))

    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval):
            try:
                converge_all()
            except Exception:  # noqa: BLE001 - a watcher that dies would hide every later loss
                pass

    threading.Thread(target=watch, name="lab-autoscaling", daemon=True).start()
    return stop
