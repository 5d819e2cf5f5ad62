"""deploylib.lab.iam: the lab holds the tool to its policy as IAM would.

First the evaluation itself (pure), then a moto server with the enforcing middleware in
front, spoken to over HTTP with the deployer's and the administrator's keys.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from deploylib import aws, render
from deploylib.errors import CloudError, PermissionDenied
from deploylib.lab import iam

POLICY = {"Statement": [
    {"Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:PutParameter"],
     "Resource": "arn:aws:ssm:*:*:parameter/deploylib/*"},
    {"Effect": "Allow", "Action": "ec2:Describe*", "Resource": "*"},
    {"Effect": "Allow", "Action": "s3:GetObject",
     "Resource": "arn:aws:s3:::artifacts-iam/releases/*"},
    {"Effect": "Deny", "Action": "ec2:DescribeImages", "Resource": "*"},
    {"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "*",
     "Condition": {"StringEquals": {"aws:RequestTag/deploy:env": "lab"}}},
]}


def test_an_allow_must_match_action_and_resource():
    assert iam.allowed(POLICY, "ssm:PutParameter", "arn:aws:ssm:us-east-1:1:parameter/deploylib/x")
    assert not iam.allowed(POLICY, "ssm:PutParameter", "arn:aws:ssm:us-east-1:1:parameter/other")
    assert not iam.allowed(POLICY, "ssm:DeleteParameter",
                           "arn:aws:ssm:us-east-1:1:parameter/deploylib/x")
    assert iam.allowed(POLICY, "s3:GetObject", "arn:aws:s3:::artifacts-iam/releases/1.0.tar.gz")
    assert not iam.allowed(POLICY, "s3:GetObject", "arn:aws:s3:::artifacts-iam/secrets/key")


def test_action_wildcards_ignore_case_and_an_explicit_deny_wins():
    assert iam.allowed(POLICY, "ec2:describeinstances", "*")
    assert not iam.allowed(POLICY, "ec2:DescribeImages", "*")


def test_tag_conditions_are_evaluated_and_any_other_never_allows():
    assert not iam.allowed(POLICY, "ec2:RunInstances", "*")  # no tags given
    assert iam.allowed(POLICY, "ec2:RunInstances", "*", {"aws:RequestTag/deploy:env": "lab"})
    assert not iam.allowed(POLICY, "ec2:RunInstances", "*",
                           {"aws:RequestTag/deploy:env": "prod"})
    other = {"Statement": [{"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "*",
                            "Condition": {"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}]}
    assert not iam.allowed(other, "ec2:RunInstances", "*", {"aws:SourceIp": "10.0.0.1"})
    deny = {"Statement": [{"Effect": "Allow", "Action": "ec2:*", "Resource": "*"},
                          {"Effect": "Deny", "Action": "ec2:*", "Resource": "*",
                           "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}
    assert not iam.allowed(deny, "ec2:DescribeImages", "*")  # a Deny it cannot evaluate


def test_a_key_of_many_values_is_held_to_its_set_operator():
    """aws:TagKeys holds every key a request writes: ForAllValues wants each of them among
    the allowed (none written: met, as in IAM), ForAnyValue one; without a set operator
    the lab cannot say and refuses. dynamodb:LeadingKeys is the item's partition key."""
    only = {"Statement": [{"Effect": "Allow", "Action": "ec2:CreateTags", "Resource": "*",
                           "Condition": {"ForAllValues:StringEquals": {
                               "aws:TagKeys": ["deploy:retiring"]}}}]}
    assert iam.allowed(only, "ec2:CreateTags", "*", {"aws:TagKeys": ("deploy:retiring",)})
    assert not iam.allowed(only, "ec2:CreateTags", "*",
                           {"aws:TagKeys": ("deploy:retiring", "deploy:env")})
    anyof = {"Statement": [{**only["Statement"][0], "Condition": {
        "ForAnyValue:StringLike": {"aws:TagKeys": ["deploy:*"]}}}]}
    assert iam.allowed(anyof, "ec2:CreateTags", "*", {"aws:TagKeys": ("Name", "deploy:env")})
    assert not iam.allowed(anyof, "ec2:CreateTags", "*", {"aws:TagKeys": ("Name",)})
    plain = {"Statement": [{**only["Statement"][0], "Condition": {
        "StringEquals": {"aws:TagKeys": "deploy:retiring"}}}]}
    assert not iam.allowed(plain, "ec2:CreateTags", "*", {"aws:TagKeys": ("deploy:retiring",)})
    auth = "AWS4-HMAC-SHA256 Credential=lab/20261201/eu-west-1/dynamodb/aws4_request, Sig"
    item = iam.call({"HTTP_AUTHORIZATION": auth, "REQUEST_METHOD": "POST", "PATH_INFO": "/",
                     "QUERY_STRING": "", "HTTP_X_AMZ_TARGET": "DynamoDB_20120810.UpdateItem"},
                    json.dumps({"TableName": "locks", "Key": {"env": {"S": "prod"}}}).encode())
    assert item.context[item.resources[0]] == {"dynamodb:LeadingKeys": "prod"}


