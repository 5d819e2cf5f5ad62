"""The lab's cloud: moto's EC2 and ELBv2 backends, made to act on real lab hosts.

moto answers the AWS API; these hooks (installed in the lab daemon's process, where
moto's server runs) make its answers true: RunInstances boots a lab host, StopInstances
and TerminateInstances stop or remove it, CreateImage snapshots its root, CopyImage
copies the snapshot, GetConsoleOutput shows what the host printed at boot, and
DescribeTargetHealth reports what the lab's balancers see. `fill_gaps` adds what moto's
API lacks and AWS has: tags at creation for snapshots and copies, eventual consistency,
the account's default EBS key told. moto is pinned (pyproject.toml) because these hooks
wrap its internal methods.
"""

from __future__ import annotations

import base64
import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError
from moto.ec2.models import ec2_backends
from moto.ec2.models.amis import AmiBackend
from moto.ec2.models.instances import InstanceBackend
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.general import General
from moto.ec2.responses.settings import Settings
from moto.ec2.utils import Base64EncodedString
from moto.elbv2.models import ELBv2Backend, FakeHealthStatus, FakeTargetGroup, elbv2_backends

from deploylib.lab import consistency, monitoring, parameters
from deploylib.lab.balancer import Balancer, Balancers
from deploylib.lab.hosts import AddressTaken, HostFarm

_REASONS = {
    "initial": ("Elb.RegistrationInProgress", "Target registration is in progress"),
    "unhealthy": ("Target.FailedHealthChecks", "Health checks failed"),
    "draining": ("Target.DeregistrationInProgress", "Target deregistration is in progress"),
}


def deregistration_delay(spec: dict[str, Any]) -> int:
    """The target groups' deregistration delay: the profile's (AWS's default 300 s, scaled)
    or the lab's own 5 s. The group's attribute and its balancer's timing are the same."""
    return max(1, round((spec.get("profile") or {}).get("deregistration", 5)))


def registrations(balancer: Balancer) -> dict[str, tuple[str, int]]:
    """The running instances registered in a balancer's target group, with addresses."""
    group = elbv2_backends[DEFAULT_ACCOUNT_ID][balancer.region].target_groups.get(
        balancer.group_arn)
    if group is None:
        return {}
    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][balancer.region]
    out = {}
    for iid, target in list(group.targets.items()):
        inst = ec2.get_instance_by_id(iid)
        if inst is not None and inst.state == "running" and inst.private_ip:
            out[iid] = (inst.private_ip, int(target["Port"]))
    return out


# The request being answered, for what moto's backend methods are not handed.
_request = threading.local()


def _tag_created(backend: Any, ami: Any, specs: list[dict[str, Any]], *, image: bool) -> None:
    """Apply an image's TagSpecifications where moto does not: to its snapshot, and (for
    copies) to the image."""
    # Into moto's tag store directly: these are part of the creation, not a CreateTags
    # call (which, for an id this fresh, may not find it yet).
    for spec in specs:
        tags = {t["Key"]: t["Value"] for t in spec.get("Tags", [])}
        if spec["ResourceType"] == "snapshot" and getattr(ami, "ebs_snapshot", None):
            backend.tags[ami.ebs_snapshot.id].update(tags)
        elif spec["ResourceType"] == "image" and image:
            backend.tags[ami.id].update(tags)


_filled = False


def _modules_listed_once() -> None:
    """moto's server lists its package's directories on every request to find the
    service a host name belongs to; they do not change while it runs: list them once."""
    from moto import backends

    listed = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: listed


