"""A hostile neighbour: a second environment in the lab's account, with the policy
`invoke policy` renders for it, tries every way into the lab environment it has — its
record, releases, host keys, lock, server groups, target group and instances; its own
image retagged into the lab; a foundation planted under the lab's cache key — and each is
refused, by the lab's IAM in AWS's words or by the tool. The lab environment's next bake,
hotfix and scale-out then go as if the neighbour had never been there."""

from __future__ import annotations

import json
from contextlib import suppress

import pytest
from botocore.exceptions import ClientError

from deploylib import aws, lock, render
from deploylib.errors import DeployError
from deploylib.lab import iam
from deploylib.steps.release import artifact_key
from tests.lab import checks
from tests.lab.groups import assert_all_serve, live_group, scale_all

# The server-group lab: a scale-out is one of what must be unaffected.
pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(fleet="server-groups"),
              pytest.mark.xdist_group("server-groups")]

RUN = "20261207T120000-0bad00"


def refused(attempt) -> str:
    """The refusal of one attempt, in the service's words (an AccessDenied of the
    lab's IAM, whichever layer of the tool's it came through)."""
    try:
        attempt()
    except (ClientError, DeployError) as exc:
        words = str(exc)
        assert "is not authorized to perform" in words or "AccessDenied" in words, words
        return words
    raise AssertionError("the neighbour was let through")


def test_a_neighbour_environment_reaches_nothing_of_the_labs_and_the_lab_deploys_on(lab):
    env = lab.env
    region = env.primary_region
    admin = lab.clients()
    neighbour_env = env.model_copy(update={"name": "neighbour",
                                           "target_group": "deploylab-neighbour-web"})
    (lab.cli.lab_dir / iam.NEIGHBOUR_POLICY_FILE).write_text(render.iam_policy(neighbour_env))
    theirs = lab.clients_as("neighbour")
    ssm, s3, ddb = theirs.ssm(), theirs.s3(), theirs.dynamodb()
    ec2, elbv2, asg = theirs.ec2(region), theirs.elbv2(region), theirs.autoscaling(region)

    before = checks.record(lab)
    live = sorted(live_group(lab, region).in_service)
    host_key = f"{env.host_keys_path}{region}/{live[0]}"
    trusted = _parameter(admin, host_key)  # (None: the tool has not met this host yet)
    release = artifact_key(env.name, before["release"])
    published = admin.s3().head_object(Bucket=env.artifact_bucket, Key=release)["ETag"]
    # Its own image (as its bake would tag it at creation), and a newer image under the
    # lab's bake-cache key tagged as the lab's — more than the neighbour's policy lets it
    # make: the tool must not take it even so.
    own = checks.plant_image(lab, region, "neighbour-1", {aws.TAG_ENV: "neighbour",
                                                          aws.TAG_LAYERS: "0"})
    foundation = before["foundations"][region]
    planted = checks.plant_image(lab, region, "planted-foundation", {
        aws.TAG_FOUNDATION: foundation["key"], aws.TAG_ENV: env.name})
    try:
        attacks = {
            "rewrite the record": lambda: ssm.put_parameter(
                Name=env.record_parameter, Type="String", Overwrite=True,
                Value=json.dumps({**before, "release": "6.6.6"})),
            "trust its own key for a live host": lambda: ssm.put_parameter(
                Name=host_key, Value="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPlanted",
                Type="String", Overwrite=True),
            "replace the live release's artifact": lambda: s3.put_object(
                Bucket=env.artifact_bucket, Key=release, Body=b"planted"),
            "publish a release of the lab's": lambda: s3.put_object(
                Bucket=env.artifact_bucket, Key=artifact_key(env.name, "6.6.6"), Body=b"x"),
            "take the lab's lock": lambda: lock.acquire(ddb, env.lock_table, env.name, RUN,
                                                        ttl=60),
            "break the lab's lock": lambda: lock.break_lock(ddb, env.lock_table, env.name),
            "retag its image into the lab": lambda: ec2.create_tags(
                Resources=[own], Tags=[{"Key": aws.TAG_ENV, "Value": env.name}]),
            "reset its image's layers": lambda: ec2.create_tags(
                Resources=[own], Tags=[{"Key": aws.TAG_LAYERS, "Value": "0"}]),
            "empty the lab's server group": lambda: asg.update_auto_scaling_group(
                AutoScalingGroupName=before["server_groups"][region], DesiredCapacity=0),
            "take a lab host out of its target group": lambda: elbv2.deregister_targets(
                TargetGroupArn=checks.target_group(lab, region), Targets=[{"Id": live[0]}]),
            "terminate a lab host": lambda: ec2.terminate_instances(InstanceIds=[live[0]]),
        }
        for what, attempt in attacks.items():
            words = refused(attempt)
            print(f"{what}: {words}")
        # ... while its own policy is in force, not a blanket refusal: its own parameters,
        # releases, lock item and its image's one writable tag are its to write.
        ssm.put_parameter(Name=neighbour_env.record_parameter, Value="{}", Type="String",
                          Overwrite=True)
        s3.put_object(Bucket=env.artifact_bucket, Key=artifact_key("neighbour", "1.0.0"),
                      Body=b"x")
        lock.acquire(ddb, env.lock_table, "neighbour", RUN, ttl=60)
        ec2.create_tags(Resources=[own], Tags=[{"Key": aws.TAG_RETIRING, "Value": "1"}])

        # Nothing of the lab's changed.
        assert checks.record(lab) == before
        assert _parameter(admin, host_key) == trusted
        assert admin.s3().head_object(Bucket=env.artifact_bucket,
                                      Key=release)["ETag"] == published
        assert checks.lock_holder(lab) is None

        # The lab's next bake starts from its recorded foundation, not the planted one...
        proc = lab.cli("deploy --mode immutable --version 9.4.0")
        builder = checks.state_of(lab, proc)["facts"]["builder"]
        assert builder["source_image"] == foundation["image"] != planted
        assert_all_serve(lab, "9.4.0", env.fleet_size)
        # ... its hotfix goes on, and a scale-out after it boots into the hotfix.
        lab.cli("hotfix --version 9.4.1")
        scale_all(lab, env.fleet_size + 1)
        assert_all_serve(lab, "9.4.1", env.fleet_size + 1)
        scale_all(lab, env.fleet_size)
        assert_all_serve(lab, "9.4.1", env.fleet_size)
    finally:
        (lab.cli.lab_dir / iam.NEIGHBOUR_POLICY_FILE).unlink(missing_ok=True)
        for image in (own, planted):
            admin.ec2(region).deregister_image(ImageId=image)
        with suppress(ClientError):  # (not written if the test failed before)
            admin.ssm().delete_parameter(Name=neighbour_env.record_parameter)
        admin.s3().delete_object(Bucket=env.artifact_bucket,
                                 Key=artifact_key("neighbour", "1.0.0"))
        admin.dynamodb().delete_item(TableName=env.lock_table,
                                     Key={"env": {"S": "neighbour"}})


def _parameter(clients, name: str) -> str | None:
    try:
        return clients.ssm().get_parameter(Name=name)["Parameter"]["Value"]
    except clients.ssm().exceptions.ParameterNotFound:
        return None
