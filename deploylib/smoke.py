"""Smoke tests: a team's pytest directory run against the candidates, and JUnit XML.

The tests get the candidates as JSON in DEPLOY_SMOKE_TARGETS (instance id, address,
base URL), the release in DEPLOY_SMOKE_VERSION and the health path in
DEPLOY_SMOKE_HEALTH (examples/smoke/ shows the shape). Both the built-in health checks
and the team's tests write JUnit XML, which the Jenkinsfile publishes.

A smoke test is the team's code, run beside the deploy's credentials, its SSH agent (a
key to every host, with sudo) and its Jenkins token: it gets an environment of its own,
built from a short list (`KEPT`, and the environment's `smoke_env`), with a HOME of its
own, empty, rather than the deploy's minus what is known to be secret.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def junit_dir(state_dir: str, run_id: str) -> Path:
    """Where a run's JUnit XML goes (the Jenkinsfile's `junit` step reads it)."""
    return Path(state_dir) / run_id / "junit"


def write_junit(path: Path, suite: str, cases: dict[str, tuple[float, str | None]]) -> None:
    """One JUnit suite: case name -> (seconds, failure message or None)."""
    root = ET.Element("testsuite", name=suite, tests=str(len(cases)),
                      failures=str(sum(1 for _, err in cases.values() if err)))
    for name, (seconds, error) in cases.items():
        case = ET.SubElement(root, "testcase", classname=suite, name=name,
                             time=f"{seconds:.3f}")
        if error:
            ET.SubElement(case, "failure", message=error[:500]).text = error
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="unicode", xml_declaration=True)


@dataclass(frozen=True)
class Outcome:
    exit_code: int
    summary: str  # pytest's last line, e.g. "3 passed in 0.41s"

    @property
    def passed(self) -> bool:
        return self.exit_code == 0


# What the smoke tests always get: where programs are, the locale and time zone, where
# temporary files go.
KEPT = re.compile(r"^(PATH|LANG|LANGUAGE|LC_[A-Z]+|TZ|TMPDIR)$")
# What they never get, even named in smoke_env: the deploying identity's AWS
# credentials and settings, its SSH agent, the deploy bot's Jenkins credentials.
_NEVER = re.compile(r"^(AWS_.*|SSH_AUTH_SOCK|SSH_AGENT_PID|JENKINS_.*|DEPLOY_.*)$")


def never_passed(name: str) -> bool:
    return bool(_NEVER.match(name))


def environment(environ: Mapping[str, str], home: Path, extra: Iterable[str] = ()
                ) -> dict[str, str]:
    """The smoke tests' environment: `KEPT` and the `extra` names from `environ`, nothing
    `never_passed`, and HOME (XDG's too) an empty directory of theirs."""
    wanted = set(extra)
    env = {k: v for k, v in environ.items()
           if (KEPT.match(k) or k in wanted) and not never_passed(k)}
    env.setdefault("PATH", os.defpath)
    return dict(env, HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
                XDG_CACHE_HOME=str(home / ".cache"))


def run(tests: str, targets: list[dict[str, Any]], *, version: str, health_path: str,
        report: Path, timeout: float, extra_env: Iterable[str] = ()) -> Outcome:
    """Run the team's smoke tests (pytest) against the targets, JUnit XML to `report`."""
    with tempfile.TemporaryDirectory(prefix="deploylib-smoke-") as home:
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"--junitxml={Path(report).resolve()}", tests],
            env=dict(environment(os.environ, Path(home), extra_env),
                     DEPLOY_SMOKE_TARGETS=json.dumps(targets), DEPLOY_SMOKE_VERSION=version,
                     DEPLOY_SMOKE_HEALTH=health_path),
            capture_output=True, text=True, timeout=timeout)
    return Outcome(proc.returncode, (proc.stdout.strip().splitlines() or [""])[-1])