def fill_gaps(settle: float = consistency.DEFAULT_WINDOW) -> None:
    """What moto's EC2 API lacks and AWS does, hosts aside: tags at creation for images'
    snapshots and for copies, eventual consistency (deploylib.lab.consistency), the
    default EBS key, Parameter Store's size limits (deploylib.lab.parameters), CloudWatch's
    percentile statistics (deploylib.lab.monitoring).
    Once per process; the lab daemon calls it, and so do the tests' plain moto server."""
    global _filled
    if _filled:
        return
    _filled = True
    consistency.install(settle)
    parameters.install()
    monitoring.install_statistics()
    _modules_listed_once()
    create_image = AmiBackend.create_image
    copy_image = AmiBackend.copy_image
    copy_image_response = AmisResponse.copy_image

    def create_image_tagged(self: Any, instance_id: str, name: str, description: str,
                            tag_specifications: list[dict[str, Any]]) -> Any:
        # moto tags the image only (a snapshot specification raises in it)
        ami = create_image(self, instance_id, name, description,
                           [t for t in tag_specifications if t["ResourceType"] != "snapshot"])
        _tag_created(self, ami, tag_specifications, image=False)
        return ami

    def copy_image_tagged(self: Any, *args: Any, **kw: Any) -> Any:
        ami = copy_image(self, *args, **kw)
        _tag_created(self, ami, getattr(_request, "tag_specifications", []), image=True)
        return ami

    def copy_image_response_tagged(self: Any) -> Any:
        # moto's CopyImage drops TagSpecifications; the backend's copy above applies them.
        _request.tag_specifications = self._get_param("TagSpecifications", [])
        try:
            return copy_image_response(self)
        finally:
            _request.tag_specifications = []

    AmiBackend.create_image = create_image_tagged
    AmiBackend.copy_image = copy_image_tagged
    AmisResponse.copy_image = copy_image_response_tagged
    _ebs_default_key()


def customer_key(ec2_backend: Any, account: str, region: str) -> str | None:
    """The region's default EBS key when it is customer-managed; None when it is AWS's own
    (`alias/aws/ebs`, chosen or by default)."""
    from moto.kms.models import kms_backends

    chosen = ec2_backend.default_kms_key_id
    kms = kms_backends[account][region]
    if not chosen or (kms.alias_exists("alias/aws/ebs")
                      and kms.describe_key("alias/aws/ebs").arn == chosen):
        return None
    return str(chosen)


def _ebs_default_key() -> None:
    """The account's default EBS key per region: moto keeps it (ModifyEbsDefaultKmsKeyId)
    but cannot tell it (Get) or forget it (Reset). AWS's own key is told by its alias,
    as AWS tells it."""
    def key_of(self: Any) -> str:
        chosen = customer_key(self.ec2_backend, self.current_account, self.region)
        return chosen or f"arn:aws:kms:{self.region}:{self.current_account}:alias/aws/ebs"

    def get_key(self: Any) -> ActionResult:
        return ActionResult({"KmsKeyId": key_of(self)})

    def reset_key(self: Any) -> ActionResult:
        self.ec2_backend.default_kms_key_id = None
        return ActionResult({"KmsKeyId": key_of(self)})

    Settings.get_ebs_default_kms_key_id = get_key
    Settings.reset_ebs_default_kms_key_id = reset_key


def _later(seconds: float, fn: Any) -> None:
    timer = threading.Timer(seconds, fn)
    timer.daemon = True
    timer.start()


def _user_data(inst: Any) -> str | None:
    """An instance's user data as cloud-init runs it: decoded, and decompressed when it is
    gzip's ("compressed content", which cloud-init detects by its magic number)."""
    data = getattr(inst, "user_data", None)
    if isinstance(data, list):  # moto keeps RunInstances' as a list of one
        data = data[0] if data else None
    if data is None:
        return None
    raw = data.decode() if isinstance(data, bytes) else str(data)
    try:
        content = base64.b64decode(str(Base64EncodedString(raw)))
    except ValueError:
        return raw
    if content[:2] == b"\x1f\x8b":
        content = gzip.decompress(content)
    return content.decode(errors="replace")


# Per thread: the boots a launch in progress holds back (deferred_boots).
_deferred = threading.local()


def _after_launch(boot: Any) -> None:
    """Boot now, or once the caller's launch is complete (inside `deferred_boots`)."""
    if getattr(_deferred, "boots", None) is not None:
        _deferred.boots.append(boot)
    else:
        boot()


@contextmanager
def deferred_boots() -> Iterator[None]:
    """Instances launched inside boot only when it ends: what launches them (a server
    group) first attaches what their boot may need — their lifecycle state, which their
    user data completes — as AWS has it before the instance's OS starts."""
    _deferred.boots = []
    try:
        yield
        boots = _deferred.boots
    finally:
        _deferred.boots = None
    for boot in boots:
        boot()


