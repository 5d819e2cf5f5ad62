"""Preflight: what a first deploy to an account meets, checked before anything starts.

Each check reads (it never launches, writes or takes the lock) one thing the procedures
rely on, in the order a deploy meets them: the credentials and how long they last, the
artifact bucket, the lock table, the base image, for server groups Auto Scaling's
service-linked role and the instance profile, a launch as a deploy makes it (DryRun),
and in every region the network the
hosts are launched into — subnet, security group and target group in one VPC, a load
balancer serving the subnet's zone, the key pair — and the key the volumes are
encrypted with (for server groups: usable by Auto Scaling's role, by its key policy).
A failure is one line with the fix; all of them are found in one go, so one pass fixes
the account.

`invoke preflight` prints every check; `start` (the first thing every procedure does)
runs them too, and stops with the first failure before a lock or a run exists.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deploylib import aws, lock, parallel
from deploylib.config import Environment
from deploylib.errors import DeployError, InputError, PermissionDenied, PreflightFailed

# botocore's credential providers that fetch new credentials when these expire.
REFRESHING = {"assume-role", "assume-role-with-web-identity", "sso", "iam-role",
              "container-role", "custom-process"}
# Canonical's account, the owner of the official Ubuntu images.
CANONICAL = "099720109477"


@dataclass(frozen=True)
class Check:
    name: str
    passed: str | None = None  # what was found, when it passed
    error: DeployError | None = None

    def line(self) -> str:
        return (f"ok    {self.name}: {self.passed}" if self.error is None
                else f"FAIL  {self.name}: {self.error.line()}")


def _check(name: str, fn: Callable[[], str]) -> Check:
    try:
        return Check(name, passed=fn())
    except DeployError as exc:
        return Check(name, error=exc)


def credentials(env: Environment, clients: aws.AwsClients, mode: str | None,
                now: dt.datetime | None = None) -> str:
    """Who the tool is, and whether the credentials outlast the procedure's longest wait."""
    with aws.calling("the AWS credentials", aws.CREDENTIALS_FIX):
        who = clients.client("sts").get_caller_identity()
    found = f"{who.get('Arn')} (account {who.get('Account')})"
    creds = clients.credentials()
    method = getattr(creds, "method", "") or ""
    expiry = getattr(creds, "_expiry_time", None)  # botocore keeps it for expiring ones
    if method in REFRESHING or expiry is None:
        return found + (f", refreshed as needed ({method})" if method in REFRESHING else "")
    key, longest = env.longest_wait(mode)
    now = now or dt.datetime.now(dt.UTC)
    left = (expiry - now).total_seconds()
    if left < longest:
        raise InputError(
            f"the AWS session ends in {max(0, left) / 60:.0f} min, before the longest wait "
            f"of {mode or 'immutable'} (timeouts.{key}: {longest / 60:.0f} min)",
            resource=f"credentials ({method or 'given'})",
            fix="let the tool refresh them: an AWS_PROFILE with role_arn and "
            "source_profile (or SSO), or a role session of at least "
            f"{longest / 3600:.1f} h; or lower timeouts.{key}")
    return found + f", valid {left / 3600:.1f} h more"


def bucket(env: Environment, clients: aws.AwsClients) -> str:
    aws.s3.check_bucket(clients.s3(), env.artifact_bucket)
    if aws.s3.versioned(clients.s3(), env.artifact_bucket):
        return f"s3://{env.artifact_bucket} reachable, versioned"
    # Not a failure: releases are still never overwritten by the tool, and a rollback
    # refuses one overwritten by anyone else; with versions it would fetch the original.
    return (f"s3://{env.artifact_bucket} reachable, NOT versioned (turn versioning on: a "
            "rollback then fetches the very version published; docs/operator-guide.md)")


def lock_table(env: Environment, clients: aws.AwsClients) -> str:
    held = lock.read(clients.dynamodb(), env.lock_table, env.name)
    return f"{env.lock_table} ({'held by ' + held['run_id'] if held else 'free'})"


def base_image(env: Environment, clients: aws.AwsClients) -> str:
    if not env.base_image.startswith("ami-") and not env.base_image_owner:
        raise InputError("base_image is a name filter with no owner: anyone can publish a "
                         "public image whose name matches it",
                         resource=f"environments.{env.name}.base_image_owner",
                         fix=f'set base_image_owner (Canonical\'s Ubuntu: "{CANONICAL}"; '
                         'your own images: "self")')
    region = env.primary_region
    image = aws.ec2.find_base_image(clients.ec2(region), region, env.base_image,
                                    env.base_image_owner)
    return f"{image} in {region}"


