"""AWS through boto3: one module per service, one place where AWS's failures become ours.

    aws            AwsClients (built once per service and region) and the error boundary
    aws.autoscaling  server groups: Auto Scaling groups, their capacity and target groups
    aws.cloudwatch what the load balancer says users saw, and the team's alarms
    aws.ec2        instances, images and launch templates
    aws.elb        target groups: register, deregister, the health the balancer sees
    aws.kms        the keys volumes are encrypted with
    aws.s3         the artifact store
    aws.ssm        the record of what is live

Functions take their clients as arguments; only `AwsClients` builds clients, with
botocore's standard retry mode (throttling and transient errors retried with backoff)
and connect/read timeouts. Every call runs inside `calling`, which turns whatever
botocore raises (an AWS error answer, missing or expired credentials, an endpoint that
cannot be reached) into a typed error that names the resource and the fix; nothing
outside this package sees a botocore exception. Everything the tool creates is tagged
with the run id, the release and the procedure.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

import botocore.exceptions as botocore_errors
from botocore.exceptions import BotoCoreError, ClientError

from deploylib.errors import (
    AwsConfigError,
    CloudError,
    CredentialsError,
    DeployError,
    PermissionDenied,
    Unreachable,
)

if TYPE_CHECKING:  # boto3's clients by their stubs (boto3-stubs: a test dependency)
    import boto3.session
    from botocore.client import BaseClient
    from botocore.credentials import Credentials
    from botocore.loaders import Loader
    from botocore.model import OperationModel
    from botocore.session import Session as BotocoreSession
    from mypy_boto3_autoscaling import AutoScalingClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_elbv2 import ElasticLoadBalancingv2Client
    from mypy_boto3_kms import KMSClient
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient

TAG_RUN = "deploy:run"
TAG_RELEASE = "deploy:release"
TAG_PROCEDURE = "deploy:procedure"
TAG_ENV = "deploy:env"
TAG_ROLE = "deploy:role"
# On foundation images (base image + packages): the bake cache's content key.
TAG_FOUNDATION = "deploy:foundation"
# On a baked image: the release's sha256, and the image its builder started from.
TAG_DIGEST = "deploy:release-sha256"
TAG_BAKED_FROM = "deploy:baked-from"
# On a release image: how many images it is from a bake from the base (0: baked; a
# rebake-light's or a fold's image: one more than the image its host launched from), and
# the bake cache's key (base image + packages) of that bake.
TAG_LAYERS = "deploy:layers"
TAG_PACKAGES = "deploy:packages"
# On hosts a promotion replaced: the run that may still put them back (demote) until its
# release is recorded. gc keeps them while that run holds the lock.
TAG_RETIRING = "deploy:retiring"

# Calls that change nothing (by their operation's name); every other call is a write, and
# a run's writes assert its lock first (AwsClients.guard). A multipart upload's parts are
# covered by its Create and Complete calls.
_READS = ("Describe", "Get", "List", "Head", "Lookup", "Search", "Select", "Query", "Scan")
_UNGUARDED = {"UploadPart", "AbortMultipartUpload"}

# Attempts per call, the first included. botocore honours AWS_MAX_ATTEMPTS only when the
# client's config sets none; ours does, so it reads the standard variable itself.
DEFAULT_ATTEMPTS = 9


class AwsClients:
    """boto3 clients, built lazily and once per (service, region)."""

    def __init__(self, primary_region: str, *, endpoint_url: str | None = None,
                 credentials: dict[str, str] | None = None, path_style: bool = False,
                 max_attempts: int | None = None, identity: Identity | None = None):
        from botocore.config import Config

        attempts = max_attempts + 1 if max_attempts is not None else int(
            os.environ.get("AWS_MAX_ATTEMPTS") or DEFAULT_ATTEMPTS)
        self.primary_region = primary_region
        self.endpoint_url = endpoint_url
        self.identity = identity or Identity()
        self._session = _session(credentials, self.identity, primary_region, endpoint_url)
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": attempts},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            # Presigned URLs name the bucket's own region (bucket.s3.REGION.amazonaws.com):
            # the global endpoint answers a new bucket with a redirect until DNS settles,
            # and regions opened since 2019 with an error. Path style for the lab, and for
            # a bucket with dots in its name (no TLS certificate covers it as a host).
            s3={"addressing_style": "path" if path_style else "virtual",
                "us_east_1_regional_endpoint": "regional"},
            signature_version="s3v4",
        )
        self._clients: dict[tuple[str, str], BaseClient] = {}
        self._account: str | None = None
        self._lock = threading.Lock()
        # Run before every write to AWS while set (a run's lease: deploylib.lock); what it
        # raises stops the write from being sent. The lock table's own calls are not
        # guarded: they are how the lease is held.
        self.guard: Callable[[], None] | None = None

    def client(self, service: str, region: str | None = None) -> Any:
        """The client of `service` in `region`, made once. Any: boto3 makes a client's
        methods at run time from the service's name; the accessors below (ec2(), s3(), …)
        give each its stub's type."""
        key = (service, region or self.primary_region)
        with self._lock:
            if key not in self._clients:
                with calling(f"{service} in {key[1]}", "check the region's name"):
                    # (a service named at run time: the stubs type only literal names)
                    made: BaseClient = self._session.client(
                        service, region_name=key[1], endpoint_url=self.endpoint_url,  # type: ignore[call-overload]
                        config=self._config)
                if service not in ("dynamodb", "sts"):
                    made.meta.events.register("before-call", self._before_call)
                self._clients[key] = made
            return self._clients[key]

    def _before_call(self, model: OperationModel, **_: object) -> None:
        guard = self.guard
        if guard is not None and not model.name.startswith(_READS) \
                and model.name not in _UNGUARDED:
            guard()

    def credentials(self) -> Credentials | None:
        """The credentials the clients sign with (botocore's object: method, expiry)."""
        with calling("the AWS credentials", CREDENTIALS_FIX):
            return self._session.get_credentials()

    def account(self) -> str:
        """The account the credentials act in (asked once: STS needs no permission)."""
        if self._account is None:
            with calling("the AWS credentials", CREDENTIALS_FIX):
                self._account = str(self.client("sts").get_caller_identity()["Account"])
        return self._account

    def check_identity(self) -> str:
        """Before anything is written: the profile is there, the role can be assumed and
        the credentials act in the environment's own account. Returns that account."""
        identity = self.identity
        try:
            account = self.account()
        except CredentialsError:
            raise  # nothing to assume the role with: that error's own fix
        except CloudError as exc:
            if identity.role_arn and exc.resource == _ROLE_RESOURCE:
                raise AwsConfigError(
                    f"the role {identity.role_arn} could not be assumed: {exc.problem}",
                    resource=identity.where("role_arn"),
                    fix="let the calling identity assume it (the role's trust policy, and "
                    "sts:AssumeRole in the caller's policy), or correct role_arn") from None
            raise
        expected = identity.account_id
        if expected and account != expected:
            raise AwsConfigError(
                f"the AWS credentials act in account {account}, not in {expected}, this "
                "environment's", resource=self.identity.where("account_id"),
                fix="use this environment's own credentials (its aws_profile or role_arn, "
                "or in Jenkins its credentials id), or correct account_id")
        return account

    # Each service's client, typed by its stub package (a test dependency: at run time
    # these are boto3's own clients, and the names only annotations).
    def autoscaling(self, region: str) -> AutoScalingClient:
        return cast("AutoScalingClient", self.client("autoscaling", region))

    def cloudwatch(self, region: str) -> Any:
        """CloudWatch (its stubs are not among the test dependencies)."""
        return self.client("cloudwatch", region)

    def dynamodb(self) -> DynamoDBClient:
        return cast("DynamoDBClient", self.client("dynamodb"))

    def ec2(self, region: str) -> EC2Client:
        return cast("EC2Client", self.client("ec2", region))

    def elbv2(self, region: str) -> ElasticLoadBalancingv2Client:
        return cast("ElasticLoadBalancingv2Client", self.client("elbv2", region))

    def iam(self) -> Any:
        """IAM (global; its stubs are not among the test dependencies)."""
        return self.client("iam")

    def kms(self, region: str) -> KMSClient:
        return cast("KMSClient", self.client("kms", region))

    def s3(self) -> S3Client:
        return cast("S3Client", self.client("s3"))

    def ssm(self, region: str | None = None) -> SSMClient:
        """Systems Manager: the record's region by default (Parameter Store), a region's
        own for Run Command."""
        return cast("SSMClient", self.client("ssm", region))


