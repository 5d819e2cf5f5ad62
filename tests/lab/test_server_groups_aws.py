"""Server groups as AWS treats them, where the lab is as strict as AWS (docs/lab.md):
a delete refused while a launch is in progress and a group pending delete, an instance
profile IAM has not propagated, a default EBS key Auto Scaling's role may not use, a
group's create authorised on its launch template and (in a new account) on making Auto
Scaling's service-linked role, every launch template version listed; and groups as
teams run them — their settings carried to the next group and back, their subnets
spanned (fleet = "server-groups", in the lab)."""

from __future__ import annotations

import json
import os
import time

import botocore.exceptions
import pytest

from deploylib import aws, waits
from deploylib.errors import CloudError, PermissionDenied
from tests.lab import checks
from tests.lab.groups import asg, assert_all_serve, groups, live_group, run_leftovers

# A server-group lab of its own (tests/scheduling.py): these change what the account
# holds (a key, a role, subnets, a team's policies), and the server-group modules' lab
# is the suite's longest unit already.
pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(fleet="server-groups"),
              pytest.mark.xdist_group("server-groups-aws")]


def test_a_group_deleted_while_it_launches_is_deleted_once_the_launch_is_over(lab):
    # A failed run's discard meets a group mid-launch: AWS refuses the delete while the
    # launch is in progress (ScalingActivityInProgress), then lists the group as
    # "Delete in progress" for a while, refusing every change and keeping its name.
    region = lab.env.primary_region
    deployer = lab.clients_as("deployer").autoscaling(region)
    live = live_group(lab, region)
    name = _next_name(lab, region)
    tags = [{"Key": aws.TAG_ENV, "Value": lab.env.name}]
    aws.autoscaling.create(deployer, region=region, name=name, template_id=live.template_id,
                           version=int(live.template_version), subnet_ids=[
                               lab.clients().ec2(region).describe_subnets()["Subnets"][0][
                                   "SubnetId"]],
                           tag_list=tags, min_size=1, max_size=1, desired=1, hook_timeout=60,
                           grace=30)
    aws.autoscaling.delete(deployer, region, name)  # waits the launch out
    listed = asg(lab, region).describe_auto_scaling_groups(
        AutoScalingGroupNames=[name])["AutoScalingGroups"]
    # Still there (DELETE_LINGER): shown as AWS shows it, and held.
    assert [g["Status"] for g in listed] == [aws.autoscaling.PENDING_DELETE]
    assert aws.autoscaling.describe(deployer, region, name) is None
    assert name not in [g.name for g in groups(lab, region)]
    assert aws.autoscaling.next_name(lab.env.group_prefix, [
        g.name for g in aws.autoscaling.server_groups(
            deployer, region, lab.env.group_prefix, deleting=True)]) != name
    with pytest.raises(botocore.exceptions.ClientError, match="pending delete"):
        deployer.update_auto_scaling_group(AutoScalingGroupName=name, DesiredCapacity=0)
    with pytest.raises(botocore.exceptions.ClientError, match="already exists"):
        deployer.create_auto_scaling_group(
            AutoScalingGroupName=name, MinSize=0, MaxSize=0, LaunchTemplate={
                "LaunchTemplateId": live.template_id, "Version": live.template_version})
    aws.autoscaling.delete(deployer, region, name)  # as good as gone: no error
    waits.until(lambda: not asg(lab, region).describe_auto_scaling_groups(
        AutoScalingGroupNames=[name])["AutoScalingGroups"], timeout=60,
        what=f"{name} gone", resource=region, fix="read deploylib/lab/scaling.py")
    assert live_group(lab, region).in_service == live.in_service


def test_a_group_given_a_profile_made_moments_ago_is_made_once_iam_knows_it(lab):
    # IAM is eventually consistent: for seconds after an instance profile is made, Auto
    # Scaling refuses a launch template naming it ("Invalid IAM Instance Profile name";
    # the lab for PROFILE_PROPAGATION seconds), and botocore does not retry that. The
    # tool does, up to PROPAGATION.
    from deploylib.lab import scaling

    region = lab.env.primary_region
    admin = lab.clients()
    profile = f"fresh-{os.urandom(4).hex()}"
    admin.client("iam").create_instance_profile(InstanceProfileName=profile)
    live = live_group(lab, region)
    template = admin.ec2(region).create_launch_template(
        LaunchTemplateName=f"propagation-{profile}", LaunchTemplateData={
            "ImageId": admin.ec2(region).describe_images(Owners=["self"])["Images"][0][
                "ImageId"], "IamInstanceProfile": {"Name": profile}})["LaunchTemplate"]
    name = f"propagation-{profile}-v001"
    made = time.monotonic()
    try:
        group = aws.autoscaling.create(
            asg(lab, region), region=region, name=name,
            template_id=template["LaunchTemplateId"], version=1, subnet_ids=[
                admin.ec2(region).describe_subnets()["Subnets"][0]["SubnetId"]],
            tag_list=[], min_size=0, max_size=0, desired=0, hook_timeout=60, grace=30)
        assert group.name == name
        # Refused while it was young: the group can only have been made once it was not.
        assert time.monotonic() - made >= scaling.PROFILE_PROPAGATION - 1
    finally:
        aws.autoscaling.delete(asg(lab, region), region, name)
    assert live_group(lab, region).in_service == live.in_service