def network(env: Environment, clients: aws.AwsClients, region: str) -> str:
    """Subnet, security group and target group in one VPC; a load balancer that serves
    the subnet's zone; the key pair."""
    subnet_name, group_name, target_group = env.network(region)
    ec2, elb = clients.ec2(region), clients.elbv2(region)
    subnet = aws.ec2.describe_subnet(ec2, subnet_name, region)
    vpc, zone = subnet["VpcId"], subnet["AvailabilityZone"]
    group = aws.ec2.security_group(ec2, group_name, region, vpc)
    tg = aws.elb.describe_target_group(elb, target_group, region)
    if tg.get("VpcId") != vpc:
        raise InputError(f"target group {target_group} is in {tg.get('VpcId')}, the subnet "
                         f"{subnet['SubnetId']} in {vpc}: its instances cannot be registered",
                         resource=f"target group in {region}",
                         fix="use a subnet and a target group of the same VPC")
    zones = aws.elb.load_balancer_zones(elb, region, list(tg.get("LoadBalancerArns") or []))
    if not zones:
        raise InputError(f"no load balancer forwards to target group {target_group}",
                         resource=f"target group in {region}",
                         fix="add a listener rule that forwards to it, or name the target "
                         "group the load balancer uses")
    blind = sorted(name for name, served in zones.items() if zone not in served)
    if blind:
        raise InputError(f"load balancer {', '.join(blind)} does not serve {zone}, the zone "
                         f"of subnet {subnet['SubnetId']}: its hosts would never be healthy",
                         resource=f"subnet in {region}",
                         fix=f"enable {zone} on the load balancer, or use a subnet in a zone "
                         "it serves")
    spans = ""
    if env.server_groups:
        # Every subnet a group spans: the same VPC, a zone every load balancer serves.
        where = f"subnets in {region}"
        served = set.intersection(*zones.values())
        found = [aws.ec2.describe_subnet(ec2, name, region)
                 for name in env.group_subnets(region)]
        for other in found:
            if other["VpcId"] != vpc:
                raise InputError(f"subnet {other['SubnetId']} is in {other['VpcId']}, the "
                                 f"target group in {vpc}: a group cannot span both",
                                 resource=where, fix="list subnets of the target group's VPC")
            if other["AvailabilityZone"] not in served:
                raise InputError(f"subnet {other['SubnetId']} is in "
                                 f"{other['AvailabilityZone']}, a zone the load balancer "
                                 "does not serve: a group's hosts there would never be "
                                 "healthy", resource=where,
                                 fix=f"enable {other['AvailabilityZone']} on the load "
                                 "balancer, or leave that subnet out of subnets")
        spans = (f"; groups span {', '.join(s['SubnetId'] for s in found)} "
                 f"({', '.join(sorted({s['AvailabilityZone'] for s in found}))})")
    if env.key_name and not aws.ec2.key_pair_exists(ec2, region, env.key_name):
        raise InputError(f"no key pair {env.key_name} in {region}",
                         resource=f"key pair in {region}",
                         fix="import the public key into every region (aws ec2 "
                         "import-key-pair --region ...)")
    return (f"{subnet['SubnetId']} ({zone}), {group['GroupId']}, target group in {vpc}, "
            f"served by {', '.join(sorted(zones))}{spans}")


