"""The lab's endpoint answers only requests signed with a key it knows: the lab's own
(made afresh per lab), IAM users' access keys and assumed roles' sessions — each
signature computed again from the request as it arrived."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
import uuid

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from deploylib.aws import AwsClients
from deploylib.lab import sigv4
from tests.conftest import held_server


@pytest.fixture
def lab_endpoint(tmp_path):
    """(endpoint, the lab's keys by holder, clients of the administrator)"""
    server, endpoint, keys = held_server(tmp_path)
    try:
        yield endpoint, keys, AwsClients("us-east-1", endpoint_url=endpoint,
                                         credentials=keys["admin"], max_attempts=0,
                                         path_style=True)
    finally:
        server.stop()


def _clients(endpoint: str, **credentials: str) -> AwsClients:
    return AwsClients("us-east-1", endpoint_url=endpoint, credentials=credentials,
                      max_attempts=0, path_style=True)


def _code(attempt) -> tuple[str, str]:
    with pytest.raises(ClientError) as refused:
        attempt()
    return refused.value.response["Error"]["Code"], refused.value.response["Error"]["Message"]


def _send(request: AWSRequest) -> tuple[int, bytes]:
    prepared = request.prepare()
    try:
        with urllib.request.urlopen(urllib.request.Request(
                prepared.url, data=prepared.body or None, method=prepared.method,
                headers=dict(prepared.headers)), timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_every_service_answers_what_the_labs_keys_sign(lab_endpoint):
    endpoint, keys, admin = lab_endpoint
    mark = uuid.uuid4().hex[:12]  # (moto's state is the process's: names of this test's own)
    s3 = admin.s3()
    s3.create_bucket(Bucket=f"signed-{mark}")
    # a body, and a key S3 signs as sent (characters a path must encode)
    key = "releases/a b+c=d/1.0.0.tar.gz"
    s3.put_object(Bucket=f"signed-{mark}", Key=key, Body=b"x" * 70000)
    assert s3.get_object(Bucket=f"signed-{mark}", Key=key)["Body"].read() == b"x" * 70000
    admin.ssm().put_parameter(Name=f"/deploylib/lab/{mark}", Value="{}", Type="String")
    admin.ec2("us-west-2").describe_images(Owners=["self"], Filters=[
        {"Name": "tag:deploy:env", "Values": ["lab", "a b"]}])
    admin.dynamodb().list_tables()
    # a presigned URL, fetched as a host fetches it
    url = s3.generate_presigned_url("get_object", Params={
        "Bucket": f"signed-{mark}", "Key": key}, ExpiresIn=60)
    with urllib.request.urlopen(url, timeout=10) as answer:
        assert answer.read() == b"x" * 70000


def test_a_request_not_signed_by_a_key_the_lab_knows_is_refused_and_changes_nothing(
        lab_endpoint):
    endpoint, keys, admin = lab_endpoint
    mark = uuid.uuid4().hex[:12]  # (moto's state is the process's: names of this test's own)
    bucket, parameter = f"signed-{mark}", f"/deploylib/lab/{mark}"
    admin.s3().create_bucket(Bucket=bucket)
    wrong_secret = _clients(endpoint, aws_access_key_id=keys["admin"]["aws_access_key_id"],
                            aws_secret_access_key="lab-admin-secret")  # the old, public one
    stranger = _clients(endpoint, aws_access_key_id="AKIASTRANGER",
                        aws_secret_access_key="anything")
    assert _code(lambda: wrong_secret.ssm().put_parameter(
        Name=parameter, Value="{}", Type="String"))[0] == "SignatureDoesNotMatch"
    assert _code(lambda: wrong_secret.ec2("us-east-1").run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, UserData="id",
        TagSpecifications=[{"ResourceType": "instance", "Tags": [
            {"Key": "mark", "Value": mark}]}]))[0] == "AuthFailure"
    assert _code(lambda: stranger.s3().put_object(Bucket=bucket, Key="x", Body=b"x"))[0] \
        == "InvalidAccessKeyId"
    assert _code(lambda: stranger.dynamodb().list_tables())[0] == \
        "UnrecognizedClientException"
    assert _code(lambda: stranger.ssm().get_parameter(Name=parameter)) == (
        "InvalidClientTokenId", "The security token included in the request is invalid.")
    assert _code(lambda: admin.ssm().get_parameter(Name=parameter))[0] == "ParameterNotFound"
    assert admin.ec2("us-east-1").describe_instances(Filters=[
        {"Name": "tag:mark", "Values": [mark]}])["Reservations"] == []
    assert "Contents" not in admin.s3().list_objects_v2(Bucket=bucket)
    # no signature at all: as AWS answers an anonymous request
    for url, data, status in [(f"{endpoint}/signed/x", None, 403),
                              (f"{endpoint}/", b"Action=DescribeInstances&Version=2016-11-15",
                               403)]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=10)
        assert refused.value.code == status
        body = refused.value.read()
        assert b"AccessDenied" in body or b"MissingAuthenticationToken" in body


