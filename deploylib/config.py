"""deploy.toml: named environments, validated on load.

Every error names the key, the bad value and the fix, on one line. The lab environment
is embedded (deploylib/lab/environment.toml) and is the default when none is given; a
deploy.toml's own [environments.lab] sets keys over it (a team's app in the lab).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from deploylib.errors import ConfigError, InputError
from deploylib.manifest import Manifest

LAB_ENVIRONMENT_FILE = Path(__file__).parent / "lab" / "environment.toml"
DEFAULT_CONFIG = "deploy.toml"

# (no "..": a version names paths)
VERSION = re.compile(r"^(?!.*\.\.)[0-9A-Za-z][0-9A-Za-z._-]{0,63}$")
ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
RUN_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{6}$")
REGION = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d{1,2}$")
IMAGE_ID = re.compile(r"^ami-[0-9a-f]{8,17}$")
_INSTANCE_TYPE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_STEP_NAME = re.compile(r"^[a-z][a-z0-9-]{0,47}$")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9.+-]*(=[0-9A-Za-z.+~:-]+)?$")
_BATCH = re.compile(r"^([1-9]\d*)(%?)$")
_ACCOUNT = re.compile(r"^\d{12}$")
_ROLE_ARN = re.compile(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]{1,512}$")
_PROFILE = re.compile(r"^[\w.+@-]{1,128}$")


def check_version(version: str) -> str:
    """A release version is used in paths, tags and remote commands: keep it plain."""
    if not isinstance(version, str) or not VERSION.fullmatch(version):
        raise InputError(
            f"version {version!r} is not a valid release version",
            fix="use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter "
            "or digit (e.g. 1.2.3 or 2026.11.27-abc123)",
        )
    return version


def check_env_name(name: str) -> str:
    if not isinstance(name, str) or not ENV_NAME.fullmatch(name):
        raise InputError(
            f"environment name {name!r} is not valid",
            fix="use lower-case letters, digits and '-', starting with a letter (e.g. lab)",
        )
    return name


_KMS_KEY = re.compile(r"^arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]{1,64}$")


# The longest single wait of each procedure, and its timeout key with the default: the
# credentials must outlive it (a 1-hour session in a 2-hour copy wait dies inside it).
LONGEST_WAIT = {"immutable": ("copy", 7200.0), "rebake-light": ("launch", 600.0),
                "in-place": ("drain", 600.0)}
# ... and with server groups, the wait for a group's instances (each of its timeouts, one
# wait: launched, then booted into the release), which is longer than a fleet's launch.
GROUP_WAIT = (("launch", 600.0), ("boot", 900.0))
# The longest a presigned URL may live: one install's fetch, with room.
MAX_PRESIGN = 3600.0


def _fail(message: str) -> ValueError:
    return ValueError(message)


# Keys whose value must match a pattern, and what to say when it does not.
_PLAIN = {
    "primary_region": (REGION, "must be an AWS region name such as us-east-1"),
    "instance_type": (_INSTANCE_TYPE, "must be an EC2 instance type such as t3.micro"),
    "service": (re.compile(r"^[a-z][a-z0-9_-]{0,31}$"),
                "must be a systemd unit name such as app"),
    "service_user": (re.compile(r"^[a-z_][a-z0-9_-]{0,31}$"),
                     "must be a user name such as app (lower case, at most 32)"),
    "health_path": (re.compile(r"^/[A-Za-z0-9._~/-]*$"),
                    "must be a URL path starting with /, e.g. /health"),
    "lock_table": (re.compile(r"^[A-Za-z0-9_.-]{3,255}$"),
                   "must be a DynamoDB table name (3-255 letters, digits, '_', '-', '.')"),
    # It names the launch template too, whose names EC2 holds to 128 characters.
    "server_group_prefix": (re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,127})?$"),
                            "must be a launch template's name: at most 128 letters, digits, "
                            "'.', '_' or '-', starting with a letter or digit"),
}


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class JenkinsConfig(Strict):
    url: str = Field(default="",
        description=(
            "Jenkins' URL; empty: no Jenkins (the bake promotes locally, hotfixes are not "
            "recorded there)."))
    user: str = Field(default="",
        description=(
            "Jenkins user; its API token comes from `$JENKINS_API_TOKEN`, never from this "
            "file."))
    pipeline_job: str = Field(default="deploy", description="The parameterized pipeline job.")
    promote_job: str = Field(default="test-and-promote",
        description="The test-and-promote job `invoke bake` hands off to.")
    record_job: str = Field(default="record-hotfix",
        description="The job that records each in-place hotfix.")
    timeout: float = Field(default=1800, gt=0,
        description="Seconds to follow a handed-off build before giving up.")
    repository: str = Field(default="",
        description="Git URL the pipeline jobs read the Jenkinsfile from (`invoke jenkins.setup`).")
    branch: str = Field(default="main", description="Branch of `repository`.")
    credentials: str = Field(default="",
        description=(
            "The Jenkins credentials id (AWS access key) the pipeline binds for this "
            "environment; empty: `deploy-aws-<env>`. With `role_arn`, what it assumes the "
            "role from."))
    approval: bool = Field(default=False,
        description=(
            "Ask a person (Jenkins' `input`, naming the release and the procedure) before "
            "the environment's release phase."))
    region_agents: str = Field(default="",
        description=(
            "A Jenkins agent label: a per-region group's regions run as parallel branches, "
            "one per region, each on an agent of this label, sharing the run through the "
            "environment's store. Empty: the group is one stage on the build's agent, its "
            "regions on threads of one process."))

    @field_validator("region_agents")
    @classmethod
    def _label(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9_.:&|!() -]{1,200}", v):
            raise _fail("must be a Jenkins label expression: letters, digits, '.', '_', "
                        "'-', ':', spaces and the operators & | ! ( )")
        return v

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, v: str) -> str:
        if v and not re.fullmatch(r"[A-Za-z0-9._-]{1,128}", v):
            raise _fail("must be a Jenkins credentials id: letters, digits, '.', '_', '-'")
        return v

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not re.fullmatch(r"^https?://[^\s/$.?#][^\s]*$", v):
            raise _fail("must be an http(s) URL such as https://jenkins.example.com, or empty")
        # The deploy bot's token goes with every request: never in clear over a network
        # (plain http only to this machine, as a local Jenkins or the tests' stand-in).
        if v.startswith("http://") and not re.match(
                r"^http://(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?(/|$)", v):
            raise _fail("must be https:// (the API token goes with every request); plain "
                        "http:// only to this machine")
        return v.rstrip("/")


class RegionOverride(Strict):
    subnet: str | None = Field(default=None, description="This region's subnet.")
    subnets: list[str] | None = Field(default=None,
                                      description="This region's server-group subnets.")
    security_group: str | None = Field(default=None,
                                       description="This region's security group.")
    target_group: str | None = Field(default=None, description="This region's target group.")
    alarms: list[str] | None = Field(default=None,
                                     description="This region's alarms for `verify.alarms`.")


# A CloudWatch percentile statistic, as GetMetricData takes it (p90, p99.9).
_PERCENTILE = re.compile(r"p(\d{1,2}(\.\d{1,2})?)")


class Verify(Strict):
    """The verification window: what users see after a release reaches them, judged
    before the run goes on (deploylib.verdict, deploylib.steps.verify)."""

    canary_for: float = Field(default=0, ge=0, le=86400,
        description=("Seconds the in-place canary (the first batch) is watched before any "
                     "wave starts; 0: no window."))
    wave_for: float = Field(default=0, ge=0, le=86400,
        description="Seconds each later in-place wave is watched; 0: no window.")
    live_for: float = Field(default=0, ge=0, le=86400,
        description=("Seconds an image-based release (immutable, rebake-light) is watched "
                     "once every region is live, the previous hosts kept to take over; "
                     "0: no window."))
    alarms: list[str] = Field(default_factory=list,
        description=("The team's CloudWatch alarms (names, in every region; "
                     "`regions.<r>.alarms` per region): any in ALARM during a window "
                     "fails it."))
    max_error_rise: float = Field(default=0.01, gt=0, le=1,
        description=("The 5xx share of requests (target's and balancer's) a window may "
                     "show above the share before the run, e.g. 0.01: one point more."))
    latency: str = Field(default="p90",
        description="The TargetResponseTime percentile judged (p50 … p99.9).")
    max_latency_ratio: float = Field(default=2.0, gt=1, le=100,
        description="How many times the percentile before the run a window may show.")
    min_latency_rise: float = Field(default=0.05, ge=0, le=60,
        description=("Seconds the percentile must also rise by to fail a window (a 2 ms "
                     "service's jitter is not a regression)."))
    min_requests: int = Field(default=50, ge=1, le=10_000_000,
        description=("Requests a window (and the time before the run, for a comparison) "
                     "must see to be judged on its metrics; fewer: alarms only, and said."))
    period: int = Field(default=60, ge=1, le=3600,
        description=("The metrics' period in seconds (an Application Load Balancer's: "
                      "60)."))
    delay: float = Field(default=60, ge=0, le=900,
        description=("Seconds a period's metrics may take to arrive in CloudWatch after "
                      "it ends (ALB: up to a minute); a window is judged once they have."))

    @field_validator("latency")
    @classmethod
    def _latency(cls, v: str) -> str:
        if not _PERCENTILE.fullmatch(v) or not 0 < float(v[1:]) < 100:
            raise _fail(f"{v!r} is not a percentile statistic such as p90 or p99.9")
        return v

    @field_validator("alarms")
    @classmethod
    def _alarms(cls, v: list[str]) -> list[str]:
        for name in v:
            if not 1 <= len(name) <= 255 or not name.strip():
                raise _fail(f"{name!r} is not an alarm name (1-255 characters)")
        return v

    @property
    def watches_batches(self) -> bool:
        return bool(self.canary_for or self.wave_for)

    @property
    def watches_live(self) -> bool:
        return bool(self.live_for)

    @property
    def enabled(self) -> bool:
        return self.watches_batches or self.watches_live

    @model_validator(mode="after")
    def _alarms_watched(self) -> Verify:
        # Alarms are read only during a window: without one they would protect nothing.
        if self.alarms and not self.enabled:
            raise _fail("alarms are watched only during a window: set canary_for, "
                        "wave_for or live_for (seconds)")
        return self


class ExtraStage(Strict):
    step: str = Field(description="The step's name, as a plugin registered it.")
    before: str | None = Field(default=None, description="Run it before this stage.")
    after: str | None = Field(default=None, description="Run it after this stage.")

    @model_validator(mode="after")
    def _one_anchor(self) -> ExtraStage:
        if (self.before is None) == (self.after is None):
            raise _fail("give exactly one of before = STAGE or after = STAGE")
        return self


class Environment(Strict):
    """One named environment: where a release goes and how."""

    name: str = Field(default="lab",
        description="The environment's name (the section's; set by the loader).")
    provider: Literal["aws", "lab"] = Field(default="aws",
        description="`aws` for a real account, `lab` for the local lab.")
    primary_region: str = Field(
        description="Where the builder runs and the artifact store and record live.")
    aws_profile: str | None = Field(default=None,
        description=(
            "The AWS profile (~/.aws/config) this environment's credentials come from; "
            "empty: the standard chain (AWS_PROFILE, the environment, an instance role)."))
    role_arn: str | None = Field(default=None,
        description=(
            "An IAM role the tool assumes for this environment (from the profile's or the "
            "chain's credentials), in a session named after the run and refreshed before "
            "it expires."))
    account_id: str | None = Field(default=None,
        description=(
            "The AWS account this environment lives in: the tool refuses, before it writes "
            "anything, to act with credentials of any other."))
    copy_regions: list[str] = Field(default_factory=list,
        description="The other regions: images are copied there and fleets run there too.")
    base_image: str = Field(
        description="The builder's image: an id (`ami-…`) or a name filter (the newest match).")
    base_image_owner: str | None = Field(default=None,
        description="Owner account of `base_image` when it is a name filter (e.g. Canonical's).")
    instance_type: str = Field(default="t3.micro",
        description="Instance type of the builder and the candidates.")
    kms_keys: list[str] = Field(default_factory=list,
        description=(
            "ARNs of customer-managed KMS keys the volumes are encrypted with: the account's "
            "default EBS key in a region, when it is not AWS's own (`invoke policy` grants "
            "their use; preflight checks each region's default is listed and enabled)."))
    subnet: str = Field(description="Subnet id, or the `Name` tag of one subnet per region.")
    subnets: list[str] = Field(default_factory=list,
        description=(
            "The subnets (ids or `Name` tags) a server group spans, one per Availability "
            "Zone, each in a zone the load balancer serves; empty: `subnet` alone. The "
            "builder and loose instances use `subnet`."))
    security_group: str = Field(description="Security group id, or its name, per region.")
    target_group: str = Field(
        description="Target group name or ARN that serves the app, per region.")
    regions: dict[str, RegionOverride] = Field(default_factory=dict,
        description="Per-region overrides of `subnet`, `subnets`, `security_group`, "
                    "`target_group`.")
    key_name: str | None = Field(default=None,
        description="EC2 key pair set on launched instances (optional).")
    os_packages: list[str] = Field(default_factory=list,
        description="Debian packages the provision step installs on the builder.")
    app_root: str = Field(default="/srv/app",
        description="Where releases live on a host: `releases/<version>` and the `current` link.")
    app_port: int = Field(default=8080, ge=1, le=65535,
        description="The app's HTTP port (health checks, target group).")
    service: str = Field(default="app", description="The app's systemd unit name.")
    service_user: str = Field(default="app",
        description="The user the app runs as: made by provisioning (a system user, no "
        "login); the releases and the unit stay root's.")
    restart_command: str = Field(default="sudo systemctl restart app",
        description="How the install step restarts the app (the step runs as root, "
        "through the SSH user's sudo).")
    bake: Literal["copy", "per-region"] = Field(default="copy",
        description=(
            "Immutable: `copy`: bake once in the primary region and copy the image to the "
            "others (each region waits for its copy); `per-region`: every region bakes its "
            "own image at once, from its own foundation image, from the same release "
            "(sha256-checked on each builder): no copy on the critical path. A per-region "
            "bake has no bake phase to hand to Jenkins (`invoke bake`)."))
    reload: Literal["restart", "graceful"] = Field(default="restart",
        description=(
            "In-place: `restart`: each batch is drained, restarted and put back; `graceful`: "
            "for an app that reloads without dropping a request (gunicorn's HUP, puma's "
            "phased restart, socket activation), hosts stay in their target groups and the "
            "install switches the release and runs `reload_command`, health-gated on the "
            "host. Needs `health_check = \"version\"`."))
    reload_command: str = Field(default="sudo systemctl reload app",
        description="How a graceful in-place install reloads the app (`reload = \"graceful\"`).")
    health_path: str = Field(default="/health",
        description="URL path of the app's health check (what the load balancer asks too).")
    health_check: Literal["status", "version"] = Field(default="status",
        description=(
            "`status`: a 2xx from `health_path` says the app is up, and the release is "
            "proven on the host (the `current` link points at it and the service runs from "
            "it, started after the switch); `version`: `health_path` answers JSON whose "
            "`version` is the running release, checked over HTTP too."))
    batch_size: Annotated[str | int, Field(union_mode="left_to_right")] = Field(default=1,
        description=(
            "In-place batch: a count (`2`) or a percentage (`\"25%\"`) of a region's live "
            "hosts."))
    rollout: Literal["waves", "regions-in-turn"] = Field(default="waves",
        description=(
            "In-place: `waves`: a canary (the primary region's first batch), then batch i "
            "of every region at once; `regions-in-turn`: every batch of a region, then the "
            "next region."))
    drain_quiet: float = Field(default=2.0, ge=0, le=300,
        description=(
            "Seconds a drained host must go without a connection from the load balancer "
            "before it counts as idle (the deregistration delay is only the ceiling)."))
    max_failed_hosts: int = Field(default=0, ge=0, le=1000,
        description=(
            "In-place: hosts that may fail (restored, left out of the target group) before "
            "the rollout stops."))
    rollback_on_failure: bool = Field(default=True,
        description=(
            "In-place: when the rollout stops, switch the hosts already updated back to the "
            "live release."))
    fleet: Literal["instances", "server-groups"] = Field(default="instances",
        description=(
            "`instances`: the fleet is the instances in the target group; `server-groups`: "
            "each region's fleet is an Auto Scaling group from a launch template version "
            "(`<service>-<env>-vNNN`): immutable and rebake-light make the next group "
            "(red/black), in-place changes the live group's instances, and an instance the "
            "group launches boots into the live release (docs/operator-guide.md)."))
    keep_server_groups: int = Field(default=2, ge=0, le=20,
        description=(
            "Server groups kept (scaled to 0, out of service) behind the live one: the "
            "newest is what `invoke rollback` re-enables."))
    max_layers: int = Field(default=3, ge=1, le=50,
        description=(
            "Rebake-light images over a bake from the base (each rebake-light or fold adds "
            "one) before rebake-light is refused and a bake from the base is required; "
            "also refused when the base image or the packages changed since that bake."))
    fold: Literal["manual", "after-deploy"] = Field(default="manual",
        description=(
            "Server groups: `after-deploy` runs `invoke fold` once an in-place deploy is "
            "done (an image of a live host in each region, put in the live group's launch "
            "template), so new instances boot already on the hotfix — from the command "
            "line, and as the pipeline's last stage (`fold`); `manual`: only when asked. "
            "(Rebake-light needs no fold: its group launches from the image it made.)"))
    server_group_prefix: str = Field(default="",
        description=(
            "Server groups are `<prefix>-vNNN` and launch from the launch template "
            "`<prefix>`; empty: `<service>-<env>`."))
    kept_capacity: Literal["zero", "live"] = Field(default="zero",
        description=(
            "Server groups: how the group a promotion took out of service is kept. `zero`: "
            "scaled to 0 (a rollback boots its instances again: a launch and a health "
            "check); `live`: at the capacity it served with, out of the target group (a "
            "rollback is one health check; the fleet is paid twice until the next "
            "deploy)."))
    instance_profile: str = Field(default="",
        description=(
            "Server groups: the instance profile (name or ARN) their instances launch with; "
            "its role reads the record and the releases at boot "
            "(deploylib/templates/iam-policy-instance.json)."))
    max_size: int = Field(default=0, ge=0, le=1000,
        description=(
            "Server groups: the first group's MaxSize (0: twice `fleet_size`); later groups "
            "carry the live group's min, max and desired over."))
    fleet_size: int = Field(default=2, ge=1, le=1000,
        description="Hosts per region when nothing is live yet (the first release).")
    keep_releases: int = Field(default=3, ge=2, le=50,
        description="Releases kept on each host; the previous one is never removed.")
    max_release_mb: int = Field(default=2048, ge=1, le=65536,
        description=(
            "The most a release may hold unpacked, in MB (every host unpacks it beside the "
            "ones it keeps): a larger artifact is refused before it is published."))
    max_release_files: int = Field(default=100_000, ge=1, le=10_000_000,
        description="The most files and directories a release may hold (refused if more).")
    keep_images: int = Field(default=3, ge=1, le=100,
        description="Images per region `invoke gc` keeps besides the live and rollback ones.")
    artifact_bucket: str = Field(
        description="The S3 bucket releases are published to (`releases/<env>/<version>.tar.gz`).")
    app: Manifest = Field(default_factory=Manifest,
        description=(
            "How a release runs where its own release.toml is silent: `start`, `reload`, "
            "`stop_signal`, `stop_timeout`, `health_path`, `port_variable`, `hooks` "
            "(docs/releases.md)."))
    build_command: str = Field(default="",
        description=(
            "Run in `app_source` before it is packed into a release (`make`, a compiler, a "
            "bundler); empty: `app_source` is packed as it is."))
    app_source: str = Field(default="examples/app",
        description="The app directory packed when no `--artifact` is given.")
    smoke_tests: str = Field(default="",
        description=(
            "A pytest directory run against the candidates by smoke-test (JUnit XML); empty: "
            "the health check only."))
    smoke_env: list[str] = Field(default_factory=list,
        description=(
            "Names of variables passed to the smoke tests beside the few they always get "
            "(PATH, locale, TZ, TMPDIR, a HOME of their own): never the deploy's credentials, "
            "SSH agent or Jenkins token."))
    artifact_transfer: Literal["pull", "push"] = Field(default="pull",
        description=(
            "`pull`: hosts fetch the release from a presigned URL; `push`: it is streamed "
            "over the run's SSH connection."))
    transport: Literal["ssh", "ssm"] = Field(default="ssh",
        description=(
            "How the tool runs its scripts on the live hosts and candidates: `ssh` (the "
            "run's own connection to each) or `ssm` (Systems Manager Run Command: one "
            "SendCommand a batch, no inbound port; needs `artifact_transfer = \"pull\"` and "
            "an `instance_profile` the SSM agent acts with). Builders are always reached "
            "over SSH."))
    address: Literal["private", "public"] = Field(default="private",
        description="Which instance address SSH and health checks use: `private` or `public`.")
    ssh_user: str = Field(default="ubuntu", description="SSH login user on the instances.")
    ssh_port: int = Field(default=22, ge=1, le=65535, description="SSH port on the instances.")
    ssh_key: str | None = Field(default=None,
        description="Private key file for SSH; empty: the SSH agent.")
    state_dir: str = Field(default=".runs",
        description="Where run states (and their JUnit XML and reports) are written.")
    plugins: list[str] = Field(default_factory=list,
        description="Python modules registering a team's own steps and hooks.")
    extra_stages: list[ExtraStage] = Field(default_factory=list,
        description=(
            "A team's steps placed in every procedure: `{ step = NAME, before|after = STAGE "
            "}`."))
    jenkins: JenkinsConfig = Field(default_factory=JenkinsConfig,
        description="The Jenkins server and jobs (below).")
    timeouts: dict[str, float] = Field(default_factory=dict,
        description=(
            "Seconds per wait, by name: launch, ssh, ssh_connect, ssh_retry, first_boot, "
            "provision, install, health, healthy, drain, stop, image, copy, presign, smoke; "
            "and poll, the longest pause between two looks during any wait (default 3)."))
    verify: Verify = Field(default_factory=Verify,
        description=("The verification window after a release reaches users: its length "
                     "per stage, the team's alarms, the judge's limits."))
    lock_table: str = Field(default="deploylib-locks",
        description="DynamoDB table holding the deploy locks (key `env`).")
    lock_ttl: float = Field(default=1800, ge=30, le=86400,
        description="Seconds after which a lock nobody renewed is stale and may be taken.")


    @field_validator(*_PLAIN)
    @classmethod
    def _plain(cls, v: str, info: ValidationInfo) -> str:
        pattern, message = _PLAIN[str(info.field_name)]
        if not pattern.fullmatch(v):
            raise _fail(message)
        return v

    @field_validator("account_id", mode="before")
    @classmethod
    def _account_id(cls, v: Any) -> str | None:
        if v is not None and not (isinstance(v, str) and _ACCOUNT.fullmatch(v)):
            raise _fail(f"{v!r} is not an AWS account id (12 digits, as a string: "
                        "account_id = \"123456789012\")")
        return v

    @field_validator("role_arn")
    @classmethod
    def _role_arn(cls, v: str | None) -> str | None:
        if v is not None and not _ROLE_ARN.fullmatch(v):
            raise _fail(f"{v!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        return v

    @field_validator("aws_profile")
    @classmethod
    def _aws_profile(cls, v: str | None) -> str | None:
        if v is not None and not _PROFILE.fullmatch(v):
            raise _fail(f"{v!r} is not a profile name as ~/.aws/config writes them")
        return v

    @field_validator("copy_regions")
    @classmethod
    def _copies(cls, v: list[str]) -> list[str]:
        for region in v:
            if not REGION.fullmatch(region):
                raise _fail(f"{region!r} is not an AWS region name such as eu-west-1")
        if len(set(v)) != len(v):
            raise _fail("lists a region twice; name each copy region once")
        return v

    @field_validator("base_image")
    @classmethod
    def _base_image(cls, v: str) -> str:
        if v.startswith("ami-") and not IMAGE_ID.fullmatch(v):
            raise _fail("looks like an image id but is not one (ami- then 8 or 17 hex digits)")
        if not v.strip():
            raise _fail("give an image id (ami-…) or a name filter such as ubuntu/images/*")
        return v


    @field_validator("kms_keys")
    @classmethod
    def _kms_keys(cls, value: list[str]) -> list[str]:
        for arn in value:
            if not _KMS_KEY.match(arn):
                raise _fail(f"{arn!r} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
        return value

    @field_validator("smoke_env")
    @classmethod
    def _smoke_env(cls, v: list[str]) -> list[str]:
        from deploylib.smoke import never_passed

        for name in v:
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", name):
                raise _fail(f"{name!r} is not a variable's name")
            if never_passed(name):
                raise _fail(f"{name} is the deploy's own (credentials, SSH agent, Jenkins): "
                            "smoke tests never get it")
        return v

    @field_validator("os_packages")
    @classmethod
    def _packages(cls, v: list[str]) -> list[str]:
        for pkg in v:
            if not _PACKAGE.fullmatch(pkg):
                raise _fail(f"{pkg!r} is not a Debian package name (e.g. nginx or curl=7.81.0-1)")
        return v

    @field_validator("app_root")
    @classmethod
    def _app_root(cls, v: str) -> str:
        if not re.fullmatch(r"^/[A-Za-z0-9._/-]+$", v) or ".." in v or v.rstrip("/") == "":
            raise _fail("must be an absolute path of plain characters, not /, e.g. /srv/app")
        return v.rstrip("/")



    @field_validator("batch_size", mode="before")
    @classmethod
    def _batch(cls, v: Any) -> str | int:
        if isinstance(v, bool) or not isinstance(v, (int, str)):
            raise _fail("must be a count such as 2 or a percentage such as 25%")
        if isinstance(v, int):
            if v < 1:
                raise _fail("must be at least 1 (or a percentage such as 25%)")
            return v
        m = _BATCH.fullmatch(v.strip())
        if not m or (m.group(2) and int(m.group(1)) > 100):
            raise _fail("must be a count such as 2 or a percentage from 1% to 100%")
        return v.strip() if m.group(2) else int(m.group(1))


    @field_validator("artifact_bucket")
    @classmethod
    def _bucket(cls, v: str) -> str:
        if not BUCKET.fullmatch(v) or ".." in v:
            raise _fail("must be an S3 bucket name (3-63 lower-case letters, digits, '.', '-')")
        return v

    @field_validator("plugins")
    @classmethod
    def _plugins(cls, v: list[str]) -> list[str]:
        for mod in v:
            if not re.fullmatch(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$", mod):
                raise _fail(f"{mod!r} is not an importable module name such as team_steps")
        return v

    @field_validator("timeouts")
    @classmethod
    def _timeouts(cls, v: dict[str, float]) -> dict[str, float]:
        for key, seconds in v.items():
            if seconds <= 0:
                raise _fail(f"timeouts.{key} must be a positive number of seconds")
        if v.get("presign", 0) > MAX_PRESIGN:
            raise _fail(f"timeouts.presign must be at most {MAX_PRESIGN:.0f} seconds (a "
                        "presigned URL is a credential while it lives)")
        return v

    @model_validator(mode="after")
    def _regions(self) -> Environment:
        if self.primary_region in self.copy_regions:
            raise _fail("copy_regions repeats primary_region; list only the other regions")
        for region in self.regions:
            if region not in self.all_regions:
                raise _fail(
                    f"regions.{region} overrides a region that is neither primary_region "
                    "nor in copy_regions"
                )
        if self.app.health_path and self.app.health_path != self.health_path:
            raise _fail(f"app.health_path {self.app.health_path} is not health_path "
                        f"{self.health_path} (the target group checks that one); make them "
                        "the same, or leave app.health_path out")
        if self.provider == "lab" and (self.aws_profile or self.role_arn):
            raise _fail("the lab signs with its own deployer key: aws_profile and role_arn "
                        'are for provider = "aws"; remove them from the lab environment')
        if self.role_arn and self.account_id and \
                self.role_arn.split(":")[4] != self.account_id:
            raise _fail(f"role_arn is a role of account {self.role_arn.split(':')[4]}, but "
                        f"account_id is {self.account_id}; give the role of this "
                        "environment's own account")
        if self.reload == "graceful" and self.health_check != "version":
            # The main process outlives a reload: only the app can say which release
            # its workers run.
            raise _fail('reload = "graceful" needs health_check = "version" (the app '
                        "reports the release it serves)")
        if self.transport == "ssm" and self.artifact_transfer == "push":
            raise _fail('transport = "ssm" needs artifact_transfer = "pull": Run Command '
                        "carries scripts, not files (hosts fetch the release from S3)")
        if self.transport == "ssm" and not self.instance_profile:
            raise _fail('transport = "ssm" needs instance_profile: the role each host\'s SSM '
                        "agent acts with (AmazonSSMManagedInstanceCore, and writing its "
                        "output to the artifact bucket: `invoke policy --instance`)")
        if self.fleet == "server-groups" and not self.instance_profile:
            raise _fail('fleet = "server-groups" needs instance_profile: the role its '
                        "instances read the record and the releases with at boot "
                        "(deploylib/templates/iam-policy-instance.json)")
        for region in self.all_regions:
            spans = self.group_subnets(region)
            if len(set(spans)) != len(spans) or not all(spans):
                raise _fail(f"subnets of {region} name a subnet twice, or none: each once")
        for extra in self.extra_stages:
            if not _STEP_NAME.fullmatch(extra.step):
                raise _fail(f"extra_stages step {extra.step!r} is not a step name like warm-cache")
        return self

    # -- derived values -------------------------------------------------------------------

    @property
    def all_regions(self) -> list[str]:
        return [self.primary_region, *self.copy_regions]

    def network(self, region: str) -> tuple[str, str, str]:
        """(subnet, security group, target group) for a region, overrides applied."""
        o = self.regions.get(region, RegionOverride())
        return (
            o.subnet or self.subnet,
            o.security_group or self.security_group,
            o.target_group or self.target_group,
        )

    def alarms(self, region: str) -> list[str]:
        """The team's alarms a window watches in a region (its own, else the
        environment's)."""
        o = self.regions.get(region, RegionOverride())
        return list(self.verify.alarms if o.alarms is None else o.alarms)

    def group_subnets(self, region: str) -> list[str]:
        """The subnets a region's server groups span: `subnets` (the region's own, else
        the environment's), else `subnet` alone."""
        o = self.regions.get(region, RegionOverride())
        return list(o.subnets or self.subnets or [self.network(region)[0]])

    @property
    def server_groups(self) -> bool:
        return self.fleet == "server-groups"

    @property
    def group_prefix(self) -> str:
        """Server groups are `<prefix>-vNNN`; the launch template is `<prefix>`."""
        return self.server_group_prefix or f"{self.service}-{self.name}"

    def timeout(self, what: str, default: float) -> float:
        return float(self.timeouts.get(what, default))

    def longest_wait(self, mode: str | None = None) -> tuple[str, float]:
        """A procedure's longest single wait (immutable's, the longest, by default): its
        timeout key (keys, joined: one wait of several timeouts) and seconds."""
        key, default = LONGEST_WAIT.get(mode or "immutable", LONGEST_WAIT["immutable"])
        longest = (key, self.timeout(key, default))
        if self.server_groups:  # every procedure may wait on a group's instances
            group = (" + timeouts.".join(k for k, _ in GROUP_WAIT),
                     sum(self.timeout(k, d) for k, d in GROUP_WAIT))
            longest = max(longest, group, key=lambda wait: wait[1])
        return longest

    def batch_count(self, hosts: int) -> int:
        """How many hosts one in-place batch takes, for a fleet of `hosts`."""
        size = self.batch_size
        if isinstance(size, str):
            return max(1, (hosts * int(size[:-1])) // 100)
        return size

    @property
    def record_parameter(self) -> str:
        """The SSM parameter holding what is live in this environment."""
        return f"/deploylib/{self.name}/live"

    @property
    def host_keys_path(self) -> str:
        """Where the SSH host keys first trusted for each instance are kept (one SSM
        parameter per instance under it, `<region>/<instance id>`), for every later run
        and every agent."""
        return f"/deploylib/{self.name}/hostkeys/"


class DeployConfig(Strict):
    default_environment: str = "lab"
    environments: dict[str, Environment]
    source: str = "(embedded)"
    # Whether the file itself has an [environments.lab] (else only the embedded one).
    defines_lab: bool = False

    def relative_to(self, base: Path) -> DeployConfig:
        """Resolve the environments' relative paths against the config file's folder."""
        envs = {}
        for name, env in self.environments.items():
            update = {}
            for key in ("app_source", "state_dir", "ssh_key", "smoke_tests"):
                value = getattr(env, key)
                if value and not value.startswith("~") and not Path(value).is_absolute():
                    update[key] = str(base / value)
            envs[name] = env.model_copy(update=update)
        return self.model_copy(update={"environments": envs})

    def with_environment(self, name: str, **update: Any) -> DeployConfig:
        """The same configuration with some keys of one environment set otherwise."""
        envs = dict(self.environments)
        envs[name] = self.environment(name).model_copy(update=update)
        return self.model_copy(update={"environments": envs})

    def environment(self, name: str | None) -> Environment:
        name = name or self.default_environment
        check_env_name(name)
        if name not in self.environments:
            known = ", ".join(sorted(self.environments))
            raise InputError(
                f"unknown environment {name!r}",
                resource=self.source,
                fix=f"use one of: {known}, or add [environments.{name}] to {self.source}",
            )
        return self.environments[name]


def parse(text: str, source: str = DEFAULT_CONFIG) -> DeployConfig:
    """Parse and validate deploy.toml text. The embedded lab is added; a deploy.toml's own
    [environments.lab] (provider "lab") sets keys over it, one of another provider replaces
    it."""
    try:
        data = tomllib.loads(text) if text.strip() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML ({exc})", resource=source,
                          fix="correct the syntax at the line and column shown") from None
    if not isinstance(data.get("environments", {}), dict):
        raise ConfigError("environments must be a table", resource=source,
                          fix="write [environments.NAME] sections")
    envs = dict(data.get("environments", {}))
    defines_lab = "lab" in envs
    lab = tomllib.loads(LAB_ENVIRONMENT_FILE.read_text())["environments"]["lab"]
    if "lab" not in envs:
        envs["lab"] = lab
    elif isinstance(envs["lab"], dict) and envs["lab"].get("provider", "lab") == "lab":
        # A team's lab: the embedded one with its keys over it (its app, its build).
        envs["lab"] = {**lab, **envs["lab"]}
    for name, body in envs.items():
        if not isinstance(body, dict):
            raise ConfigError(f"environments.{name} must be a table", resource=source,
                              fix=f"write [environments.{name}] with its keys below it")
        if not ENV_NAME.fullmatch(name):
            raise ConfigError(f"environment name {name!r} is not valid", resource=source,
                              fix="use lower-case letters, digits and '-', e.g. staging")
        if body.get("name", name) != name:
            raise ConfigError(f"environments.{name}.name = {body['name']!r} differs from the "
                              "section's name", resource=source,
                              fix=f"remove it: the name is the section's, {name}")
        body["name"] = name
    data["environments"] = envs
    data["source"] = source
    data["defines_lab"] = defines_lab
    try:
        config = DeployConfig.model_validate(data)
    except ValidationError as exc:
        from deploylib.schema import error_line

        raise error_line(source, exc) from None
    if config.default_environment not in config.environments:
        raise ConfigError(
            f"default_environment = {config.default_environment!r} names no environment",
            resource=source, fix=f"use one of: {', '.join(sorted(config.environments))}",
        )
    _check_kept_apart(config)
    return config


