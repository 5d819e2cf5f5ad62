"""Preflight against the lab broken in each way a first deploy meets: one line each with
the fix, exit 2, nothing launched, no run, the lock free; and a deploy that meets one
stops the same way before it starts."""

from __future__ import annotations

import datetime as dt
import itertools
import uuid

import pytest

from deploylib import aws, config, preflight, render
from deploylib.errors import InputError
from tests.conftest import Cli
from tests.lab import checks
from tests.lab.checks import instances, lock_holder

# What preflight checks per region (a key pair, a volume key) is checked in a second one.
pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(regions=2),
              pytest.mark.xdist_group("two-regions")]  # one lab (tests/scheduling.py)
_n = itertools.count(1)


def _cli(lab, tmp_path, drop=(), extra="", **overrides):
    """The operator's command line with a config of their own — and the lab holding the
    tool to the policy `invoke policy` prints for it, as the operator would have applied
    (the lab's own policy comes back after the test)."""
    cli = Cli(config=lab.write_config(tmp_path, extra, drop=drop, **overrides),
                  lab_dir=lab.cli.lab_dir)
    checks.hold_to_policy(lab, render.iam_policy(config.load(cli.config).environment("lab")))
    return cli


def _vpc_of_lab(lab, region="us-east-1"):
    ec2 = lab.clients().ec2(region)
    return aws.ec2.describe_subnet(ec2, lab.env.subnet, region)["VpcId"]


def _other_vpc(lab, region="us-east-1"):
    n = next(_n)
    return lab.clients().ec2(region).create_vpc(CidrBlock=f"10.{n}.0.0/16")["Vpc"]["VpcId"]


def _sg_elsewhere(lab):
    name = f"preflight-sg-{next(_n)}"
    lab.clients().ec2("us-east-1").create_security_group(
        GroupName=name, Description="another VPC's", VpcId=_other_vpc(lab))
    return {"security_group": name}, ["no security group", "in the subnet's VPC", "Fix:"]


def _tg_elsewhere(lab):
    name = f"preflight-tg-{next(_n)}"
    lab.clients().elbv2("us-east-1").create_target_group(
        Name=name, Protocol="HTTP", Port=8080, VpcId=_other_vpc(lab), TargetType="instance")
    return {"target_group": name}, ["cannot be registered", "same VPC"]


def _alarm_in_one_region(lab):
    # made in the primary region only: the copy region's windows would never hear of it
    name = f"preflight-alarm-{next(_n)}"
    lab.clients().cloudwatch("us-east-1").put_metric_alarm(
        AlarmName=name, Namespace="Team", MetricName="Errors", Statistic="Sum", Period=60,
        EvaluationPeriods=1, Threshold=1, ComparisonOperator="GreaterThanThreshold")
    return {"verify": {"canary_for": 60, "period": 1, "delay": 1, "alarms": [name]}}, [
        f"no CloudWatch alarm {name} in us-west-2", "create the alarm"]


def _tg_unserved(lab):
    name = f"preflight-alone-{next(_n)}"
    lab.clients().elbv2("us-east-1").create_target_group(
        Name=name, Protocol="HTTP", Port=8080, VpcId=_vpc_of_lab(lab), TargetType="instance")
    return {"target_group": name}, ["no load balancer forwards to target group", "Fix:"]