def test_a_signed_request_altered_on_its_way_is_refused(lab_endpoint):
    endpoint, keys, admin = lab_endpoint
    bucket = f"signed-{uuid.uuid4().hex[:12]}"
    admin.s3().create_bucket(Bucket=bucket)
    creds = Credentials(keys["admin"]["aws_access_key_id"],
                        keys["admin"]["aws_secret_access_key"])

    def signed(body: bytes, path: str = "/") -> AWSRequest:
        request = AWSRequest(method="POST", url=f"{endpoint}{path}", data=body, headers={
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        SigV4Auth(creds, "ec2", "us-east-1").add_auth(request)
        return request

    good = signed(b"Action=DescribeInstances&Version=2016-11-15")
    assert _send(good)[0] == 200
    # the same signature over another body: another request
    altered = signed(b"Action=DescribeInstances&Version=2016-11-15")
    altered.data = (b"Action=TerminateInstances&Version=2016-11-15"
                    b"&InstanceId.1=i-0123456789abcdef0")
    status, body = _send(altered)
    assert status == 401 and b"AuthFailure" in body
    # a presigned URL's signature covers its path: another key's is refused
    url = admin.s3().generate_presigned_url("get_object", Params={
        "Bucket": bucket, "Key": "a"}, ExpiresIn=60)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url.replace(f"/{bucket}/a?", f"/{bucket}/b?"), timeout=10)
    assert refused.value.code == 403 and b"SignatureDoesNotMatch" in refused.value.read()


def test_keys_made_through_the_labs_iam_and_sts_are_known_until_they_end(lab_endpoint):
    endpoint, _keys, admin = lab_endpoint
    iam = admin.client("iam")
    user = f"operator-{uuid.uuid4().hex[:12]}"
    iam.create_user(UserName=user)
    made = iam.create_access_key(UserName=user)["AccessKey"]
    operator = _clients(endpoint, aws_access_key_id=made["AccessKeyId"],
                        aws_secret_access_key=made["SecretAccessKey"])
    operator.ssm().put_parameter(Name=f"/deploylib/{user}", Value="1", Type="String")
    session = operator.client("sts").assume_role(
        RoleArn="arn:aws:iam::123456789012:role/deploy",
        RoleSessionName="operator")["Credentials"]
    role = _clients(endpoint, aws_access_key_id=session["AccessKeyId"],
                    aws_secret_access_key=session["SecretAccessKey"],
                    aws_session_token=session["SessionToken"])
    role.ssm().get_parameter(Name=f"/deploylib/{user}")
    # a session's key without its token is nothing
    bare = _clients(endpoint, aws_access_key_id=session["AccessKeyId"],
                    aws_secret_access_key=session["SecretAccessKey"])
    assert _code(lambda: bare.ssm().get_parameter(Name=f"/deploylib/{user}"))[0] == \
        "InvalidClientTokenId"
    iam.delete_access_key(UserName=user, AccessKeyId=made["AccessKeyId"])
    assert _code(lambda: operator.ssm().get_parameter(Name=f"/deploylib/{user}"))[0] == \
        "InvalidClientTokenId"


def test_a_session_past_its_end_and_a_request_dated_far_from_now_are_refused():
    """(the clock moved, not waited for: `check` is given the time)"""
    creds = Credentials("ASIALAB", "secret", "token")
    request = AWSRequest(method="GET", url="http://127.0.0.1:1/signed/k",
                         headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    from botocore.auth import S3SigV4Auth

    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(request)
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/signed/k", "RAW_URI": "/signed/k",
               "QUERY_STRING": "", "HTTP_HOST": "127.0.0.1:1",
               **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in request.headers.items()}}
    now = time.time()

    def known(expires: float):
        return lambda key: sigv4.Secret("secret", "token", expires) if key == "ASIALAB" else None

    assert sigv4.check(environ, b"", known(now + 60), now) is None
    assert sigv4.check(environ, b"", known(now - 1), now).code == "ExpiredToken"
    assert sigv4.check(environ, b"", known(now + 3600), now + 16 * 60).code == \
        "RequestTimeTooSkewed"
    tampered = dict(environ, HTTP_X_AMZ_CONTENT_SHA256="0" * 64)
    assert sigv4.check(tampered, b"", known(now + 60), now).code == "XAmzContentSHA256Mismatch"


def test_s3_asks_for_the_payloads_hash_and_every_x_amz_header_signed(lab_endpoint):
    """As S3 refuses them: a signed request without x-amz-content-sha256 (what curl's
    signer sends before 8.0), or with an x-amz-* header its signature does not cover."""
    endpoint, keys, admin = lab_endpoint
    bucket = f"signed-{uuid.uuid4().hex[:12]}"
    admin.s3().create_bucket(Bucket=bucket)
    creds = Credentials(keys["admin"]["aws_access_key_id"],
                        keys["admin"]["aws_secret_access_key"])

    def get(**headers: str) -> tuple[int, bytes]:
        request = AWSRequest(method="GET", url=f"{endpoint}/{bucket}", headers=headers)
        SigV4Auth(creds, "s3", "us-east-1").add_auth(request)  # (not S3's: no payload hash)
        return _send(request)

    status, body = get()
    assert status == 400 and b"Missing required header for this request: " \
        b"x-amz-content-sha256" in body
    signed = AWSRequest(method="GET", url=f"{endpoint}/{bucket}",
                        headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    SigV4Auth(creds, "s3", "us-east-1").add_auth(signed)
    assert _send(signed)[0] == 200
    signed.headers["X-Amz-Security-Token"] = "added-after-signing"
    status, body = _send(signed)
    assert status == 403 and b"headers present in the request which were not signed" in body