def test_requests_are_read_as_iam_reads_them():
    def env(**kw):
        return {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", **kw}

    auth = "AWS4-HMAC-SHA256 Credential=lab/20261201/eu-west-1/{}/aws4_request, Sig"
    ssm = iam.call(env(HTTP_AUTHORIZATION=auth.format("ssm"),
                       HTTP_X_AMZ_TARGET="AmazonSSM.GetParametersByPath"),
                   json.dumps({"Path": "/deploylib/lab/hostkeys"}).encode())
    assert ssm == iam.Call("lab", "eu-west-1", "ssm:GetParametersByPath", (
        f"arn:aws:ssm:eu-west-1:{iam.ACCOUNT}:parameter/deploylib/lab/hostkeys",))
    table = iam.call(env(HTTP_AUTHORIZATION=auth.format("dynamodb"),
                         HTTP_X_AMZ_TARGET="DynamoDB_20120810.PutItem"),
                     b'{"TableName": "locks"}')
    assert table.resources == (f"arn:aws:dynamodb:eu-west-1:{iam.ACCOUNT}:table/locks",)
    ec2 = iam.call(env(REQUEST_METHOD="POST", HTTP_AUTHORIZATION=auth.format("ec2")),
                   b"Action=DescribeImages&Version=2016-11-15")
    assert (ec2.action, ec2.resources) == ("ec2:DescribeImages", ("*",))
    run = iam.call(env(REQUEST_METHOD="POST", HTTP_AUTHORIZATION=auth.format("ec2")), (
        b"Action=RunInstances&ImageId=ami-0000000a&SubnetId=subnet-0000000b"
        b"&SecurityGroupId.1=sg-0000000c&TagSpecification.1.ResourceType=instance"
        b"&TagSpecification.1.Tag.1.Key=deploy%3Aenv&TagSpecification.1.Tag.1.Value=lab"))
    made = [f"arn:aws:ec2:eu-west-1:{iam.ACCOUNT}:{kind}/*"
            for kind in ("instance", "volume", "network-interface")]
    assert run.resources == ("arn:aws:ec2:eu-west-1::image/ami-0000000a",
                             f"arn:aws:ec2:eu-west-1:{iam.ACCOUNT}:subnet/subnet-0000000b",
                             f"arn:aws:ec2:eu-west-1:{iam.ACCOUNT}:security-group/sg-0000000c",
                             *made)
    given = {"aws:RequestTag/deploy:env": "lab", "aws:TagKeys": ("deploy:env",)}
    assert run.context[made[0]] == given
    assert run.also == tuple(("ec2:CreateTags", arn, {**given, "ec2:CreateAction": "RunInstances"})
                             for arn in made)
    abort = iam.call(env(REQUEST_METHOD="DELETE", PATH_INFO="/artifacts-iam/releases/1.tar.gz",
                         QUERY_STRING="uploadId=7", HTTP_AUTHORIZATION=auth.format("s3")), b"")
    assert (abort.action, abort.resources) == ("s3:AbortMultipartUpload",
                                               ("arn:aws:s3:::artifacts-iam/releases/1.tar.gz",))
    head_bucket = iam.call(env(REQUEST_METHOD="HEAD", PATH_INFO="/artifacts-iam",
                               HTTP_AUTHORIZATION=auth.format("s3")), b"")
    assert (head_bucket.action, head_bucket.resources) == ("s3:ListBucket",
                                                           ("arn:aws:s3:::artifacts-iam",))
    presigned = iam.call(env(PATH_INFO="/artifacts-iam/releases/1.tar.gz", QUERY_STRING=(
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=lab%2F20200101%2Fus-east-1%2Fs3"
        "%2Faws4_request&X-Amz-Date=20200101T000000Z&X-Amz-Expires=60&X-Amz-Signature=00")),
        b"")
    assert presigned.key_id == "lab" and presigned.action == "s3:GetObject"
    assert presigned.presigned_expired
    assert iam.call(env(), b"") is None  # unsigned: nobody to hold to a policy


def _policy(lab_dir, policy) -> None:
    (lab_dir / iam.POLICY_FILE).write_text(json.dumps(policy))


def test_the_deployer_is_refused_in_each_services_own_words(enforced_aws):
    deployer, admin, lab_dir = enforced_aws
    _policy(lab_dir, POLICY)
    with pytest.raises(PermissionDenied) as refused:
        with aws.calling("parameter /other", "grant it"):
            deployer.ssm().put_parameter(Name="/other", Value="x", Type="String")
    assert refused.value.code == "AccessDeniedException"
    assert "is not authorized to perform: ssm:PutParameter on resource: " \
           f"arn:aws:ssm:us-east-1:{iam.ACCOUNT}:parameter/other" in str(refused.value)
    with pytest.raises(PermissionDenied) as refused:
        with aws.calling("instances", "grant it"):
            deployer.ec2("us-east-1").describe_images(Owners=["self"])
    assert refused.value.code == "UnauthorizedOperation"
    deployer.ssm().put_parameter(Name="/deploylib/lab/x", Value="1", Type="String")
    assert deployer.ssm().get_parameter(Name="/deploylib/lab/x")["Parameter"]["Value"] == "1"
    # the administrator (the lab's own calls, the tests' set-up) is not held
    admin.ssm().put_parameter(Name="/other", Value="x", Type="String")
    admin.ec2("us-east-1").describe_images(Owners=["self"])


def test_a_narrowed_policy_takes_effect_at_once(enforced_aws):
    deployer, _, lab_dir = enforced_aws
    _policy(lab_dir, POLICY)
    deployer.ec2("us-east-1").describe_instances()
    _policy(lab_dir, {"Statement": POLICY["Statement"][:1]})
    with pytest.raises(CloudError):
        with aws.calling("instances", "grant it"):
            deployer.ec2("us-east-1").describe_instances()


def test_a_missing_key_is_403_without_list_bucket_and_404_with_it(enforced_aws):
    deployer, admin, lab_dir = enforced_aws
    admin.s3().create_bucket(Bucket="artifacts-iam")
    _policy(lab_dir, POLICY)
    with pytest.raises(PermissionDenied):
        aws.s3.published(deployer.s3(), "artifacts-iam", "releases/1.0.tar.gz")
    _policy(lab_dir, {"Statement": [*POLICY["Statement"], {
        "Effect": "Allow", "Action": "s3:ListBucket", "Resource": "arn:aws:s3:::artifacts-iam"}]})
    assert aws.s3.published(deployer.s3(), "artifacts-iam", "releases/1.0.tar.gz") is None


def test_a_presigned_url_carries_its_signers_permissions_until_it_expires(enforced_aws):
    deployer, admin, lab_dir = enforced_aws
    admin.s3().create_bucket(Bucket="artifacts-iam")
    for key in ("releases/1.0.tar.gz", "private/key"):
        admin.s3().put_object(Bucket="artifacts-iam", Key=key, Body=b"bytes")
    _policy(lab_dir, POLICY)
    url = aws.s3.presign(deployer.s3(), "artifacts-iam", "releases/1.0.tar.gz", expires=60)
    assert urllib.request.urlopen(url, timeout=5).read() == b"bytes"
    for url in (aws.s3.presign(deployer.s3(), "artifacts-iam", "private/key", expires=60),
                aws.s3.presign(deployer.s3(), "artifacts-iam", "releases/1.0.tar.gz", expires=-1)):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 403


def test_the_environments_own_policy_is_what_the_lab_holds_the_tool_to(tmp_path):
    """The lab is started with exactly what `invoke policy` prints."""
    from deploylib import config
    from deploylib.lab import control
    from tests.conftest import write_config

    env = config.load(write_config(tmp_path)).environment("lab")
    assert control.spec_for(env)["policy"] == render.iam_policy(env)


def _launch(clients, env_tag: str | None) -> str:
    ec2 = clients.ec2("us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    tags = [{"ResourceType": "instance", "Tags": [{"Key": "deploy:env", "Value": env_tag}]}]
    return ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                             TagSpecifications=tags if env_tag else [],
                             )["Instances"][0]["InstanceId"]


def test_the_policy_lets_the_tool_touch_only_its_environments_resources(enforced_aws,
                                                                        tmp_path):
    """`invoke policy`'s EC2 writes are scoped by tag: the tool launches only what it tags
    for its environment, and stops, tags or terminates only what carries that tag — an
    instance of another environment, or one not tagged, is refused in EC2's words."""
    from deploylib import config
    from tests.conftest import write_config

    deployer, admin, lab_dir = enforced_aws
    env = config.load(write_config(tmp_path)).environment("lab")
    (lab_dir / "iam-policy.json").write_text(render.iam_policy(env))
    ours = _launch(deployer, "lab")
    with pytest.raises(PermissionDenied, match="ec2:RunInstances on resource: arn:aws:ec2:"
                       f"us-east-1:{iam.ACCOUNT}:instance/"):
        with aws.calling("instances", "grant it"):
            _launch(deployer, "prod")
    theirs, untagged = _launch(admin, "prod"), _launch(admin, None)
    ec2 = deployer.ec2("us-east-1")
    for instance in (theirs, untagged):
        for write in (lambda i: ec2.terminate_instances(InstanceIds=[i]),
                      lambda i: ec2.create_tags(Resources=[i], Tags=[
                          {"Key": "deploy:env", "Value": "lab"}])):
            with pytest.raises(PermissionDenied) as refused:
                with aws.calling(instance, "grant it"):
                    write(instance)
            assert refused.value.code == "UnauthorizedOperation"
            assert f"instance/{instance}" in str(refused.value)
    # Its own, retagged into another environment (or its provenance rewritten): refused;
    # after creation the one tag the tool writes is deploy:retiring.
    for tags in ([{"Key": "deploy:env", "Value": "prod"}], [{"Key": "deploy:layers",
                                                             "Value": "0"}],
                 [{"Key": "deploy:retiring", "Value": "x"}, {"Key": "deploy:run",
                                                              "Value": "x"}]):
        with pytest.raises(PermissionDenied, match="ec2:CreateTags"):
            with aws.calling(ours, "grant it"):
                ec2.create_tags(Resources=[ours], Tags=tags)
    ec2.create_tags(Resources=[ours], Tags=[{"Key": "deploy:retiring", "Value": "x"}])
    ec2.terminate_instances(InstanceIds=[ours])
    states = {i["InstanceId"]: i["State"]["Name"] for r in admin.ec2("us-east-1")
              .describe_instances()["Reservations"] for i in r["Instances"]}
    assert states[ours] in ("shutting-down", "terminated")
    assert states[theirs] == states[untagged] == "running"


def test_the_tool_registers_hosts_only_in_its_environments_target_groups(enforced_aws,
                                                                         tmp_path):
    from deploylib import config
    from tests.conftest import write_config

    deployer, admin, lab_dir = enforced_aws
    env = config.load(write_config(tmp_path)).environment("lab")
    (lab_dir / "iam-policy.json").write_text(render.iam_policy(env))
    vpc = admin.ec2("us-east-1").describe_vpcs()["Vpcs"][0]["VpcId"]
    elb = admin.elbv2("us-east-1")
    ours, theirs = (elb.create_target_group(Name=name, Protocol="HTTP", Port=80, VpcId=vpc)[
        "TargetGroups"][0]["TargetGroupArn"] for name in (env.network("us-east-1")[2],
                                                          "another-team-web"))
    host = _launch(deployer, "lab")
    deployer.elbv2("us-east-1").register_targets(TargetGroupArn=ours,
                                                 Targets=[{"Id": host}])
    with pytest.raises(PermissionDenied, match="elasticloadbalancing:RegisterTargets on "
                       f"resource: {theirs}"):
        with aws.calling("target group", "grant it"):
            deployer.elbv2("us-east-1").register_targets(TargetGroupArn=theirs,
                                                         Targets=[{"Id": host}])
    assert elb.describe_target_health(TargetGroupArn=theirs)["TargetHealthDescriptions"] == []



def test_an_environments_policy_reaches_none_of_another_environments_data(enforced_aws,
                                                                          tmp_path):
    """Two environments in one account: the policy `invoke policy` renders for one (here
    the lab) neither writes the other's record or host keys, nor publishes a release
    under its prefix, nor takes or breaks its lock — each refused in the service's words —
    while its own are as before."""
    from deploylib import config, lock
    from tests.conftest import write_config

    deployer, admin, lab_dir = enforced_aws
    env = config.load(write_config(tmp_path)).environment("lab")
    (lab_dir / "iam-policy.json").write_text(render.iam_policy(env))
    admin.s3().create_bucket(Bucket=env.artifact_bucket)
    admin.dynamodb().create_table(
        TableName=env.lock_table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "env", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "env", "KeyType": "HASH"}])
    ssm, s3, ddb = deployer.ssm(), deployer.s3(), deployer.dynamodb()
    theirs = [
        lambda: ssm.put_parameter(Name="/deploylib/prod/live", Value="{}", Type="String",
                                  Overwrite=True),
        lambda: ssm.put_parameter(Name="/deploylib/prod/hostkeys/us-east-1/i-0abc",
                                  Value="ssh-ed25519 AAAA", Type="String"),
        lambda: s3.put_object(Bucket=env.artifact_bucket, Key="releases/prod/9.9.9.tar.gz",
                              Body=b"x"),
        lambda: lock.acquire(ddb, env.lock_table, "prod", "20261207T120000-abc123", ttl=60),
        lambda: lock.break_lock(ddb, env.lock_table, "prod"),
    ]
    for write in theirs:
        with pytest.raises(PermissionDenied) as refused:
            with aws.calling("another environment's", "it is not this one's"):
                write()
        assert "is not authorized to perform" in str(refused.value) \
            or "Access Denied" in str(refused.value)
    ssm.put_parameter(Name="/deploylib/lab/hostkeys/us-east-1/i-0abc",
                      Value="ssh-ed25519 AAAA", Type="String")
    s3.put_object(Bucket=env.artifact_bucket, Key="releases/lab/1.0.0.tar.gz", Body=b"x")
    taken = lock.acquire(ddb, env.lock_table, "lab", "20261207T120000-abc123", ttl=60)
    assert lock.read(ddb, env.lock_table, "lab")["fence"] == taken["fence"]


