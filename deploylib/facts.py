"""What a run's stages produced, typed: the `facts` of its state file.

Each field says which stages write it and which read it. Everything a later stage
needs is here, so any stage can run in its own process and a failed run can be
resumed; nothing secret is (no credential, no presigned URL), and nothing a run can
look up again cheaply is kept (target groups are resolved per process).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    StringConstraints,
    ValidationError,
    model_validator,
)

from deploylib import config, plan
from deploylib.errors import InputError


def _version(value: str) -> str:
    try:
        return config.check_version(value)
    except InputError as exc:  # pydantic reports ValueErrors, with where it was
        raise ValueError(exc.problem) from None


def _mode(value: str) -> str:
    if value not in (*plan.MODES, *plan.ROLLBACK_MODES, plan.FOLD):
        raise ValueError(f"{value!r} is not a procedure")
    return value


# What a host reads back from the record at boot, as regular expressions: one definition,
# which the models here and the boot (templates/boot_record.py, given these) both hold the
# record's values to.
RECORD_SHAPES = {
    "release": config.VERSION.pattern,
    "sha256": r"^[0-9a-f]{64}$",
    # an S3 object version (opaque; URL-safe characters, as S3 makes them)
    "version_id": r"^[A-Za-z0-9._-]{1,1024}$",
}

# The values a run reads back (its state file, a handoff, the live record) reach host
# scripts, paths and API calls: each is held to the same shape as input is.
Version = Annotated[str, AfterValidator(_version)]
Mode = Annotated[str, AfterValidator(_mode)]  # a procedure, rollbacks included
Sha256 = Annotated[str, StringConstraints(pattern=RECORD_SHAPES["sha256"])]
Region = Annotated[str, StringConstraints(pattern=config.REGION.pattern)]
InstanceId = Annotated[str, StringConstraints(pattern=r"^i-[0-9a-f]{8,17}$")]
ImageId = Annotated[str, StringConstraints(pattern=config.IMAGE_ID.pattern)]
RunId = Annotated[str, StringConstraints(pattern=config.RUN_ID.pattern)]
Bucket = Annotated[str, StringConstraints(pattern=config.BUCKET.pattern)]
VersionId = Annotated[str, StringConstraints(pattern=RECORD_SHAPES["version_id"])]
# The bake cache's key (steps.bake.foundation_key): 32 hex digits
FoundationKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32}$")]
# A server group: `<service>-<env>-vNNN` (aws.autoscaling.group_name)
GroupName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,240}-v[0-9]{3,}$")]


def first_error(exc: ValidationError) -> str:
    """A pydantic error as one line: where, and what was wrong (its value's repr, so a
    line break in it stays on one line)."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    if err["type"] == "missing":
        return f"{where} is missing"
    return f"{where} = {err.get('input')!r}: {err['msg']}"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class Release(_Model):
    """One published release: what the install step fetches and checks."""

    version: Version
    sha256: Sha256
    bucket: Bucket
    key: str
    size: int | None = None
    # The object's version as published (a versioned bucket): what is fetched, whatever
    # was put at the key since. None: the bucket keeps no versions.
    version_id: VersionId | None = None

    @model_validator(mode="after")
    def _key_is_the_versions(self) -> Release:
        # The store's layout (steps.release.artifact_key): never another object.
        env, _, name = self.key.removeprefix("releases/").partition("/")
        if not (self.key.startswith("releases/") and config.ENV_NAME.fullmatch(env)
                and name == f"{self.version}.tar.gz"):
            raise ValueError(f"key {self.key!r} is not release {self.version}'s")
        return self