def test_a_default_volume_key_auto_scaling_may_not_use_fails_its_launches_in_aws_words(lab):
    # A customer-managed default EBS key whose key policy does not name Auto Scaling's
    # service-linked role: the group's launches fail (Client.InternalError), which the
    # wait reads from its activities at once, not at the boot timeout. (A deploy meets
    # preflight first, which names the key policy's missing statements: test_preflight.)
    from deploylib.lab import scaling

    region = lab.env.primary_region
    live = live_group(lab, region)
    key = lab.clients().client("kms", region).create_key(Description="team volumes")
    lab.clients().ec2(region).modify_ebs_default_kms_key_id(KmsKeyId=key["KeyMetadata"]["Arn"])
    deployer = lab.clients_as("deployer").autoscaling(region)
    name = _next_name(lab, region)
    try:
        aws.autoscaling.create(
            deployer, region=region, name=name, template_id=live.template_id,
            version=int(live.template_version), subnet_ids=[
                lab.clients().ec2(region).describe_subnets()["Subnets"][0]["SubnetId"]],
            tag_list=[{"Key": aws.TAG_ENV, "Value": lab.env.name}], min_size=1, max_size=1,
            desired=1, hook_timeout=600, grace=30)
        with pytest.raises(CloudError, match="could not launch an instance") as failed:
            aws.autoscaling.wait_in_service(deployer, region, name, 1, timeout=300)
        assert scaling.KEY_REFUSED in str(failed.value)
        assert not aws.autoscaling.describe(deployer, region, name).instances
    finally:
        lab.clients().ec2(region).reset_ebs_default_kms_key_id()
        aws.autoscaling.delete(deployer, region, name)
    assert live_group(lab, region).in_service == live.in_service


def _next_name(lab, region: str) -> str:
    """A group name no group has, those AWS is still deleting included."""
    return aws.autoscaling.next_name(lab.env.group_prefix, [
        g.name for g in aws.autoscaling.server_groups(asg(lab, region), region,
                                                      lab.env.group_prefix, deleting=True)])


def _policy(lab, drop: str = "", add: dict | None = None) -> str:
    from deploylib import render

    policy = json.loads(render.iam_policy(lab.env))
    policy["Statement"] = [s for s in policy["Statement"] if s["Sid"] != drop] + (
        [add] if add else [])
    return json.dumps(policy)


@pytest.mark.parametrize("case", ["template", "service-linked role"])
def test_a_group_is_authorised_on_what_it_will_launch_as_aws_authorises_it(lab, case):
    # CreateAutoScalingGroup with a launch template is also the caller's ec2:RunInstances
    # on the template, and in an account that never had a group, its
    # iam:CreateServiceLinkedRole of Auto Scaling's role (the Auto Scaling user guide).
    region = lab.env.primary_region
    live = live_group(lab, region)
    iam = lab.clients().client("iam")
    deployer = lab.clients_as("deployer").autoscaling(region)
    name = _next_name(lab, region)
    create = lambda: aws.autoscaling.create(  # noqa: E731 - the same call, twice
        deployer, region=region, name=name, template_id=live.template_id,
        version=int(live.template_version), subnet_ids=[
            lab.clients().ec2(region).describe_subnets()["Subnets"][0]["SubnetId"]],
        tag_list=[], min_size=0, max_size=0, desired=0, hook_timeout=60, grace=30)
    if case == "template":
        checks.hold_to_policy(lab, _policy(lab, drop="LaunchFromTheEnvironmentsTemplates"))
        refused = f"ec2:RunInstances on resource: arn:aws:ec2:{region}:"
        grant = None
    else:
        iam.delete_service_linked_role(RoleName=aws.iam.AUTOSCALING_ROLE)
        refused = "iam:CreateServiceLinkedRole on resource: arn:aws:iam::"
        grant = {"Sid": "MakeTheRole", "Effect": "Allow",
                 "Action": "iam:CreateServiceLinkedRole", "Resource": "*", "Condition": {
                     "StringEquals": {"iam:AWSServiceName": aws.iam.AUTOSCALING_SERVICE}}}
    try:
        with pytest.raises(PermissionDenied, match=refused):
            create()
        assert _next_name(lab, region) == name  # nothing made
        if grant:  # granted (as the operator guide says), the first group makes the role
            checks.hold_to_policy(lab, _policy(lab, add=grant))
            create()
            assert aws.iam.autoscaling_role(iam) is not None
            aws.autoscaling.delete(deployer, region, name)
    finally:
        checks.restore_policy(lab)
        if aws.iam.autoscaling_role(iam) is None:
            iam.create_service_linked_role(AWSServiceName=aws.iam.AUTOSCALING_SERVICE)


