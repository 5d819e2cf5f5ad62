"""release.toml: how a release runs, said by the release itself (as CodeDeploy's appspec
says it), so any runtime deploys — a JVM, Go, Node or Ruby service as well as Python.

    # release.toml, at the release's root (every key optional; deploy.toml's
    # [environments.NAME.app] gives the defaults)
    start = "bin/server --threads 4"     # run from the release, as the app's user; exec'd
    reload = "kill -HUP $MAINPID"        # a graceful reload (reload = "graceful")
    stop_signal = "SIGTERM"              # what stops it, and how long it may take
    stop_timeout = 30
    health_path = "/health"              # must be the environment's (its target group's)
    port_variable = "PORT"               # the variable the app reads its port from

    [hooks]                              # each run as the app's user, in the release
    before_install = "bin/check-config"  # unpacked, not yet switched to: failing refuses it
    after_install = "bin/migrate"        # switched to, not yet started: failing switches back
    validate = "bin/selftest"            # started and healthy: failing switches back

The host reads the file too (deploylib/templates/release.sh.j2, in plain shell: a host
need not have Python), so a release.toml is held to a plain subset of TOML, checked here
before a release is published: one `key = value` a line, strings in double quotes without
backslashes (or in single quotes), whole numbers, a `[hooks]` table, comments on lines of
their own. Every error is one line naming the line and the fix.
"""

from __future__ import annotations

import re
import tarfile
import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from deploylib.errors import InputError

FILE = "release.toml"
# The signals a service may be stopped with (systemd's KillSignal=).
SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH",
           "SIGKILL")
_VARIABLE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_PATH = re.compile(r"^/[A-Za-z0-9._~/%+-]*$")
# The subset of TOML the host's reader takes (release.sh.j2): what else is valid TOML is
# refused here, so the host never meets it.
_SECTION = re.compile(r"^\[hooks\]$")
_ENTRY = re.compile(r"""^([a-z_]+) = ("[^"\\]*"|'[^']*'|[0-9]+)$""")
_COMMENT = re.compile(r"^(#.*)?$")
_HOOKS = ("before_install", "after_install", "validate")


