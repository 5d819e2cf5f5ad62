"""The AWS boundary: clients built once, and every failure of a call — an AWS error
answer, missing or rejected credentials, no permission, no route to the endpoint —
leaving as one of our typed errors with the resource and the fix."""

from __future__ import annotations

import re
import socket

import pytest

from deploylib import aws
from deploylib.errors import CloudError, CredentialsError, PermissionDenied, Unreachable
from tests.conftest import REPO


def test_clients_use_standard_retries_and_are_built_once(aws_clients):
    ec2 = aws_clients.ec2("eu-west-1")
    assert aws_clients.ec2("eu-west-1") is ec2
    assert ec2.meta.config.retries["mode"] == "standard"
    assert ec2.meta.region_name == "eu-west-1"


def test_aws_max_attempts_is_honoured(monkeypatch):
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    clients = aws.AwsClients("us-east-1", credentials={"aws_access_key_id": "a",
                                                       "aws_secret_access_key": "b"})
    assert clients.s3().meta.config.retries["total_max_attempts"] == 2


def test_an_error_answer_carries_its_code_the_resource_and_the_fix(aws_clients):
    with pytest.raises(CloudError) as info:
        aws.ec2.describe(aws_clients.ec2("us-east-1"), "us-east-1", ["i-0123456789abcdef0"])
    err = info.value
    assert err.code == "InvalidInstanceID.NotFound"
    assert err.line().startswith("instances i-0123456789abcdef0 in us-east-1: ")
    assert "Fix: check the run state names instances that still exist" in err.line()


@pytest.mark.parametrize("code,kind,words", [
    ("ExpiredToken", CredentialsError, "have expired"),
    ("InvalidClientTokenId", CredentialsError, "not valid"),
    ("UnauthorizedOperation", PermissionDenied, "invoke policy"),
    ("AccessDenied", PermissionDenied, "RunInstances"),
    ("RequestLimitExceeded", CloudError, "throttling"),
])
def test_what_went_wrong_decides_the_error_and_its_fix(code, kind, words):
    from botocore.exceptions import ClientError

    answer = {"Error": {"Code": code, "Message": "from AWS"}}
    with pytest.raises(kind) as info, aws.calling("image ami-1 in us-east-1", "the default"):
        raise ClientError(answer, "RunInstances")
    assert words in info.value.line() and info.value.code == code
    assert "\n" not in info.value.line()


def botocore_exceptions() -> list[type[Exception]]:
    """Every exception botocore defines, and boto3's."""
    import inspect

    import boto3.exceptions
    import botocore.exceptions

    found = {c for module in (botocore.exceptions, boto3.exceptions)
             for c in vars(module).values()
             if inspect.isclass(c) and issubclass(c, botocore.exceptions.BotoCoreError
                                                  | boto3.exceptions.Boto3Error)}
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def raised(cls: type[Exception]) -> Exception:
    """An instance of `cls` as botocore raises it: what its constructor asks for and its
    message's fields filled."""
    import inspect
    import string

    fields = {f for _, f, _, _ in string.Formatter().parse(getattr(cls, "fmt", "")) if f}
    if cls.__init__ is Exception.__init__:  # a plain exception: a message
        return cls("boto3 says no")
    args: dict[str, object] = {}
    for name, p in inspect.signature(cls).parameters.items():
        if p.kind is p.VAR_KEYWORD:
            args.update({f: f"<{f}>" for f in fields if f not in args})
        elif p.kind is not p.VAR_POSITIONAL and p.default is p.empty:
            args[name] = f"<{name}>"
    return cls(**args)