def install(farm: HostFarm, balancers: Balancers, profile: dict[str, float] | None = None,
            boot_env: Any = None, sshd: str = "all") -> None:
    """Wrap moto's backend methods so the API's effects happen on lab hosts.

    A latency profile makes the cloud take AWS-like time, at the API: instances stay
    `pending` (and their sshd down) for `launch` seconds, `stopping` for `stop` seconds,
    images stay `pending` for `image` seconds and copies for `copy` seconds. The tool's
    own waits then meet the delays as they would on AWS, so its overhead over them can be
    measured. `boot_env(region, instance_id)`: what an instance's user data is told about
    the lab (its metadata service, the API's endpoint). `sshd`: which hosts run one —
    "all", or "builders" (an environment reached by Run Command: its other hosts have no
    SSH at all)."""
    profile = profile or {}

    def boot_host(inst: Any, region: str, image_id: str) -> None:
        role = ec2_backends[DEFAULT_ACCOUNT_ID][region].tags.get(inst.id, {}).get("deploy:role")
        farm.boot(inst.id, inst.private_ip, image_id, user_data=_user_data(inst),
                  user_data_env=boot_env(region, inst.id) if boot_env else None,
                  region=region, sshd=sshd == "all" or role == "builder")
    fill_gaps(profile.get("settle", consistency.DEFAULT_WINDOW))
    run_instances = InstanceBackend.run_instances
    start_instances = InstanceBackend.start_instances
    stop_instances = InstanceBackend.stop_instances
    terminate_instances = InstanceBackend.terminate_instances
    create_image = AmiBackend.create_image
    copy_image = AmiBackend.copy_image
    deregister_image = AmiBackend.deregister_image
    health_for = FakeTargetGroup.health_for
    describe_target_health = ELBv2Backend.describe_target_health

    def lab_run_instances(self: Any, image_id: str, count: int, *args: Any, **kw: Any) -> Any:
        reservation = run_instances(self, image_id, count, *args, **kw)
        delay = profile.get("launch", 0)
        region = self.region_name

        def lost(inst: Any, exc: AddressTaken) -> None:
            # A host that cannot have its address is not left half-made: gone, and why.
            print(f"{inst.id}: {exc}", flush=True)
            terminate_instances(self, [inst.id])
            farm.destroy(inst.id)

        def boot(inst: Any) -> None:
            if delay and inst._state.name != "pending":
                return  # stopped or terminated while it was pending
            inst._state.name, inst._state.code = "running", 16
            try:
                boot_host(inst, region, inst.image_id)
            except AddressTaken as exc:
                lost(inst, exc)

        held = getattr(_deferred, "boots", None) is not None
        if delay or held:
            # Booted later (after AWS's launch time, or once the launching group has
            # attached what the boot needs): a host that cannot have its address is lost.
            for inst in reservation.instances:
                if delay:
                    inst._state.name, inst._state.code = "pending", 0
                    _after_launch(lambda inst=inst: _later(delay, lambda: boot(inst)))
                else:
                    _after_launch(lambda inst=inst: boot(inst))
            return reservation
        try:
            for inst in reservation.instances:
                boot_host(inst, region, inst.image_id)
        except AddressTaken as exc:
            # The caller's launch fails whole, saying where and why.
            terminate_instances(self, [i.id for i in reservation.instances])
            for other in reservation.instances:
                farm.destroy(other.id)
            raise EC2ClientError("InsufficientFreeAddressesInSubnet", str(exc)) from exc
        return reservation

    def lab_start_instances(self: Any, instance_ids: list[str]) -> Any:
        result = start_instances(self, instance_ids)
        for inst, previous in result:
            if previous.name != "running":
                farm.boot(inst.id, inst.private_ip, inst.image_id, region=self.region_name)
        return result

    def lab_stop_instances(self: Any, instance_ids: list[str]) -> Any:
        result = stop_instances(self, instance_ids)
        delay = profile.get("stop", 0)
        for inst, _ in result:
            farm.halt(inst.id)  # the host is down at once; AWS shows it stopping a while
            if delay:
                inst._state.name, inst._state.code = "stopping", 64

                def stopped(inst: Any = inst) -> None:
                    if inst._state.name == "stopping":
                        inst._state.name, inst._state.code = "stopped", 80

                _later(delay, stopped)
        return result

    def lab_terminate_instances(self: Any, instance_ids: list[str]) -> Any:
        result = terminate_instances(self, instance_ids)
        for inst, _ in result:
            farm.destroy(inst.id)
        return result

    def _pending(ami: Any, seconds: float) -> None:
        if seconds:
            ami.state = "pending"
            _later(seconds, lambda: setattr(ami, "state", "available"))

    def lab_create_image(self: Any, instance_id: str, *args: Any, **kw: Any) -> Any:
        ami = create_image(self, instance_id, *args, **kw)
        farm.snapshot(instance_id, ami.id)
        _pending(ami, profile.get("image", 0))
        return ami

    def lab_copy_image(self: Any, source_image_id: str, *args: Any, **kw: Any) -> Any:
        ami = copy_image(self, source_image_id, *args, **kw)
        farm.copy_image(source_image_id, ami.id)
        _pending(ami, profile.get("copy", 0))
        return ami

    def lab_deregister_image(self: Any, ami_id: str) -> None:
        deregister_image(self, ami_id)
        farm.drop_image(ami_id)

    def lab_health_for(self: Any, target: dict[str, Any], ec2_backend: Any) -> Any:
        status = health_for(self, target, ec2_backend)
        seen = balancers.state(self.arn, target["Id"])
        if target["Id"] in self.targets:
            if status.status == "healthy":
                status.status = seen if seen not in (None, "draining") else "initial"
        elif seen is not None:
            # Deregistered but still known to the balancer: in flight, or not yet noticed.
            status.status = "draining"
        if status.status in _REASONS:
            status.reason, status.description = _REASONS[status.status]
        return status

    def lab_describe_target_health(self: Any, target_group_arn: str,
                                   targets: list[dict[str, Any]]) -> list[FakeHealthStatus]:
        if not targets:
            group = self.target_groups.get(target_group_arn)
            balancer = balancers.by_arn.get(target_group_arn)
            if group is not None and balancer is not None:
                # Like ELB, list draining targets too, not only registered ones.
                targets = list(group.targets.values()) + [
                    {"Id": iid, "Port": t.port} for iid, t in list(balancer.targets.items())
                    if iid not in group.targets]
        return describe_target_health(self, target_group_arn, targets)

    register_targets = ELBv2Backend.register_targets
    deregister_targets = ELBv2Backend.deregister_targets

    def lab_register_targets(self: Any, target_group_arn: str, instances: list[Any]) -> None:
        register_targets(self, target_group_arn, instances)
        balancers.follow(target_group_arn)

    def lab_deregister_targets(self: Any, target_group_arn: str, instances: list[Any]) -> None:
        deregister_targets(self, target_group_arn, instances)
        balancers.follow(target_group_arn)

    console_output = General.get_console_output

    def lab_console_output(self: Any) -> Any:
        text = farm.console(self._get_param("InstanceId"))
        if text is None:
            return console_output(self)  # not a lab host: moto's own text
        result = console_output(self)  # moto's checks (the instance exists) and shape
        result.result["Output"] = Base64EncodedString.from_raw_string(text)
        return result

    General.get_console_output = lab_console_output
    ELBv2Backend.register_targets = lab_register_targets
    ELBv2Backend.deregister_targets = lab_deregister_targets
    InstanceBackend.run_instances = lab_run_instances
    InstanceBackend.start_instances = lab_start_instances
    InstanceBackend.stop_instances = lab_stop_instances
    InstanceBackend.terminate_instances = lab_terminate_instances
    AmiBackend.create_image = lab_create_image
    AmiBackend.copy_image = lab_copy_image
    AmiBackend.deregister_image = lab_deregister_image
    FakeTargetGroup.health_for = lab_health_for
    ELBv2Backend.describe_target_health = lab_describe_target_health