# -- whose credentials --------------------------------------------------------------------------


@dataclass(frozen=True)
class Identity:
    """Whose credentials an environment's clients sign with: a profile (else the standard
    chain), a role assumed from them, the account they must act in. `env` names the
    deploy.toml section, for errors; `session_name` names the role's session (the run)."""

    env: str = ""
    profile: str | None = None
    role_arn: str | None = None
    account_id: str | None = None
    session_name: str = "deploylib"
    # The role session asked for: long enough for the procedure's longest wait. Where the
    # role allows less (MaxSessionDuration), its own maximum, refreshed before it ends.
    session_seconds: int = 3600

    def where(self, key: str) -> str:
        return f"environments.{self.env}.{key}" if self.env else key


# What a refused AssumeRole names (check_identity makes it a configuration error).
_ROLE_RESOURCE = "the role to assume"
# AWS's own bounds on an AssumeRole session.
_SESSION_MIN, _SESSION_MAX = 900, 43200


def session_name(text: str) -> str:
    """A role session name from a run id or a command: AWS allows [\\w+=,.@-], 2 to 64."""
    name = re.sub(r"[^\w+=,.@-]", "-", text)[:64]
    return name if len(name) >= 2 else "deploylib"


_S = TypeVar("_S", "boto3.session.Session", "BotocoreSession")