@pytest.mark.parametrize("cls", botocore_exceptions(), ids=lambda c: c.__name__)
def test_every_botocore_exception_leaves_as_one_line_with_a_fix_and_its_cause(cls):
    """Like httpx's map of its transports' exceptions: whatever botocore or boto3 raise
    inside the boundary comes out as one of ours, one line with a fix, botocore's own
    exception kept as the cause (a traceback shows it; the operator reads the line)."""
    import botocore.exceptions as b

    from deploylib.errors import AwsConfigError, DeployError

    exc = raised(cls)
    with pytest.raises(DeployError) as info, aws.calling("thing t-1", "do the usual"):
        raise exc
    line = info.value.line()
    assert "\n" not in line and line.startswith("thing t-1: ") and " Fix: " in line
    assert info.value.__cause__ is exc
    family = {b.NoCredentialsError: CredentialsError, b.SSOError: CredentialsError,
              b.CredentialRetrievalError: CredentialsError, b.ConnectionError: Unreachable,
              b.HTTPClientError: Unreachable, b.NoRegionError: AwsConfigError,
              b.ProfileNotFound: AwsConfigError}
    for kind, ours in family.items():
        if issubclass(cls, kind):
            assert isinstance(info.value, ours), (cls, type(info.value))


def test_an_aws_answer_wrapped_by_boto3_is_read_as_the_answer():
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    answer = ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "PutObject")
    with pytest.raises(PermissionDenied) as info, aws.calling("s3://b/k", "the default"):
        try:
            raise answer
        except ClientError as exc:
            raise S3UploadFailedError("upload failed") from exc
    assert "PutObject" in info.value.line() and info.value.code == "AccessDenied"


def test_no_credentials_anywhere_is_one_line_saying_how_to_give_them(monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                 "AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.aws
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # never ask 169.254.169.254
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    clients = aws.AwsClients("us-east-1", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(CredentialsError) as info:
        aws.ssm.read_record(clients.ssm(), "/deploylib/prod/live")
    line = info.value.line()
    assert line.startswith("parameter /deploylib/prod/live: no usable AWS credentials")
    assert "AWS_PROFILE" in line and "withCredentials" in line


def test_an_endpoint_nothing_answers_is_unreachable(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clients = aws.AwsClients("us-east-1", endpoint_url=f"http://127.0.0.1:{port}",
                             credentials={"aws_access_key_id": "a",
                                          "aws_secret_access_key": "b"}, max_attempts=1)
    with pytest.raises(Unreachable) as info:
        aws.elb.target_states(clients.elbv2("us-east-1"), "us-east-1", "arn:aws:x")
    assert f"127.0.0.1:{port}" in info.value.line() and "VPN" in info.value.line()


def test_nothing_outside_the_boundary_sees_botocores_exceptions():
    pattern = re.compile(r"botocore\.exceptions|\bClientError|boto3\.exceptions")
    offenders = [str(p.relative_to(REPO)) for p in (REPO / "deploylib").rglob("*.py")
                 if p.parent.name != "aws" and pattern.search(p.read_text())]
    offenders += [str(p.relative_to(REPO)) for p in (REPO / "deploylib/aws").glob("*.py")
                  if p.name != "__init__.py" and pattern.search(p.read_text())]
    assert offenders == []


def test_server_groups_are_numbered_past_the_highest():
    names = ["app-lab-v001", "app-lab-v010", "app-lab-v002", "other-v099", "app-lab-canary"]
    assert aws.autoscaling.next_name("app-lab", names) == "app-lab-v011"
    assert aws.autoscaling.next_name("app-lab", []) == "app-lab-v001"
    assert aws.autoscaling.number_of("app-lab-v1000") == 1000
    assert aws.autoscaling.number_of("app-lab") is None


# -- whose credentials: a profile, a role assumed from them, the account they act in --------

ROLE = "arn:aws:iam::123456789012:role/deploy-production"


def _may_assume(directory, *roles: str) -> None:
    """Hold the deployer (the lab's key) to a policy that lets it assume only `roles`."""
    import json

    (directory / "iam-policy.json").write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "sts:AssumeRole", "Resource": list(roles)}]}))