def test_what_the_lab_cannot_read_it_refuses_and_what_a_call_implies_it_checks(tmp_path):
    """An EC2 id of a kind it does not know is no resource a policy grants; launching
    with a profile passes its role (iam:PassRole, for EC2); a copy reads its source; a
    virtual-host S3 request names the bucket of its host."""
    from deploylib import config
    from tests.conftest import write_config

    policy = json.loads(render.iam_policy(config.load(write_config(tmp_path)).environment("lab")))
    auth = "AWS4-HMAC-SHA256 Credential=lab/20261201/us-east-1/{}/aws4_request, Sig"

    def env(service: str, **kw):
        return {"REQUEST_METHOD": "POST", "PATH_INFO": "/", "QUERY_STRING": "",
                "HTTP_AUTHORIZATION": auth.format(service), **kw}

    odd = iam.call(env("ec2"), b"Action=TerminateInstances&InstanceId.1=x-0123")
    assert odd.resources == (f"arn:aws:ec2:us-east-1:{iam.ACCOUNT}:unknown/x-0123",)
    assert not iam.allowed(policy, odd.action, odd.resources[0], odd.context[odd.resources[0]])
    run = iam.call(env("ec2"), b"Action=RunInstances&ImageId=ami-0000000a"
                               b"&IamInstanceProfile.Name=deploy-instance")
    (passes,) = [a for a in run.also if a[0] == "iam:PassRole"]
    assert passes == ("iam:PassRole", f"arn:aws:iam::{iam.ACCOUNT}:role/deploy-instance",
                      {"iam:PassedToService": "ec2.amazonaws.com"})
    assert iam.allowed(policy, *passes)
    # a launch from a launch template is authorised on the template too
    templated = iam.call(env("ec2"), b"Action=RunInstances&LaunchTemplate.LaunchTemplateId="
                                     b"lt-0123456789abcdef0&LaunchTemplate.Version=3")
    assert f"arn:aws:ec2:us-east-1:{iam.ACCOUNT}:launch-template/lt-0123456789abcdef0" in \
        templated.resources
    assert not iam.allowed(policy, "iam:PassRole", f"arn:aws:iam::{iam.ACCOUNT}:role/admin",
                           {"iam:PassedToService": "ec2.amazonaws.com"})
    copy = iam.call(env("s3", REQUEST_METHOD="PUT", PATH_INFO="/deploylab-artifacts/releases/"
                        "lab/2.tar.gz", HTTP_X_AMZ_COPY_SOURCE="/other-bucket/secret.tar.gz"),
                    b"")
    assert copy.also == (("s3:GetObject", "arn:aws:s3:::other-bucket/secret.tar.gz", {}),)
    assert not iam.allowed(policy, *copy.also[0])
    hosted = iam.call(env("s3", REQUEST_METHOD="GET", PATH_INFO="/releases/lab/1.tar.gz",
                          HTTP_HOST="deploylab-artifacts.s3.us-east-1.amazonaws.com"), b"")
    assert hosted.resources == ("arn:aws:s3:::deploylab-artifacts/releases/lab/1.tar.gz",)


def test_run_command_reaches_only_instances_tagged_for_the_environment(tmp_path):
    from deploylib import config
    from tests.conftest import write_config

    env = config.load(write_config(tmp_path, transport="ssm")).environment("lab")
    policy = json.loads(render.iam_policy(env))
    instance = "arn:aws:ec2:us-east-1:123456789012:instance/i-0123456789abcdef0"
    document = "arn:aws:ssm:us-east-1::document/AWS-RunShellScript"
    assert iam.allowed(policy, "ssm:SendCommand", document)
    assert iam.allowed(policy, "ssm:SendCommand", instance,
                           {"ssm:resourceTag/deploy:env": "lab"})
    assert not iam.allowed(policy, "ssm:SendCommand", instance,
                               {"ssm:resourceTag/deploy:env": "prod"})
    assert not iam.allowed(policy, "ssm:SendCommand", instance, {})
    # a document of the account's own (anything it says, as root) is not granted
    assert not iam.allowed(policy, "ssm:SendCommand",
                               "arn:aws:ssm:us-east-1:123456789012:document/Anything")