@lru_cache(maxsize=1)
def _models() -> Loader:
    """botocore's loader of service models, one per process: a session of its own reads
    and parses them again (EC2's alone is megabytes of JSON) for each session made."""
    from botocore.loaders import create_loader

    return create_loader()


def _sharing_models(session: _S) -> _S:
    """`session` (boto3's or botocore's) reading service models through `_models`."""
    core = cast("BotocoreSession", getattr(session, "_session", session))
    core.register_component("data_loader", _models())
    return session


def _session(credentials: dict[str, str] | None, identity: Identity, region: str,
             endpoint_url: str | None) -> boto3.session.Session:
    """The boto3 session every client is made from: the profile's, or the chain's, or
    given credentials; with a role, credentials that assume it and renew themselves."""
    import boto3
    from botocore.exceptions import ProfileNotFound

    try:
        given = credentials or {}
        base = boto3.session.Session(aws_access_key_id=given.get("aws_access_key_id"),
                                     aws_secret_access_key=given.get("aws_secret_access_key"),
                                     aws_session_token=given.get("aws_session_token"),
                                     profile_name=identity.profile)
    except ProfileNotFound as exc:
        profile = identity.profile or os.environ.get("AWS_PROFILE", "")
        raise AwsConfigError(
            f"the AWS profile {profile!r} is not in this machine's AWS config ({exc})",
            resource=identity.where("aws_profile") if identity.profile else "AWS_PROFILE",
            fix="make it (`aws configure sso --profile NAME`, or a [profile NAME] section "
            "in ~/.aws/config), or name one that is there (`aws configure list-profiles`)"
        ) from None
    _sharing_models(base)
    if not identity.role_arn:
        return base
    from botocore.credentials import DeferredRefreshableCredentials
    from botocore.session import Session as BotocoreSession

    seconds = max(_SESSION_MIN, min(_SESSION_MAX, identity.session_seconds))

    role_arn = identity.role_arn

    def assume() -> dict[str, str]:
        sts = base.client("sts", region_name=region, endpoint_url=endpoint_url)
        asked = seconds
        while True:
            try:
                with calling(_ROLE_RESOURCE, "check the role's trust policy"):
                    got = sts.assume_role(RoleArn=role_arn,
                                          RoleSessionName=session_name(identity.session_name),
                                          DurationSeconds=asked)["Credentials"]
                break
            except CloudError as exc:
                # The role allows shorter sessions than the wait asks for: take its default
                # hour, renewed as it ends (these credentials refresh themselves).
                if asked > 3600 and "MaxSessionDuration" in exc.problem:
                    asked = 3600
                    continue
                raise
        return {"access_key": got["AccessKeyId"], "secret_key": got["SecretAccessKey"],
                "token": got["SessionToken"], "expiry_time": got["Expiration"].isoformat()}

    botocore_session = BotocoreSession()
    # Set as boto3's own assume-role provider sets them: credentials that renew
    # themselves (botocore has no public setter for refreshable credentials).
    botocore_session._credentials = DeferredRefreshableCredentials(  # type: ignore[attr-defined]
        refresh_using=assume, method="assume-role")
    return boto3.session.Session(botocore_session=_sharing_models(botocore_session),
                                 region_name=region)


