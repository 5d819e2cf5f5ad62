"""What is live in an environment, read from AWS: the record, each region's target group
and the hosts the balancer routes to. Reads only; the one way the steps, `invoke status`,
gc and the tests look these up."""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    ValidationError,
    model_validator,
)

from deploylib import aws
from deploylib.config import Environment
from deploylib.errors import StateError
from deploylib.facts import (
    FoundationKey,
    GroupName,
    ImageId,
    Mode,
    Region,
    RunId,
    Sha256,
    Version,
    VersionId,
    first_error,
)
from deploylib.ledger import Entry


class Previous(BaseModel):
    """What was live before (what a rollback makes live again)."""

    model_config = ConfigDict(extra="ignore")
    release: Version | None = None
    sha256: Sha256 | None = None
    version_id: VersionId | None = None
    images: dict[Region, ImageId] = Field(default_factory=dict)
    server_groups: dict[Region, GroupName] | None = None
    procedure: Mode | None = None
    run_id: RunId | None = None

    @model_validator(mode="after")
    def _release_with_its_digest(self) -> Previous:
        if (self.release is None) != (self.sha256 is None):
            raise ValueError("a previous release needs its sha256, and a sha256 its release")
        return self


class Foundation(BaseModel):
    """A foundation image this environment's own run made (the bake cache): what a later
    bake may start from — named here, never found by its tags."""

    model_config = ConfigDict(extra="ignore")
    image: ImageId
    key: FoundationKey


class Record(BaseModel):
    """The environment's record as steps.fleet.record writes it. Whoever may write the
    parameter could otherwise steer every host: each value is held to its shape."""

    model_config = ConfigDict(extra="ignore")
    release: Version
    sha256: Sha256
    # the artifact's S3 version, when the bucket keeps versions
    version_id: VersionId | None = None
    images: dict[Region, ImageId] = Field(default_factory=dict)
    # region -> the server group serving it (fleet = "server-groups")
    server_groups: dict[Region, GroupName] | None = None
    procedure: Mode
    run_id: RunId
    recorded_at: str = ""
    # region -> what its new hosts launch from and what lies on top (deploylib.ledger)
    ledger: dict[Region, Entry] | None = None
    previous: Previous | None = None
    # the token of the lock's take the record was written under (deploylib.lock)
    fence: NonNegativeInt | None = None
    # region -> the foundation image its bakes may start from (deploylib.steps.bake)
    foundations: dict[Region, Foundation] | None = None


def record(clients: aws.AwsClients, env: Environment) -> dict[str, Any] | None:
    """The environment's record (`/deploylib/<env>/live`), or None before a first release;
    a record with a value of the wrong shape stops the command in one line."""
    raw = aws.ssm.read_record(clients.ssm(), env.record_parameter)
    if raw is None:
        return None
    try:
        return Record.model_validate(raw).model_dump(mode="json", exclude_none=True)
    except ValidationError as exc:
        raise StateError(f"the live record holds a bad value: {first_error(exc)}",
                         resource=f"parameter {env.record_parameter}",
                         fix="restore a good version from its history (aws ssm "
                         f"get-parameter-history --name {env.record_parameter})") from None


def target_group(clients: aws.AwsClients, env: Environment, region: str) -> str:
    """The ARN of the region's target group (deploy.toml names it or gives its ARN)."""
    _, _, name = env.network(region)
    return aws.elb.resolve_target_group(clients.elbv2(region), name, region)


def hosts(clients: aws.AwsClients, env: Environment, region: str,
          group: str | None = None) -> list[str]:
    """The instances registered and healthy in the region's target group."""
    return aws.elb.healthy(clients.elbv2(region), region,
                           group or target_group(clients, env, region))