def volume_key(env: Environment, clients: aws.AwsClients, region: str) -> str:
    """The key EC2 encrypts the volumes with (the region's default): AWS's own, or one
    of the environment's kms_keys, enabled. On AWS a customer-managed key the tool may not
    use fails late and darkly: the instance goes from pending to terminated
    (Client.InternalError), the image copy fails."""
    default = aws.ec2.ebs_default_key(clients.ec2(region), region)
    if default.endswith(aws.kms.AWS_MANAGED):
        return "AWS-managed (alias/aws/ebs)"
    unlisted = InputError(f"the default EBS key in {region} is {default}, customer-managed "
                          "and not in kms_keys: launches would end terminated",
                          resource=f"environments.{env.name}.kms_keys",
                          fix="add its key ARN to kms_keys and apply `invoke policy`, or "
                          "reset the default (aws ec2 reset-ebs-default-kms-key-id)")
    try:
        key = aws.kms.describe_key(clients.kms(region), region, default)
    except PermissionDenied:
        if default in env.kms_keys:
            raise
        raise unlisted from None
    if key.get("Arn") not in env.kms_keys:
        raise unlisted
    if key.get("KeyState") != "Enabled":
        raise InputError(f"the default EBS key in {region} ({key['Arn']}) is "
                         f"{key.get('KeyState')}: nothing can be encrypted with it",
                         resource=f"KMS key in {region}",
                         fix="enable it (aws kms enable-key) or set another default")
    if not env.server_groups:
        return f"{key['Arn']} (customer-managed, enabled)"
    # A group's instances are launched by Auto Scaling's service-linked role, which IAM
    # policies cannot give a customer-managed key: only the key's own policy can. Without
    # it they go pending -> terminated, and only the group's activities say why.
    role = aws.iam.autoscaling_role_arn(clients.account())
    missing = aws.kms.missing_for(aws.kms.key_policy(clients.kms(region), region, key["Arn"]),
                                  role)
    if missing:
        raise InputError(f"the default EBS key in {region} ({key['Arn']}) does not let "
                         f"{aws.iam.AUTOSCALING_ROLE} use it: a group's instances would "
                         "go from pending to terminated", resource=f"KMS key in {region}",
                         fix="add to its key policy: " + "; and ".join(missing) +
                         " (docs/operator-guide.md)")
    return f"{key['Arn']} (customer-managed, enabled, usable by {aws.iam.AUTOSCALING_ROLE})"


def alarms(env: Environment, clients: aws.AwsClients, region: str) -> str:
    """The team's alarms a verification window watches exist in the region: a window
    watching an alarm that is not there would pass whatever happened."""
    names = env.alarms(region)
    if not names:
        return "no alarms to watch"
    missing = aws.cloudwatch.missing(clients.cloudwatch(region), region, names)
    if missing:
        raise InputError(f"no CloudWatch alarm {', '.join(missing)} in {region}: a window "
                         "would never hear from it",
                         resource=f"environments.{env.name}.verify.alarms",
                         fix="create the alarm in that region, or name it as CloudWatch "
                         "does (regions.<region>.alarms for one region's own)")
    return f"{len(names)} alarm(s) to watch: {', '.join(names)}"


def managed_hosts(env: Environment, clients: aws.AwsClients, region: str) -> str:
    """With transport = "ssm": every live host of the region is managed by Systems
    Manager, its agent online (DescribeInstanceInformation) — a host Run Command cannot
    reach would stop a rollout at select-hosts."""
    from deploylib import live

    hosts = live.hosts(clients, env, region)
    if not hosts:
        return "no live hosts yet"
    lost = aws.runcommand.unreachable(clients.ssm(region), region, hosts)
    if lost:
        raise InputError(f"{len(lost)} of {len(hosts)} live host(s) in {region} cannot be "
                         "reached by Run Command: " + ", ".join(
                             f"{i} {why}" for i, why in sorted(lost.items())),
                         resource=f"environments.{env.name}.transport",
                         fix="give the instances a role with the SSM agent's grants (`invoke "
                         "policy --instance`) and check the agent runs and can reach Systems "
                         "Manager (a VPC endpoint, or a route out)")
    return f"{len(hosts)} live host(s), every SSM agent online"


def launch(env: Environment, clients: aws.AwsClients) -> str:
    """EC2 would let the tool launch as a deploy does — the base image, the subnet, the
    security group, the environment's tags and (server groups) passing the instance
    role — asked with RunInstances' DryRun in the primary region: a grant missing is met
    here, not when the first instance or group is made."""
    region = env.primary_region
    ec2 = clients.ec2(region)
    image = aws.ec2.find_base_image(ec2, region, env.base_image, env.base_image_owner)
    subnet_name, group_name, _ = env.network(region)
    subnet = aws.ec2.describe_subnet(ec2, subnet_name, region)
    group = aws.ec2.security_group(ec2, group_name, region, subnet["VpcId"])
    profile = env.instance_profile if env.server_groups or env.transport == "ssm" else None
    aws.ec2.dry_run_launch(
        ec2, region=region, image_id=image, instance_type=env.instance_type,
        subnet_id=subnet["SubnetId"], security_group_ids=[group["GroupId"]],
        tag_list=aws.tags("preflight", env.name, "preflight", "preflight", "candidate"),
        key_name=env.key_name, instance_profile=profile)
    return (f"{env.instance_type} from {image} in {region} would launch (DryRun)"
            + (f", passing {profile.rsplit('/', 1)[-1]}" if profile else ""))