def test_every_version_of_a_launch_template_is_listed(lab):
    # An environment's template gains a version per deploy; moto listed the first 15
    # and no more (no NextToken), so a group on a newer one looked to launch from none.
    region = lab.env.primary_region
    ec2 = lab.clients().ec2(region)
    name = f"many-versions-{os.urandom(4).hex()}"
    image = ec2.describe_images(Owners=["self"])["Images"][0]["ImageId"]
    made = ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData={
        "ImageId": image})["LaunchTemplate"]
    for _ in range(19):
        ec2.create_launch_template_version(LaunchTemplateId=made["LaunchTemplateId"],
                                           LaunchTemplateData={"ImageId": image})
    ec2.delete_launch_template_versions(LaunchTemplateId=made["LaunchTemplateId"],
                                        Versions=["3"])
    try:
        listed = [v.version for v in aws.ec2.launch_template(ec2, region, name).versions]
        assert listed == [n for n in range(1, 21) if n != 3]
    finally:
        ec2.delete_launch_template(LaunchTemplateId=made["LaunchTemplateId"])


def test_the_next_group_keeps_what_the_team_set_on_the_live_one_and_a_rollback_too(lab):
    """Scaling policies, scheduled actions, the team's lifecycle hooks, tags and
    termination policies go from the live group to the next (as Spinnaker's clouddriver
    carries them), and back on a rollback; the group kept for a rollback is not scaled by
    them while it serves nobody; the grace period is the health check's, not the boot's."""
    region = lab.env.primary_region
    client = asg(lab, region)
    was = live_group(lab, region).name
    tracking = {"PredefinedMetricSpecification": {
        "PredefinedMetricType": "ASGAverageCPUUtilization"}, "TargetValue": 50.0}
    client.put_scaling_policy(AutoScalingGroupName=was, PolicyName="cpu-50",
                              PolicyType="TargetTrackingScaling",
                              TargetTrackingConfiguration=tracking)
    client.put_scheduled_update_group_action(
        AutoScalingGroupName=was, ScheduledActionName="weekday-mornings",
        Recurrence="0 7 * * 1-5", MinSize=2, MaxSize=6, DesiredCapacity=3)
    client.put_lifecycle_hook(AutoScalingGroupName=was, LifecycleHookName="drain-queue",
                              LifecycleTransition="autoscaling:EC2_INSTANCE_TERMINATING",
                              HeartbeatTimeout=60, DefaultResult="CONTINUE")
    client.create_or_update_tags(Tags=[{"ResourceId": was, "ResourceType": "auto-scaling-group",
                                        "Key": "team", "Value": "payments",
                                        "PropagateAtLaunch": True}])
    client.update_auto_scaling_group(AutoScalingGroupName=was,
                                     TerminationPolicies=["OldestLaunchTemplate"])
    team = aws.autoscaling.settings(client, aws.autoscaling.describe(client, region, was))
    proc = lab.cli("deploy --mode rebake-light --version 4.5.5")
    now = live_group(lab, region)
    assert now.name != was and f"{now.name} keeps {was}'s" in proc.stderr
    assert aws.autoscaling.settings(client, now) == team
    assert now.tags["team"] == "payments"
    (raw,) = client.describe_auto_scaling_groups(AutoScalingGroupNames=[now.name])[
        "AutoScalingGroups"]
    target = lab.clients().elbv2(region).describe_target_groups(
        TargetGroupArns=list(now.target_groups))["TargetGroups"][0]
    assert raw["HealthCheckGracePeriod"] == 2 * target["HealthCheckIntervalSeconds"] + \
        target["HealthCheckTimeoutSeconds"] < lab.env.timeouts.get("boot", 900)
    kept = aws.autoscaling.describe(client, region, was)
    assert set(aws.autoscaling.KEPT) <= set(kept.suspended) and not kept.target_groups
    # A policy the team adds to the new group goes back with a rollback.
    client.put_scaling_policy(AutoScalingGroupName=now.name, PolicyName="cpu-70",
                              PolicyType="TargetTrackingScaling",
                              TargetTrackingConfiguration={**tracking, "TargetValue": 70.0})
    lab.cli("rollback")
    back = live_group(lab, region)
    assert back.name == was and not set(aws.autoscaling.KEPT) & set(back.suspended)
    assert {p["PolicyName"] for p in aws.autoscaling.settings(client, back).policies} \
        == {"cpu-50", "cpu-70"}
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_a_group_spans_its_subnets_one_instance_per_zone(lab):
    """`subnets`: the group spans them all, and AWS (the lab) balances its instances
    across their zones; preflight has checked each is in a zone the balancer serves."""
    network = lab.info["spec"]["network"]
    names = []
    for n, region in enumerate(lab.env.all_regions, start=network):
        ec2, elb = lab.clients().ec2(region), lab.clients().elbv2(region)
        first = aws.ec2.describe_subnet(ec2, lab.env.subnet, region)
        zone = next(z["ZoneName"] for z in ec2.describe_availability_zones()[
            "AvailabilityZones"] if z["ZoneName"] != first["AvailabilityZone"])
        second = ec2.create_subnet(
            VpcId=first["VpcId"], CidrBlock=f"127.{n}.1.0/24", AvailabilityZone=zone,
            TagSpecifications=[{"ResourceType": "subnet", "Tags": [
                {"Key": "Name", "Value": "deploylab-second-zone"}]}])["Subnet"]
        balancer = elb.describe_load_balancers(Names=[lab.env.target_group])[
            "LoadBalancers"][0]
        elb.set_subnets(LoadBalancerArn=balancer["LoadBalancerArn"],
                        Subnets=[first["SubnetId"], second["SubnetId"]])
        names.append((region, {first["SubnetId"], second["SubnetId"]}))
    config = lab.write_config(name="two-zones.toml", fleet="server-groups",
                              subnets=[lab.env.subnet, "deploylab-second-zone"])
    report = json.loads(lab.cli(f"preflight --json --config {config}").stdout)
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert report["passed"] and all("; groups span" in details[f"network in {r}"]
                                    for r, _ in names), report
    lab.cli(f"deploy --mode rebake-light --version 4.6.6 --config {config}")
    for region, subnets in names:
        group = live_group(lab, region)
        described = lab.clients().ec2(region).describe_instances(
            InstanceIds=group.in_service)["Reservations"]
        found = {i["SubnetId"] for r in described for i in r["Instances"]}
        assert len(group.in_service) == 2 and found == subnets, (region, found)
    assert_all_serve(lab, "4.6.6", 2)


