"""Smoke tests: a team's pytest directory run against the candidates, and JUnit XML.

The tests get the candidates as JSON in DEPLOY_SMOKE_TARGETS (instance id, address,
base URL), the release in DEPLOY_SMOKE_VERSION and the health path in
DEPLOY_SMOKE_HEALTH (examples/smoke/ shows the shape). Both the built-in health checks
and the team's tests write JUnit XML, which the Jenkinsfile publishes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Mapping
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


# What the team's smoke tests never see: the deploying identity's AWS credentials and the
# deploy bot's Jenkins token (a test is the team's code, run next to them).
_SECRET = re.compile(r"^(AWS_|JENKINS_API_TOKEN$|JENKINS_PASSWORD$)")


def _without_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in environ.items() if not _SECRET.match(k)}


def run(tests: str, targets: list[dict[str, Any]], *, version: str, health_path: str,
        report: Path, timeout: float) -> Outcome:
    """Run the team's smoke tests (pytest) against the targets, JUnit XML to `report`."""
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", tests],
        env=dict(_without_secrets(os.environ), DEPLOY_SMOKE_TARGETS=json.dumps(targets),
                 DEPLOY_SMOKE_VERSION=version, DEPLOY_SMOKE_HEALTH=health_path),
        capture_output=True, text=True, timeout=timeout)
    return Outcome(proc.returncode, (proc.stdout.strip().splitlines() or [""])[-1])
