"""deploylib/templates/iam-policy.json: its shape, and the check (tests/iam_audit.py) that holds it
against every AWS call the tool makes during the suite.

The check itself runs at the end of the session; here, that it decides right: a call
the policy does not grant fails it, a grant nothing used fails it when the whole suite
ran and is reported unchecked when the run was narrowed (the lab tests deselected).
"""

from __future__ import annotations

import json
import os

from tests import iam_audit

POLICY = iam_audit.load_policy()


def test_the_policy_grants_named_actions_only_and_allows_only():
    for statement in POLICY["Statement"]:
        assert statement["Effect"] == "Allow"
    assert not any("*" in a for a in iam_audit.granted(POLICY)), "a wildcard action"


def test_the_policy_scopes_data_to_the_tools_own_resources():
    by_sid = {s["Sid"]: s for s in POLICY["Statement"]}
    # each environment's own: its releases, its parameters, its lock item
    assert by_sid["ArtifactStore"]["Resource"].endswith("/releases/ENV_NAME/*")
    assert by_sid["LiveRecord"]["Resource"].endswith(":parameter/deploylib/ENV_NAME/*")
    assert "table/" in by_sid["DeployLock"]["Resource"]
    assert by_sid["DeployLock"]["Condition"] == {
        "ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["ENV_NAME"]}}
    # after creation, the one tag it may write is deploy:retiring (a retag into another
    # environment, or of its provenance, is not granted)
    assert "ec2:CreateTags" not in by_sid["OnlyTheEnvironmentsOwn"]["Action"]
    assert by_sid["RetireTheEnvironmentsOwn"]["Condition"]["ForAllValues:StringEquals"] == {
        "aws:TagKeys": ["deploy:retiring"]}


def test_a_call_the_policy_does_not_grant_fails_the_check():
    used = iam_audit.granted(POLICY) | {"ec2:AuthorizeSecurityGroupIngress"}
    v = iam_audit.verdict(used, POLICY, calls=10, whole_suite=True)
    assert v.failed and v.missing == {"ec2:AuthorizeSecurityGroupIngress"} and not v.unused


def test_a_grant_nothing_used_fails_the_check_of_the_whole_suite():
    used = iam_audit.granted(POLICY) - {"ec2:CopyImage"}
    v = iam_audit.verdict(used, POLICY, calls=10, whole_suite=True)
    assert v.failed and v.unused == {"ec2:CopyImage"}


def test_with_the_lab_tests_deselected_unused_grants_are_not_checked_not_passed():
    v = iam_audit.verdict({"ssm:GetParameter"}, POLICY, calls=1, whole_suite=False)
    assert v.unused is None and not v.failed  # "not checked", said in the summary


def test_s3_operations_count_as_the_actions_that_authorise_them():
    assert iam_audit.action("S3", "HeadObject") == "s3:GetObject"
    assert iam_audit.action("S3", "UploadPart") == "s3:PutObject"
    assert iam_audit.action("Elastic Load Balancing v2", "RegisterTargets") == \
        "elasticloadbalancing:RegisterTargets"


def test_the_listener_hears_the_tool_and_only_the_tool(aws_clients, moto_endpoint):
    """botocore's client-side monitoring, as the tool's commands get it, reaches the
    listener; a client without the variables (the tests' own) is not heard."""
    import subprocess
    import sys

    listener = iam_audit.Listener()
    port = listener.start()
    env = {**os.environ, "AWS_CSM_ENABLED": "true", "AWS_CSM_HOST": "127.0.0.1",
           "AWS_CSM_PORT": str(port), "AWS_CSM_CLIENT_ID": iam_audit.CLIENT_ID}
    script = ("from deploylib.aws import AwsClients, ssm\n"
              f"c = AwsClients('us-east-1', endpoint_url={moto_endpoint!r}, "
              "credentials={'aws_access_key_id': 'a', 'aws_secret_access_key': 'b'})\n"
              "ssm.read_record(c.ssm(), '/deploylib/csm-probe/live')\n")
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    aws_clients.ec2("us-east-1").describe_instances()  # this process: not observed
    listener.drain()
    assert listener.used == {"ssm:GetParameter"} and listener.calls == 1


def test_reading_an_artifact_implies_listing_the_bucket_or_a_first_publish_gets_403():
    """S3 answers HeadObject of a missing key 404 only to who may list the bucket."""
    policy = {"Statement": [s for s in POLICY["Statement"] if s["Sid"] != "ArtifactStoreList"]}
    v = iam_audit.verdict({"s3:GetObject"}, policy, calls=1, whole_suite=False)
    assert v.missing == {"s3:ListBucket"}
    v = iam_audit.verdict({"s3:PutObject"}, POLICY, calls=1, whole_suite=False)
    assert not v.missing  # AbortMultipartUpload, for an upload_file that fails, is granted


def test_the_policy_for_an_environment_names_its_bucket_and_lock_table(tmp_path):
    from deploylib import config, render
    from tests.conftest import write_config

    env = config.load(write_config(tmp_path, artifact_bucket="team-artifacts",
                                   lock_table="team-locks")).environment("lab")
    text = render.iam_policy(env)
    policy = json.loads(text)
    assert "ARTIFACT_BUCKET" not in text and "LOCK_TABLE" not in text
    resources = {s["Sid"]: s["Resource"] for s in policy["Statement"]}
    # the environment's own: its releases, its parameters, its lock item
    assert resources["ArtifactStore"] == "arn:aws:s3:::team-artifacts/releases/lab/*"
    assert resources["ArtifactStoreList"] == "arn:aws:s3:::team-artifacts"
    assert resources["LiveRecord"] == "arn:aws:ssm:*:*:parameter/deploylib/lab/*"
    assert resources["DeployLock"] == "arn:aws:dynamodb:*:*:table/team-locks"
    (locked,) = [s for s in policy["Statement"] if s["Sid"] == "DeployLock"]
    assert locked["Condition"] == {"ForAllValues:StringEquals": {"dynamodb:LeadingKeys": ["lab"]}}
    assert resources["TargetGroups"] == [
        f"arn:aws:elasticloadbalancing:{r}:*:targetgroup/{env.network(r)[2]}/*"
        for r in env.all_regions]
    assert all(s["Condition"] == {"StringEquals": {"aws:ResourceTag/deploy:env": "lab"}}
               for s in policy["Statement"] if s["Sid"] == "OnlyTheEnvironmentsOwn")


def test_keys_of_its_own_are_granted_as_ebs_uses_them_and_only_then(tmp_path):
    from deploylib import config, render
    from tests.conftest import write_config

    key = "arn:aws:kms:us-west-2:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    plain = config.load(write_config(tmp_path)).environment("lab")
    assert "kms:" not in render.iam_policy(plain)
    env = config.load(write_config(tmp_path, kms_keys=[key])).environment("lab")
    statements = json.loads(render.iam_policy(env))["Statement"]
    kms = [s for s in statements if any(a.startswith("kms:") for a in s["Action"])]
    assert all(s["Resource"] == [key] for s in kms)
    through_ec2 = next(s for s in kms if "kms:CreateGrant" in s["Action"])
    assert through_ec2["Condition"] == {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}


def test_grants_ec2_uses_for_the_caller_are_not_asked_of_the_tools_own_calls():
    """kms:CreateGrant and the rest are used by EC2 when it launches on an encrypted
    volume; the tool never calls them, and the check does not ask it to."""
    used = {a for s in POLICY["Statement"] if not iam_audit._on_callers_behalf(s)
            for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])}
    v = iam_audit.verdict(used, POLICY, calls=10, whole_suite=True)
    assert not v.failed, v


