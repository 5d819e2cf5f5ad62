"""templates/iam-policy.json against what the tool really calls.

Every AWS call the tool's own code makes during the test session is logged through a
botocore `before-call` hook (deploylib.aws, enabled by conftest), in this process and in
every `invoke` the tests start. This test runs last: each call must be allowed by the
policy, and, when the whole suite ran, each action the policy grants must have been
used — a grant nothing needs is a grant an attacker could use.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from deploylib.aws import API_LOG_ENV
from tests.conftest import REPO

POLICY = REPO / "templates/iam-policy.json"
# botocore's signing name is IAM's service prefix for these; S3's operations map to the
# actions that authorise them.
S3_ACTIONS = {"HeadObject": "GetObject", "GetObject": "GetObject", "PutObject": "PutObject",
              "CreateMultipartUpload": "PutObject", "UploadPart": "PutObject",
              "CompleteMultipartUpload": "PutObject",
              "AbortMultipartUpload": "AbortMultipartUpload"}


def action(call: str) -> str:
    service, operation = call.split(":", 1)
    if service == "s3":
        operation = S3_ACTIONS.get(operation, operation)
    return f"{service}:{operation}"


def granted() -> set[str]:
    doc = json.loads(POLICY.read_text())
    out: set[str] = set()
    for statement in doc["Statement"]:
        assert statement["Effect"] == "Allow"
        actions = statement["Action"]
        out |= set([actions] if isinstance(actions, str) else actions)
    assert not any("*" in a for a in out), "the policy grants actions by wildcard"
    return out


def used() -> set[str]:
    log = Path(os.environ[API_LOG_ENV])
    return {action(line) for line in log.read_text().split()} if log.exists() else set()


def test_every_call_the_tool_made_is_granted_and_every_grant_is_used(request):
    calls = used()
    assert calls, "no AWS call was logged: is the before-call hook installed?"
    missing = calls - granted()
    assert not missing, f"the tool called these, the policy does not grant them: {missing}"
    ran = {item.path.parent.name for item in request.session.items}
    if "lab" in ran:
        unused = granted() - calls
        assert not unused, f"the policy grants these, no test made the tool use them: {unused}"


def test_the_policy_scopes_data_to_the_tools_own_resources():
    doc = json.loads(POLICY.read_text())
    by_sid = {s["Sid"]: s for s in doc["Statement"]}
    assert by_sid["ArtifactStore"]["Resource"].endswith("/releases/*")
    assert by_sid["LiveRecord"]["Resource"].endswith(":parameter/deploylib/*")
    assert "table/" in by_sid["DeployLock"]["Resource"]