class HostRef(_Model):
    """One instance, by region and id (what batches are made of)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    region: Region
    instance_id: InstanceId


class Builder(_Model):
    region: Region
    instance_id: InstanceId
    base_image: ImageId
    foundation: FoundationKey  # the bake cache's key for the base image + provision script
    cache_hit: bool  # launched from a foundation image: provisioning is skipped
    foundation_image: ImageId | None = None  # the one this bake started (cache-foundation)
    terminated: bool = False
    source_image: ImageId | None = None  # what it was launched from (base or foundation)
    # launched from the region's live image (a fold), not a bake's base: its image is a
    # layer over that one
    from_live: bool = False


class Revert(_Model):
    """What a stopped rollout switches back: the live release, and the updated hosts not
    serving it, by the number of the batch they were updated in."""

    release: Release
    batches: dict[int, list[HostRef]]


class Notice(_Model):
    """A hotfix's notice to Jenkins' record job."""

    job: str
    parameters: dict[str, str]
    sent: bool = False
    queue_item: int | None = None


class Handoff(_Model):
    """Where `invoke bake` handed test-and-promote to, and how it went."""

    job: str
    number: int | None = None
    url: str | None = None
    result: str | None = None
    error: str | None = None


class Window(_Model):
    """A verification window and its verdict (deploylib.steps.verify)."""

    stage: str  # the stage key it watched after (rollout/1/verify, verify)
    regions: list[Region]
    began: float
    ended: float | None = None
    passed: bool | None = None  # None: under way
    why: str = ""


class Facts(_Model):
    # start, the artifact's digest as it was checked | publish-release (the same file)
    artifact_sha256: Sha256 | None = None
    # the token of the run's latest take of its lock (deploylib.lock): start, adopt, each
    # whole run or resume | a Jenkins stage's renewals and writes
    lock_fence: NonNegativeInt | None = None
    # publish-release, locate-previous, or the handoff (adopt) | install-release,
    # health-check, smoke-test, record, notify, the bake's handoff
    release: Release | None = None
    # start (the lab's first bake) | launch-candidates, when nothing is live yet
    fleet_size: int | None = None
    # launch-builder; cache-foundation, terminate-builder, discard-builder update it |
    # wait-ssh, provision, install-release, stop-builder, create-image (its targets)
    builder: Builder | None = None
    # region -> its builder, in a per-region bake (bake = "per-region"): the same steps,
    # each region's own (ctx.builder picks it)
    builders: dict[Region, Builder] = Field(default_factory=dict)
    # region -> image: create-image, copy-image, locate-previous, adopt; discard-images
    # empties it | wait-image, launch-candidates, record, discard-builder, the handoff
    images: dict[Region, ImageId] = Field(default_factory=dict)
    # region -> instances: launch-candidates; discard-candidates | wait-ssh,
    # install-release, smoke-test, promote (its targets), demote
    candidates: dict[Region, list[InstanceId]] = Field(default_factory=dict)
    # region -> the server group this run made (fleet = "server-groups"):
    # launch-candidates; discard-candidates | promote, demote, record, retire
    server_groups: dict[Region, GroupName] = Field(default_factory=dict)
    # region -> [group, template, version] it launched from before fold-template pointed
    # it at the run's image: fold-template | restore-templates
    folded_from: dict[Region, list[str]] = Field(default_factory=dict)
    # region -> the server group its promotion took out of service: promote; demote |
    # retire, demote
    replaced_groups: dict[Region, GroupName] = Field(default_factory=dict)
    # region -> the hosts its promotion replaced: promote; demote | retire, demote,
    # discard-images, discard-candidates
    promoted: dict[Region, list[InstanceId]] = Field(default_factory=dict)
    # region -> hosts terminated: retire | retire (a resume retires only the rest)
    retired: dict[Region, list[InstanceId]] = Field(default_factory=dict)
    # select-hosts | the rollout (its batches), notify
    batches: list[list[HostRef]] | None = None
    # instance -> error: the rollout, within max_failed_hosts | locate-live, notify
    failed_hosts: dict[InstanceId, str] = Field(default_factory=dict)
    # locate-live | the rollout's switch-back of updated hosts
    revert: Revert | None = None
    # instances switched back: the rollout | locate-live (never twice)
    rolled_back: list[InstanceId] = Field(default_factory=list)
    # notify; `invoke jenkins.notify` | notify (a kept notice is sent later)
    notice: Notice | None = None
    # the bake's handoff | the operator (`invoke bake` reports it)
    handoff: Handoff | None = None
    # adopt: the bake phase ran elsewhere and handed this run over
    adopted: bool = False
    # cleanup step -> "done" or "failed: …": the engine's cleanup | `invoke cleanup`
    cleanup: dict[str, str] = Field(default_factory=dict)
    # cleanup step -> when it was done (epoch seconds): the engine's cleanup | the
    # benchmarks (how soon a failed window's demote put the previous hosts back)
    cleaned_at: dict[str, float] = Field(default_factory=dict)
    # cleanup step -> ids it removed: discard-* | the engine, to rewind the run
    discarded: dict[str, list[str]] = Field(default_factory=dict)
    # --keep-on-error left the run's resources in place | the operator
    kept_on_error: bool = False
    # SSH connections the run opened, over all its processes | the benchmarks
    ssh_connections: int = 0
    # verification windows, in order, with their verdicts: verify | status, the report
    windows: list[Window] = Field(default_factory=list)
    # A team's own steps keep what they like here (plugins; README, "Your own steps").
    team: dict[str, Any] = Field(default_factory=dict)