def test_run_command_is_granted_on_the_environments_instances_only_and_only_then(tmp_path):
    from deploylib import config, render
    from tests.conftest import write_config

    plain = config.load(write_config(tmp_path)).environment("lab")
    assert "ssm:SendCommand" not in render.iam_policy(plain)
    assert "ssm:UpdateInstanceInformation" not in render.instance_policy(plain)
    env = config.load(write_config(tmp_path, transport="ssm",
                                   artifact_bucket="team-artifacts")).environment("lab")
    statements = {s["Sid"]: s for s in json.loads(render.iam_policy(env))["Statement"]}
    on_hosts = statements["RunCommandOnTheEnvironmentsInstances"]
    assert on_hosts["Resource"] == "arn:aws:ec2:*:*:instance/*"
    assert on_hosts["Condition"] == {"StringEquals": {"ssm:resourceTag/deploy:env": "lab"}}
    assert statements["RunCommandDocument"]["Resource"] == \
        "arn:aws:ssm:*::document/AWS-RunShellScript"
    assert statements["RunCommandOutput"]["Resource"] == \
        "arn:aws:s3:::team-artifacts/runcommand/lab/*"
    agent = {s["Sid"]: s for s in json.loads(render.instance_policy(env))["Statement"]}
    assert agent["RunCommandOutput"] == {**statements["RunCommandOutput"],
                                         "Action": ["s3:PutObject"]}
    assert "ec2messages:GetMessages" in agent["SsmAgent"]["Action"]