# -- the error boundary ----------------------------------------------------------------------

# Codes AWS answers when the caller's credentials are the problem, not the request.
_CREDENTIAL_CODES = {
    "ExpiredToken": "the AWS credentials have expired",
    "ExpiredTokenException": "the AWS credentials have expired",
    "RequestExpired": "the AWS credentials have expired (or this machine's clock is off)",
    "TokenRefreshRequired": "the AWS credentials have expired",
    "InvalidClientTokenId": "the AWS access key is not valid",
    "InvalidAccessKeyId": "the AWS access key is not valid",
    "UnrecognizedClientException": "the AWS access key is not valid",
    "AuthFailure": "AWS did not accept the credentials",
    "SignatureDoesNotMatch": "AWS did not accept the credentials' signature",
    "InvalidToken": "the AWS session token is not valid",
}
_PERMISSION_CODES = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation",
                     "Forbidden", "403"}
_THROTTLING_CODES = {"Throttling", "ThrottlingException", "RequestLimitExceeded",
                     "SlowDown", "TooManyRequestsException", "RequestThrottled"}
CREDENTIALS_FIX = ("give the tool AWS credentials the standard way (AWS_PROFILE with "
                   "`aws sso login`, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or an "
                   "instance role); in Jenkins bind them with withCredentials "
                   "(docs/operator-guide.md)")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _from_client_error(exc: ClientError, resource: str, fix: str) -> CloudError:
    code = _code(exc)
    msg = exc.response.get("Error", {}).get("Message", "") or ""
    what = f"{exc.operation_name} failed: {code} {msg}".strip()
    if code in _CREDENTIAL_CODES:
        return CredentialsError(f"{_CREDENTIAL_CODES[code]} ({exc.operation_name}: {code})",
                                resource=resource, fix=f"refresh them, then run again: "
                                f"{CREDENTIALS_FIX}", code=code)
    if code in _PERMISSION_CODES:
        return PermissionDenied(what, resource=resource, code=code,
                                fix=f"grant the deploying identity the action behind "
                                f"{exc.operation_name}: `invoke policy` prints every action "
                                "the tool needs")
    if code in _THROTTLING_CODES:
        return CloudError(f"{what} (still throttled after retries)", resource=resource,
                          code=code, fix="AWS is throttling the account: wait a minute, then "
                          "`invoke resume`")
    return CloudError(what, resource=resource, fix=fix, code=code)


def _endpoint(exc: BotoCoreError) -> str:
    return str(getattr(exc, "kwargs", {}).get("endpoint_url", "") or "the AWS API")