def test_a_group_whose_window_fails_gives_way_to_the_one_it_replaced(lab, tmp_path):
    """rebake-light into a new server group with a release failing a fifth of its
    requests: the replaced group is kept at capacity through the window, and the failed
    window re-enables it and discards the new group (nothing of the run left)."""
    from tests.lab.windows import app_that, before_the_run, watched
    from tests.lab.windows import users as users_of

    region = lab.env.primary_region
    before = checks.record(lab)
    kept = live_group(lab, region)
    config = watched(lab, tmp_path, app_that(tmp_path, fail=0.2), live_for=6)
    with users_of(lab) as users:
        before_the_run(lab, 8)
        proc = lab.cli(f"deploy --mode rebake-light --version 1.0.31 --config {config}",
                       check=False)
        after = len(users.seen[region])
        waits.until(lambda: len(users.seen[region]) > after + 20, timeout=30,
                    what="more requests", resource="the lab's balancer", fix="-")
    assert proc.returncode == 4, proc.stderr[-2000:]
    state = checks.state_of(lab, proc)
    window = state["facts"]["windows"][0]
    assert (window["stage"], window["passed"]) == ("verify", False)
    assert "5xx" in window["why"]
    assert checks.record(lab) == before
    assert_all_serve(lab, before["release"], len(kept.in_service))
    # Through the window the replaced group kept every instance it had: the same ones
    # serve again, none launched anew.
    assert live_group(lab, region).name == kept.name
    assert sorted(live_group(lab, region).in_service) == sorted(kept.in_service)
    assert run_leftovers(lab, state["run_id"]) == []
    assert all(status == 200 and version == before["release"]
               for status, version in users.seen[region][after:])