# Auto Scaling's service-linked role: made once per account (by the first group, with
# iam:CreateServiceLinkedRole, or by hand); the lab's account has it, as an account that
# has had a group does.
AUTOSCALING_SERVICE = "autoscaling.amazonaws.com"


def seed_iam(clients: Any, profile: str) -> None:
    """The account's IAM as a server-group deploy finds it: the instance role and its
    profile (named alike, as the IAM console makes them), and Auto Scaling's
    service-linked role. Made before the tool's first call; their creation is backdated
    (deploylib.lab.scaling.settle_iam): IAM's propagation delay is for what is new."""
    iam = clients.client("iam")
    iam.create_service_linked_role(AWSServiceName=AUTOSCALING_SERVICE)
    if profile:
        iam.create_role(RoleName=profile, AssumeRolePolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{
                "Effect": "Allow", "Action": "sts:AssumeRole",
                "Principal": {"Service": "ec2.amazonaws.com"}}]}))
        iam.create_instance_profile(InstanceProfileName=profile)
        iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=profile)


def seed(clients: Any, spec: dict[str, Any]) -> dict[str, str]:
    """Create the lab account's infrastructure, as Terraform would for a real one.

    Each region gets a VPC on its own loopback range (127.N.0.0/16, N counting up from
    the spec's `network`), so instance addresses are real, reachable loopback addresses;
    plus a subnet, a security group, a target group, and the base image. Returns the
    target group ARN per region.
    """
    groups = {}
    base_name = spec["base_image"].replace("*", "20261101")
    for n, region in enumerate(spec["regions"], start=spec.get("network", 1)):
        ec2 = clients.ec2(region)
        vpc = ec2.create_vpc(CidrBlock=f"127.{n}.0.0/16")["Vpc"]["VpcId"]
        subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"127.{n}.0.0/24", TagSpecifications=[
            {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": spec["subnet"]}]}]
        )["Subnet"]["SubnetId"]
        ec2.create_security_group(GroupName=spec["security_group"], VpcId=vpc,
                                  Description="lab application hosts")
        ec2.register_image(Name=base_name, Description="lab base image (an empty root)",
                           Architecture="x86_64", RootDeviceName="/dev/sda1",
                           VirtualizationType="hvm")
        elb = clients.elbv2(region)
        arn = elb.create_target_group(
            Name=spec["target_group"], Protocol="HTTP", Port=spec["app_port"], VpcId=vpc,
            TargetType="instance", HealthCheckPath=spec["health_path"],
            HealthCheckIntervalSeconds=5, HealthyThresholdCount=2, UnhealthyThresholdCount=2,
        )["TargetGroups"][0]["TargetGroupArn"]
        # Sticky sessions, as most web fleets run: a client stays on its target until that
        # target drains, so during a deploy it sees the old release, then the new one.
        elb.modify_target_group_attributes(TargetGroupArn=arn, Attributes=[
            {"Key": "deregistration_delay.timeout_seconds",
             "Value": str(deregistration_delay(spec))},
            {"Key": "stickiness.enabled", "Value": "true"},
            {"Key": "stickiness.type", "Value": "lb_cookie"}])
        # The load balancer in front of it, serving the subnet's zone (the lab's own
        # balancer does the routing; this is what AWS would show, and preflight checks).
        balancer = elb.create_load_balancer(Name=spec["target_group"], Subnets=[subnet],
                                            Scheme="internal")["LoadBalancers"][0]
        elb.create_listener(LoadBalancerArn=balancer["LoadBalancerArn"], Protocol="HTTP",
                            Port=80, DefaultActions=[{"Type": "forward", "TargetGroupArn": arn}])
        groups[region] = arn
    primary = spec["regions"][0]
    extra = {} if primary == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": primary}}
    clients.s3().create_bucket(Bucket=spec["bucket"], **extra)
    # Versioned, as the operator guide asks: a release is fetched as the version it was
    # published as.
    clients.s3().put_bucket_versioning(Bucket=spec["bucket"],
                                       VersioningConfiguration={"Status": "Enabled"})
    seed_iam(clients, spec.get("instance_profile") or "")
    clients.dynamodb().create_table(
        TableName=spec["lock_table"], BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "env", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "env", "KeyType": "HASH"}])
    return groups