def _families() -> tuple[tuple[tuple[type[Exception], ...], Callable[[Exception, str, str],
                                                                       DeployError]], ...]:
    """botocore's exceptions by family, each to one of ours with its fix, first match wins;
    what no family names is the call's own failure (`CloudError` with the call's fix).
    tests/test_aws.py holds every exception botocore defines to this."""
    b = botocore_errors
    missing = (b.NoCredentialsError, b.PartialCredentialsError, b.NoAuthTokenError)
    unloadable = (b.CredentialRetrievalError, b.TokenRetrievalError, b.SSOError, b.LoginError,
                  b.MetadataRetrievalError, b.RefreshWithMFAUnsupportedError,
                  b.UnknownCredentialError, b.UnknownTokenProviderError)
    # The network between this machine and AWS: the request may not have arrived.
    network = (b.ConnectionError, b.HTTPClientError, b.IncompleteReadError)
    # The operator's AWS set-up (profile, region, endpoints, retries): nothing was sent.
    setup = (b.NoRegionError, b.ProfileNotFound, b.ConfigParseError, b.ConfigNotFound,
             b.InvalidConfigError, b.UnknownRegionError, b.InvalidRegionError,
             b.BaseEndpointResolverError, b.EndpointProviderError, b.ServiceNotInRegionError,
             b.InvalidRetryConfigurationError, b.InvalidProxiesConfigError,
             b.InvalidDefaultsMode, b.InvalidIMDSEndpointError, b.InvalidIMDSEndpointModeError,
             b.InvalidS3AddressingStyleError, b.InvalidSTSRegionalEndpointsConfigError,
             b.InvalidS3UsEast1RegionalEndpointConfigError,
             b.InvalidEndpointDiscoveryConfigurationError,
             b.InvalidEndpointConfigurationError, b.InvalidChecksumConfigError,
             b.UnsupportedS3ConfigurationError, b.UnsupportedS3AccesspointConfigurationError,
             b.UnsupportedS3ControlConfigurationError, b.MissingDependencyException)
    return (
        (missing, lambda exc, res, fix: CredentialsError(
            f"no usable AWS credentials were found ({exc})", resource=res,
            fix=CREDENTIALS_FIX)),
        (unloadable, lambda exc, res, fix: CredentialsError(
            f"the AWS credentials could not be loaded ({exc})", resource=res,
            fix=f"refresh them: {CREDENTIALS_FIX}")),
        (network, lambda exc, res, fix: Unreachable(
            f"{_endpoint(exc)} could not be reached ({type(exc).__name__})", resource=res,
            fix="check this machine's network path to AWS (VPN, proxy, firewall) and the "
            "region; then `invoke resume` for a run that stopped")),
        (setup, lambda exc, res, fix: AwsConfigError(
            f"the AWS configuration cannot be used ({type(exc).__name__}: {exc})",
            resource=res, fix="check AWS_PROFILE, AWS_REGION and ~/.aws/config against the "
            "environment's regions (`invoke preflight` checks them)")),
    )


def from_botocore(exc: Exception, resource: str, fix: str) -> DeployError:
    """botocore's (or boto3's) exception as one of ours: one line, naming `resource`,
    with `fix` unless the failure has a better one (credentials, network, set-up)."""
    if isinstance(exc, ClientError):
        return _from_client_error(exc, resource, fix)
    for family, ours in _families():
        if isinstance(exc, family):
            return ours(exc, resource, fix)
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ClientError):  # S3 transfers wrap AWS's answer in one of boto3's
        return _from_client_error(cause, resource, fix)
    return CloudError(f"{type(exc).__name__}: {exc}", resource=resource, fix=fix)


@contextmanager
def calling(resource: str, fix: str) -> Iterator[None]:
    """Run AWS calls; any failure leaves as one of ours (`from_botocore`), botocore's
    exception kept as its cause for whoever debugs it."""
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise from_botocore(exc, resource, fix) from exc
    except Exception as exc:
        # boto3's own errors; imported here, as importing boto3 costs half a second that a
        # command without AWS need not pay.
        from boto3.exceptions import Boto3Error

        if not isinstance(exc, Boto3Error):
            raise
        raise from_botocore(exc, resource, fix) from exc


# -- tags ---------------------------------------------------------------------------------------


def tags(run_id: str, env: str, release: str, procedure: str, role: str,
         name: str | None = None) -> list[dict[str, str]]:
    out = {TAG_RUN: run_id, TAG_ENV: env, TAG_RELEASE: release, TAG_PROCEDURE: procedure,
           TAG_ROLE: role, "Name": name or f"deploy-{env}-{role}-{release}"}
    return [{"Key": k, "Value": v} for k, v in out.items()]


def tag_map(tag_list: Iterable[Mapping[str, Any]] | None) -> dict[str, str]:
    """Tags as AWS lists them ({"Key", "Value"} each), as a dict."""
    return {str(t["Key"]): str(t["Value"]) for t in tag_list or ()}


# The services, each in its own module; imported last, as they use the boundary above.
from deploylib.aws import (  # noqa: E402
    autoscaling,
    cloudwatch,
    ec2,
    elb,
    iam,
    kms,
    runcommand,
    s3,
    ssm,
)

__all__ = ["AwsClients", "Identity", "autoscaling", "calling", "cloudwatch", "ec2", "elb",
           "iam", "kms", "runcommand", "s3", "ssm", "tag_map", "tags"]