def _clients_as(deployer: aws.AwsClients, directory, identity: aws.Identity
                ) -> aws.AwsClients:
    from deploylib.lab import credentials

    return aws.AwsClients("us-east-1", endpoint_url=deployer.endpoint_url,
                          credentials=credentials("deployer", directory), max_attempts=0,
                          path_style=True, identity=identity)


def test_a_profile_that_is_not_there_is_one_line_naming_the_key(tmp_path, monkeypatch):
    from deploylib.errors import AwsConfigError

    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with pytest.raises(AwsConfigError) as info:
        aws.AwsClients("us-east-1", identity=aws.Identity(env="production", profile="nope"))
    line = info.value.line()
    assert line.startswith("environments.production.aws_profile: the AWS profile 'nope'")
    assert "aws configure" in line and info.value.exit_code == 2
    # AWS_PROFILE set to one that is not there: the same, naming the variable
    monkeypatch.setenv("AWS_PROFILE", "gone")
    with pytest.raises(AwsConfigError) as info:
        aws.AwsClients("us-east-1")
    assert info.value.line().startswith("AWS_PROFILE: the AWS profile 'gone'")


def test_a_role_the_deployer_may_not_assume_is_one_line_and_nothing_else_is_asked(enforced_aws):
    from deploylib.errors import AwsConfigError

    deployer, _, directory = enforced_aws
    _may_assume(directory, "arn:aws:iam::123456789012:role/another")
    clients = _clients_as(deployer, directory, aws.Identity(env="production", role_arn=ROLE))
    with pytest.raises(AwsConfigError) as info:
        clients.check_identity()
    line = info.value.line()
    assert line.startswith(f"environments.production.role_arn: the role {ROLE} could not be "
                           "assumed")
    assert "sts:AssumeRole" in line and "trust policy" in line


def test_the_role_is_assumed_in_a_session_named_after_the_run(enforced_aws):
    deployer, _, directory = enforced_aws
    _may_assume(directory, ROLE)
    clients = _clients_as(deployer, directory, aws.Identity(
        env="production", role_arn=ROLE, session_name="deploylib-20261207T040000-abc123",
        account_id="123456789012"))
    assert clients.check_identity() == "123456789012"
    who = clients.client("sts").get_caller_identity()["Arn"]
    assert who == ("arn:aws:sts::123456789012:assumed-role/deploy-production/"
                   "deploylib-20261207T040000-abc123")
    assert clients.credentials().method == "assume-role"  # renewed before it ends


def test_a_role_that_allows_shorter_sessions_gets_its_own_hour(enforced_aws):
    import json

    deployer, _, directory = enforced_aws
    _may_assume(directory, ROLE)
    (directory / "faults.json").write_text(json.dumps({"rules": [
        {"action": "AssumeRole", "error": "ValidationError", "times": 1,
         "message": "The requested DurationSeconds exceeds the MaxSessionDuration set for "
                    "this role."}]}))
    clients = _clients_as(deployer, directory,
                          aws.Identity(role_arn=ROLE, session_seconds=8100))
    assert clients.check_identity() == "123456789012"
    assert json.loads((directory / "faults-hits.json").read_text())  # the refusal was met


def test_credentials_of_another_account_are_refused_before_anything_is_written(enforced_aws):
    from deploylib.errors import AwsConfigError

    deployer, _, directory = enforced_aws
    clients = _clients_as(deployer, directory,
                          aws.Identity(env="production", account_id="999999999999"))
    with pytest.raises(AwsConfigError) as info:
        clients.check_identity()
    assert info.value.line().startswith(
        "environments.production.account_id: the AWS credentials act in account "
        "123456789012, not in 999999999999")
    assert info.value.exit_code == 2


def test_a_role_session_name_is_what_aws_allows():
    assert aws.session_name("deploylib-20261207T040000-abc123") == \
        "deploylib-20261207T040000-abc123"
    assert aws.session_name("deploylib-prod eu/1") == "deploylib-prod-eu-1"
    assert len(aws.session_name("x" * 100)) == 64
    assert aws.session_name("") == "deploylib"