def _subnet_in_another_zone(lab):
    ec2 = lab.clients().ec2("us-east-1")
    served = aws.ec2.describe_subnet(ec2, lab.env.subnet, "us-east-1")["AvailabilityZone"]
    zone = next(z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]
                if z["ZoneName"] != served)
    name = f"preflight-zone-{next(_n)}"
    ec2.create_subnet(VpcId=_vpc_of_lab(lab), CidrBlock=f"127.{lab.info['spec']['network']}"
                      f".{100 + next(_n)}.0/24", AvailabilityZone=zone, TagSpecifications=[
                          {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": name}]}])
    return {"extra": f'[environments.lab.regions.us-east-1]\nsubnet = "{name}"\n'}, [
        f"does not serve {zone}", f"enable {zone}"]


def _group_subnet_in_another_zone(lab):
    """A server group's second subnet in a zone the load balancer does not serve."""
    settings, _ = _subnet_in_another_zone(lab)
    name = settings["extra"].split('subnet = "')[1].split('"')[0]
    return {"fleet": "server-groups", "subnets": [lab.env.subnet, name]}, [
        "a zone the load balancer does not serve", "leave that subnet out of subnets"]


def _key_in_one_region(lab):
    name = f"preflight-key-{next(_n)}"
    public = (lab.cli.lab_dir / "id_ed25519.pub").read_text()
    lab.clients().ec2("us-east-1").import_key_pair(KeyName=name, PublicKeyMaterial=public)
    return {"key_name": name}, [f"no key pair {name} in us-west-2", "import-key-pair"]


def _default_volume_key(lab, region="us-west-2", *, enabled=True):
    """A customer-managed key made the region's default EBS key (the lab's own AWS key
    comes back after the test: volume_keys_reset)."""
    kms = lab.clients().client("kms", region)
    key = kms.create_key(Description="team volumes")["KeyMetadata"]
    arn = key["Arn"]
    if not enabled:
        kms.disable_key(KeyId=key["KeyId"])
    lab.clients().ec2(region).modify_ebs_default_kms_key_id(KmsKeyId=arn)
    return arn


def _volume_key_unlisted(lab):
    arn = _default_volume_key(lab)
    return {}, [f"the default EBS key in us-west-2 is {arn}", "not in kms_keys",
                "reset-ebs-default-kms-key-id"]


def _volume_key_disabled(lab):
    arn = _default_volume_key(lab, enabled=False)
    return {"kms_keys": [arn]}, ["is Disabled", "enable-key"]


def _no_autoscaling_role(lab):
    """An account that never had a group: no Auto Scaling service-linked role (it comes
    back after the test: account_reset), and the tool's policy does not let it make one."""
    lab.clients().client("iam").delete_service_linked_role(RoleName=aws.iam.AUTOSCALING_ROLE)
    return {"fleet": "server-groups"}, [f"the account has no {aws.iam.AUTOSCALING_ROLE}",
                                        aws.iam.CREATE_AUTOSCALING_ROLE]


def _volume_key_not_for_autoscaling(lab):
    """A customer-managed default key, listed and enabled, whose key policy is KMS's
    default (the account's root): Auto Scaling's role may not use it."""
    arn = _default_volume_key(lab)
    return {"fleet": "server-groups", "kms_keys": [arn]}, [
        f"({arn}) does not let {aws.iam.AUTOSCALING_ROLE} use it",
        "kms:GenerateDataKey*", "kms:GrantIsForAWSResource"]


@pytest.fixture(autouse=True)
def account_reset(lab):
    yield
    for region in lab.env.all_regions:
        lab.clients().ec2(region).reset_ebs_default_kms_key_id()
    iam = lab.clients().client("iam")
    roles = iam.list_roles(PathPrefix="/aws-service-role/")["Roles"]
    if not any(r["RoleName"] == aws.iam.AUTOSCALING_ROLE for r in roles):
        iam.create_service_linked_role(AWSServiceName=aws.iam.AUTOSCALING_SERVICE)


BROKEN = {
    "no owner for a name-filtered base image": lambda lab: (
        {"base_image_owner": ""}, ["no owner", "base_image_owner", "099720109477"]),
    "artifact bucket missing": lambda lab: (
        {"artifact_bucket": "preflight-no-such-bucket"}, ["does not exist", "s3 mb"]),
    "lock table missing": lambda lab: (
        {"lock_table": "preflight-no-such-table"}, ["lock table does not exist",
                                                     "create-table"]),
    "security group of another VPC": _sg_elsewhere,
    "target group of another VPC": _tg_elsewhere,
    "target group no load balancer uses": _tg_unserved,
    "subnet in a zone the load balancer does not serve": _subnet_in_another_zone,
    "key pair missing in a region": _key_in_one_region,
    "customer-managed volume key not in kms_keys": _volume_key_unlisted,
    "customer-managed volume key disabled": _volume_key_disabled,
    "server groups: no service-linked role, no grant to make it": _no_autoscaling_role,
    "server groups: a subnet in a zone the load balancer does not serve":
        _group_subnet_in_another_zone,
    "server groups: instance profile missing": lambda lab: (
        {"fleet": "server-groups", "instance_profile": "preflight-no-such-profile"},
        ["no instance profile preflight-no-such-profile", "create it with its role"]),
    "server groups: default key without the role's grant": _volume_key_not_for_autoscaling,
    "a window's alarm missing in one region": _alarm_in_one_region,
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_preflight_names_each_broken_thing_in_one_line_and_exits_2(lab, tmp_path, case):
    settings, words = BROKEN[case](lab)
    drop, extra = settings.pop("drop", ()), settings.pop("extra", "")
    cli = _cli(lab, tmp_path, drop=drop, extra=extra, **settings)
    before = instances(lab)
    proc = cli("preflight --env lab", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    failed = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("FAIL")]
    assert failed and all(w in "\n".join(failed) for w in words), proc.stdout
    assert all("\n" not in ln and "Fix:" in ln for ln in failed)
    # The deploy meets the same check before it starts: one line, exit 2, nothing made.
    proc = cli("deploy --mode in-place --version 9.9.9", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "preflight" in lines[0] and words[0] in lines[0], proc.stderr
    assert instances(lab) == before
    assert not list((tmp_path / "runs").glob("*.json"))
    assert lock_holder(lab) is None


def test_preflight_of_the_lab_as_it_is_passes_every_check(lab):
    proc = lab.cli("preflight --env lab --json")
    import json

    report = json.loads(proc.stdout)
    assert report["passed"], report
    names = [c["name"] for c in report["checks"]]
    assert names[:4] == ["credentials", "artifact bucket", "lock table", "base image"]
    assert names[4:] == [f"{check} in {r}" for r in lab.env.all_regions
                         for check in ("network", "volume key")] + ["launch"]
    assert report["checks"][-1]["detail"].endswith("would launch (DryRun)")
    assert report["checks"][1]["detail"].endswith("reachable, versioned")


def test_a_bucket_without_versions_passes_and_is_named_for_what_it_costs(lab):
    s3, bucket = lab.clients().s3(), lab.env.artifact_bucket
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Suspended"})
    try:
        out = lab.cli("preflight --env lab").stdout
    finally:
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    line = next(ln for ln in out.splitlines() if "artifact bucket" in ln)
    assert line.split()[0] == "ok" and "NOT versioned (turn versioning on" in line


def test_a_customer_managed_volume_key_listed_and_granted_passes(lab, tmp_path):
    """Listed in kms_keys, `invoke policy` grants its use, and preflight passes with it."""
    import json

    arn = _default_volume_key(lab)
    cli = _cli(lab, tmp_path, kms_keys=[arn])
    policy = json.loads(cli(f"policy --env lab --config {cli.config}").stdout)
    assert any(s["Resource"] == [arn] and "kms:CreateGrant" in s["Action"]
               for s in policy["Statement"])
    report = json.loads(cli("preflight --env lab --json").stdout)
    assert report["passed"], report
    assert {c["name"]: c["detail"] for c in report["checks"]}["volume key in us-west-2"] \
        == f"{arn} (customer-managed, enabled)"


def test_server_groups_pass_with_the_role_the_profile_and_a_key_policy_for_the_role(
        lab, tmp_path):
    """Auto Scaling's role and the instance profile there, and a customer-managed default
    key whose policy has the two statements the Auto Scaling user guide gives the role."""
    import json

    arn = _default_volume_key(lab)
    role = aws.iam.autoscaling_role_arn(arn.split(":")[4])
    kms = lab.clients().client("kms", "us-west-2")
    policy = json.loads(kms.get_key_policy(KeyId=arn, PolicyName="default")["Policy"])
    policy["Statement"] += [
        {"Effect": "Allow", "Principal": {"AWS": role}, "Resource": "*",
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                    "kms:DescribeKey"]},
        {"Effect": "Allow", "Principal": {"AWS": role}, "Resource": "*",
         "Action": "kms:CreateGrant",
         "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}}]
    kms.put_key_policy(KeyId=arn, PolicyName="default", Policy=json.dumps(policy))
    cli = _cli(lab, tmp_path, fleet="server-groups", kms_keys=[arn])
    report = json.loads(cli("preflight --env lab --json").stdout)
    assert report["passed"], report
    found = {c["name"]: c["detail"] for c in report["checks"]}
    assert found["Auto Scaling's role"] == role
    assert found["instance profile"].endswith("(role deploy-instance)")
    assert found["volume key in us-west-2"].endswith(
        f"usable by {aws.iam.AUTOSCALING_ROLE})")


def _clients_from_the_chain(lab, monkeypatch, tmp_path, *, minutes=None, role=False):
    """The tool's clients with credentials from botocore's own chain, as an operator's
    would be: an expiring session in the environment (AWS_CREDENTIAL_EXPIRATION), or a
    profile that assumes a role (refreshed by botocore as it expires)."""
    from deploylib.aws import AwsClients

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_CREDENTIAL_EXPIRATION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", lab.info["endpoint"])  # the role's STS too
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (tmp_path / "config").write_text(
        "[profile deployer]\nrole_arn = arn:aws:iam::123456789012:role/deploy\n"
        "source_profile = base\nregion = us-east-1\n")
    # An operator's own key, and a session of theirs: made through the lab's IAM and STS,
    # the only keys besides its own the lab answers.
    iam = lab.clients().client("iam")
    user = f"operator-{uuid.uuid4().hex[:12]}"
    iam.create_user(UserName=user)
    key = iam.create_access_key(UserName=user)["AccessKey"]
    (tmp_path / "credentials").write_text(
        f"[base]\naws_access_key_id = {key['AccessKeyId']}\n"
        f"aws_secret_access_key = {key['SecretAccessKey']}\n")
    if role:
        monkeypatch.setenv("AWS_PROFILE", "deployer")
    else:
        session = lab.clients().client("sts").assume_role(
            RoleArn="arn:aws:iam::123456789012:role/operator", RoleSessionName=user,
            DurationSeconds=43200)["Credentials"]
        # (the session's end as the environment tells it, which is what preflight reads)
        ends = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=minutes)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", session["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", session["SecretAccessKey"])
        monkeypatch.setenv("AWS_SESSION_TOKEN", session["SessionToken"])
        monkeypatch.setenv("AWS_CREDENTIAL_EXPIRATION", ends.isoformat())
    return AwsClients(lab.env.primary_region, endpoint_url=lab.info["endpoint"],
                      path_style=True)


@pytest.mark.parametrize("minutes,role,mode,ok", [
    (60, False, "immutable", False),    # a 1-hour session, a 2-hour copy wait
    (60, False, "in-place", True),      # its longest wait is 10 minutes
    (180, False, "immutable", True),
    (None, True, "immutable", True),    # assumed role: botocore refreshes it
])
def test_credentials_must_outlive_the_procedures_longest_wait(lab, monkeypatch, tmp_path,
                                                             minutes, role, mode, ok):
    clients = _clients_from_the_chain(lab, monkeypatch, tmp_path, minutes=minutes, role=role)
    if ok:
        found = preflight.credentials(lab.env, clients, mode)
        assert ("refreshed as needed (assume-role)" in found) == role
    else:
        with pytest.raises(InputError, match="session ends in 60 min") as info:
            preflight.credentials(lab.env, clients, mode)
        assert "role_arn" in info.value.line() and "timeouts.copy" in info.value.line()


def _policy_without(lab, sid: str, action: str | None = None) -> str:
    """The lab environment's policy short of one statement, or of one of its actions."""
    import json

    policy = json.loads(render.iam_policy(lab.env))
    policy["Statement"] = [
        {**s, "Action": [a for a in s["Action"] if a != action]} if s["Sid"] == sid else s
        for s in policy["Statement"] if action or s["Sid"] != sid]
    return json.dumps(policy)


@pytest.mark.parametrize("sid,words", [
    ("ArtifactStoreList", ["artifact bucket", "S3 refused HeadBucket", "grant s3:ListBucket"]),
    ("DeployLock", ["lock table", "not authorized to perform: dynamodb:GetItem"]),
    ("ReadEc2", ["not authorized to perform", "ec2:Describe"]),
    # met by the DryRun launch, not by the first instance the deploy would make
    ("LaunchForTheEnvironment", ["launch", "not authorized to perform: ec2:RunInstances "
                                           "on resource: arn:aws:ec2:us-east-1:"]),
])
def test_a_policy_short_of_a_grant_fails_preflight_naming_the_action(lab, sid, words):
    """The lab holds the tool to its policy (deploylib.lab.iam): a grant missing from it
    is met before anything starts, in AWS's words."""
    checks.hold_to_policy(lab, _policy_without(lab, sid))
    before = instances(lab)
    proc = lab.cli("preflight --env lab", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    failed = "\n".join(ln for ln in proc.stdout.splitlines() if "FAIL" in ln)
    assert all(w in failed for w in words), proc.stdout
    assert instances(lab) == before and lock_holder(lab) is None


def test_server_groups_without_passing_the_instance_role_fail_preflight(lab, tmp_path):
    """The groups launch with the instance profile: passing its role to EC2 is a grant of
    its own, met by preflight's DryRun launch."""
    import json

    cli = _cli(lab, tmp_path, fleet="server-groups")
    policy = json.loads(render.iam_policy(config.load(cli.config).environment("lab")))
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != "PassTheInstanceRole"]
    checks.hold_to_policy(lab, json.dumps(policy))
    before = instances(lab)
    proc = cli("preflight --env lab", check=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    (failed,) = [ln for ln in proc.stdout.splitlines() if "FAIL" in ln]
    assert "launch" in failed and "iam:PassRole" in failed and "deploy-instance" in failed
    assert instances(lab) == before and lock_holder(lab) is None


def test_a_grant_first_needed_mid_run_stops_it_naming_the_action_with_nothing_changed(lab):
    """Without s3:PutObject, preflight (which only reads) passes and the deploy stops
    when it publishes — before any host is touched: one line naming the action, the live
    release still serving, the lock free."""
    live = checks.record(lab)
    checks.hold_to_policy(lab, _policy_without(lab, "ArtifactStore", "s3:PutObject"))
    before = instances(lab)
    proc = lab.cli(f"deploy --mode in-place --version 7.7.{next(_n)}", check=False)
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "not authorized to perform: s3:PutObject" in errors[0], \
        proc.stderr
    assert checks.record(lab) == live and instances(lab) == before
    assert lock_holder(lab) is None