def _check_kept_apart(config: DeployConfig) -> None:
    """Two environments that may share an account (one provider, and one account_id or
    one of them without) must not name one target group or server-group prefix: the
    policy each is given scopes those by name, so a shared name would let each register
    hosts in the other's target group or scale the other's groups."""
    envs = sorted(config.environments.values(), key=lambda e: e.name)
    for i, one in enumerate(envs):
        for other in envs[i + 1:]:
            if one.provider != other.provider or (
                    one.account_id and other.account_id and one.account_id != other.account_id):
                continue
            shared = [f"target group {one.network(r)[2]!r} in {r}" for r in one.all_regions
                      if r in other.all_regions and one.network(r)[2] == other.network(r)[2]]
            if one.group_prefix == other.group_prefix:
                shared.append(f"server groups {one.group_prefix}-v*")
            if shared:
                raise ConfigError(
                    f"environments {one.name} and {other.name} may share an account and both "
                    f"use {shared[0]}", resource=config.source,
                    fix=f"give each its own (e.g. target_group = "
                    f"\"{one.network(one.primary_region)[2]}-{other.name}\" in "
                    f"[environments.{other.name}]), or set a different account_id on each: "
                    "an account per environment keeps them apart")


def load(path: str | os.PathLike | None = None) -> DeployConfig:
    """Load deploy.toml (or $DEPLOY_CONFIG); a missing default file means the lab only."""
    explicit = path or os.environ.get("DEPLOY_CONFIG")
    target = Path(explicit or DEFAULT_CONFIG)
    if not target.exists():
        if explicit:
            raise InputError(f"config file {str(target)!r} does not exist",
                             fix="pass --config with the path of your deploy.toml")
        return parse("", source="(embedded lab)")
    try:
        text = target.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read it ({exc.__class__.__name__})", resource=str(target),
                          fix="make it a readable UTF-8 text file") from None
    return parse(text, source=str(target)).relative_to(target.resolve().parent)