def autoscaling_role(env: Environment, clients: aws.AwsClients) -> str:
    """Auto Scaling's service-linked role is there: the tool's policy does not let it
    make one (a role for the whole account is made once, by whoever administers it)."""
    role = aws.iam.autoscaling_role(clients.iam())
    if role is None:
        raise InputError(f"the account has no {aws.iam.AUTOSCALING_ROLE}: the first "
                         "CreateAutoScalingGroup would need iam:CreateServiceLinkedRole, "
                         "which the tool's policy does not grant",
                         resource=f"IAM role {aws.iam.AUTOSCALING_ROLE}",
                         fix=f"have an administrator run once: {aws.iam.CREATE_AUTOSCALING_ROLE}")
    return str(role.get("Arn"))


def instance_profile(env: Environment, clients: aws.AwsClients) -> str:
    """The profile the groups' instances launch with exists, with a role: Auto Scaling
    refuses a launch template naming one it does not know."""
    name = env.instance_profile.rsplit("/", 1)[-1]
    where = f"environments.{env.name}.instance_profile"
    profile = aws.iam.instance_profile(clients.iam(), name)
    if profile is None:
        raise InputError(f"no instance profile {name} in the account: every group's launch "
                         "would be refused", resource=where,
                         fix="create it with its role and `invoke policy --instance` "
                         "attached (docs/operator-guide.md, fleets as Auto Scaling groups), "
                         "or name one that exists")
    roles = [r.get("RoleName") for r in profile.get("Roles", [])]
    if not roles:
        raise InputError(f"instance profile {name} has no role: its instances could not "
                         "read the record or the releases", resource=where,
                         fix=f"aws iam add-role-to-instance-profile --instance-profile-name "
                         f"{name} --role-name ROLE")
    return f"{profile.get('Arn')} (role {roles[0]})"


def run(env: Environment, clients: aws.AwsClients, *, mode: str | None = None) -> list[Check]:
    """Every check, in the order a deploy meets them; the regions side by side."""
    checks = [_check("credentials", lambda: credentials(env, clients, mode))]
    if checks[0].error is not None:
        return checks  # nothing else can be asked without them
    checks += [_check("artifact bucket", lambda: bucket(env, clients)),
               _check("lock table", lambda: lock_table(env, clients)),
               _check("base image", lambda: base_image(env, clients))]
    if env.server_groups:
        checks += [_check("Auto Scaling's role", lambda: autoscaling_role(env, clients))]
    if env.server_groups or env.transport == "ssm":
        checks += [_check("instance profile", lambda: instance_profile(env, clients))]

    def regional(r: str) -> dict[str, Callable[[], str]]:
        out = {f"network in {r}": lambda: network(env, clients, r),
               f"volume key in {r}": lambda: volume_key(env, clients, r)}
        if env.alarms(r):
            out[f"alarms in {r}"] = lambda: alarms(env, clients, r)
        if env.transport == "ssm":
            out[f"Run Command in {r}"] = lambda: managed_hosts(env, clients, r)
        return out

    found = parallel.each(env.all_regions, lambda r: [
        _check(name, fn) for name, fn in regional(r).items()], key=lambda r: r)
    for r in env.all_regions:
        checks += _as_checks(list(regional(r)), found[r])
    if all(c.error is None for c in checks):  # last: what it launches from must be there
        checks.append(_check("launch", lambda: launch(env, clients)))
    return checks


def _as_checks(names: list[str], outcome: list[Check] | Exception) -> list[Check]:
    if isinstance(outcome, Exception):  # not one of ours: still one line, not a crash
        return [Check(name, error=DeployError(f"{type(outcome).__name__}: {outcome}"))
                for name in names]
    return outcome


def require(env: Environment, clients: aws.AwsClients, *, mode: str | None = None) -> None:
    """Stop before anything starts when a check fails (exit 2), naming the first."""
    failed = [c for c in run(env, clients, mode=mode) if c.error is not None]
    first = failed[0].error if failed else None
    if first is not None and failed[0].name == "credentials" and \
            not isinstance(first, InputError):
        raise first  # no usable credentials or no route: said as every command says
    if failed:
        raise PreflightFailed(failed)


def summary(checks: list[Check]) -> dict[str, Any]:
    return {"passed": all(c.error is None for c in checks),
            "checks": [{"name": c.name, "passed": c.error is None,
                        "detail": c.passed if c.error is None else c.error.line()}
                       for c in checks]}