class Hooks(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    before_install: str | None = Field(default=None,
        description="Run in the release unpacked, before it is switched to; failing refuses it.")
    after_install: str | None = Field(default=None,
        description="Run once the release is switched to, before the app restarts on it; "
        "failing switches back.")
    validate_: str | None = Field(default=None, alias="validate",
        description="Run once the app is healthy on the release; failing switches back.")


class Manifest(BaseModel):
    """How a release runs; every key optional here (the environment's defaults fill in)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    start: str | None = Field(default=None,
        description="The command that runs the app, from the release's directory, as the "
        "app's user (exec'd: it is the service's main process).")
    reload: str | None = Field(default=None,
        description="The command that reloads the app gracefully (systemd's ExecReload: "
        "$MAINPID is the main process); needed for reload = \"graceful\".")
    stop_signal: str | None = Field(default=None,
        description="The signal that stops the app (default SIGTERM).")
    stop_timeout: int | None = Field(default=None, ge=1, le=3600,
        description="Seconds the app has to stop before it is killed (default 90).")
    health_path: str | None = Field(default=None,
        description="The app's health path: must be the environment's `health_path` (the "
        "target group checks that one).")
    port_variable: str | None = Field(default=None,
        description="The environment variable the app reads its port from (default "
        "APP_PORT; APP_PORT is always set too).")
    hooks: Hooks = Field(default_factory=Hooks,
        description="Commands run around the install, as the app's user, in the release.")

    @field_validator("start", "reload")
    @classmethod
    def _command(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\n" in v):
            raise ValueError("must be one non-empty line of shell")
        return v

    @field_validator("stop_signal")
    @classmethod
    def _signal(cls, v: str | None) -> str | None:
        if v is not None and v not in SIGNALS:
            raise ValueError(f"must be one of {', '.join(SIGNALS)}")
        return v

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, v: str | None) -> str | None:
        if v is not None and not _PATH.fullmatch(v):
            raise ValueError("must be a URL path such as /health")
        return v

    @field_validator("port_variable")
    @classmethod
    def _port_variable(cls, v: str | None) -> str | None:
        if v is not None and not _VARIABLE.fullmatch(v):
            raise ValueError("must be an environment variable name such as PORT")
        return v

    def over(self, defaults: Manifest) -> Manifest:
        """This release's keys over the environment's defaults."""
        mine = self.model_dump(exclude_none=True, by_alias=True)
        hooks = {**defaults.hooks.model_dump(exclude_none=True, by_alias=True),
                 **mine.pop("hooks", {})}
        return Manifest.model_validate({**defaults.model_dump(exclude_none=True, by_alias=True),
                                        **mine, "hooks": hooks})

    def for_host(self) -> dict[str, Any]:
        """What the host's scripts are given as the defaults (release.sh.j2)."""
        return {"start": self.start or "", "reload": self.reload or "",
                "stop_signal": self.stop_signal or "SIGTERM",
                "stop_timeout": self.stop_timeout or 90,
                "port_variable": self.port_variable or "APP_PORT",
                "before_install": self.hooks.before_install or "",
                "after_install": self.hooks.after_install or "",
                "validate": self.hooks.validate_ or ""}


def parse(text: str, *, source: str = FILE) -> Manifest:
    """A release.toml's text, held to the subset the host reads; errors name the line."""
    section = ""
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if _COMMENT.fullmatch(line):
            continue
        if _SECTION.fullmatch(line):
            section = "hooks"
            continue
        if line.startswith("["):
            raise InputError(f"{source} line {number}: {line!r} is not a table it knows",
                             fix="the only table is [hooks]")
        if not _ENTRY.fullmatch(line):
            raise InputError(
                f"{source} line {number}: {line!r} is not `key = \"value\"` or `key = 123`",
                fix="one key a line, the value in double quotes without backslashes (or in "
                "single quotes), or a whole number; comments on lines of their own")
        if section and line.split(" = ")[0] not in _HOOKS:
            raise InputError(f"{source} line {number}: [hooks] has no {line.split()[0]!r}",
                             fix="use before_install, after_install or validate")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{source} is not valid TOML ({exc})",
                         fix="correct the line it names") from None
    try:
        return Manifest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            known = ", ".join(Manifest.model_fields)
            raise InputError(f"{source}: {key} is not a key of release.toml",
                             fix=f"use one of {known}") from None
        raise InputError(f"{source}: {key} {first['msg'].removeprefix('Value error, ')}",
                         fix="see the keys in docs/releases.md") from None


def of_artifact(path: str | Path) -> Manifest | None:
    """The release.toml a release tarball carries at its root, or None."""
    with tarfile.open(path, "r:gz") as tar:
        for member in tar:
            if member.isfile() and member.name.removeprefix("./") == FILE:
                data = tar.extractfile(member)
                text = data.read().decode("utf-8", "replace") if data else ""
                return parse(text, source=f"{Path(path).name}:{FILE}")
    return None


def effective(path: str | Path, defaults: Manifest, *, health_path: str,
              env_name: str) -> Manifest:
    """How the release at `path` runs in an environment: its release.toml over the
    environment's defaults, checked whole (a start command; the environment's health
    path)."""
    own = of_artifact(path)
    runs = own.over(defaults) if own is not None else defaults
    if not runs.start:
        raise InputError(
            f"the release {Path(path).name} says no start command and the environment "
            f"{env_name} gives none", resource=str(path),
            fix=f"add `start = \"…\"` to the app's {FILE}, or set app = {{ start = \"…\" }} "
            f"in [environments.{env_name}]")
    if runs.health_path and runs.health_path != health_path:
        raise InputError(
            f"the release's health_path {runs.health_path} is not the environment's "
            f"{health_path} (its target group checks that one)", resource=str(path),
            fix=f"make them the same: health_path in {FILE} or in deploy.toml")
    return runs
