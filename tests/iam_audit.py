"""The IAM policy check: every AWS call the tool makes during the suite must be granted
by deploylib/templates/iam-policy.json, and every action the policy grants must be used.

The tool is observed the way AWS's own tooling observes a client (iamlive does the
same): botocore's client-side monitoring sends one UDP datagram per API call to a
listener, here on loopback in the session's main process. Only the tool as an operator
runs it is observed: the commands the tests start (`invoke …`, with AWS_CSM_* set by
`client_side_monitoring`), never the tests' own set-up calls, nor the lab's (its daemon
drops the variables). Nothing of this is in deploylib.

The check runs once, when the whole session has finished, in the main process (under
pytest-xdist the workers' commands all report to it): a call not granted, or — when the
whole suite ran — a grant no call used, fails the run with the list. When the run was
narrowed (some tests chosen or deselected), the second half is reported as not checked.
"""

from __future__ import annotations

import json
import os
import select
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from deploylib.lab import iam as lab_iam

POLICY = Path(__file__).resolve().parent.parent / "deploylib/templates/iam-policy.json"
# Granted besides, to an environment whose volumes use keys of its own (kms_keys).
KMS_POLICY = POLICY.with_name("iam-policy-kms.json")
# And to one reached by Run Command (transport = "ssm").
RUNCOMMAND_POLICY = POLICY.with_name("iam-policy-runcommand.json")
PORT_ENV = "DEPLOY_TEST_CSM_PORT"
CLIENT_ID = "deploylib-under-test"
# botocore's service ids, as client-side monitoring names them -> IAM's prefixes.
SERVICES = {"EC2": "ec2", "Elastic Load Balancing v2": "elasticloadbalancing", "S3": "s3",
            "SSM": "ssm", "DynamoDB": "dynamodb", "STS": "sts", "KMS": "kms",
            "Auto Scaling": "autoscaling"}
# S3's operations map to the actions that authorise them.
S3_ACTIONS = {"HeadBucket": "ListBucket", "HeadObject": "GetObject", "GetObject": "GetObject",
              "PutObject": "PutObject",
              "CreateMultipartUpload": "PutObject", "UploadPart": "PutObject",
              "CompleteMultipartUpload": "PutObject",
              "AbortMultipartUpload": "AbortMultipartUpload"}


# Actions AWS asks for beyond the one an operation names. HeadObject of a key not yet
# there answers 404 only with s3:ListBucket on the bucket, 403 without (the first publish
# of every release asks); boto3's upload_file goes multipart above 8 MB and aborts a
# failed upload.
# Client-side monitoring names the operation (GetObject, HeadObject), not whether it named
# an object version (s3:GetObjectVersion, which the lab bucket's versioned releases are
# fetched by): the lab's enforcement refuses a versioned read without that grant.
# A server group whose launch template names an instance profile is created only by a
# caller who may pass its role to EC2 (the Auto Scaling user guide, "IAM role for
# applications that run on Amazon EC2 instances").
IMPLIED = {"s3:GetObject": {"s3:ListBucket", "s3:GetObjectVersion"},
           "s3:PutObject": {"s3:AbortMultipartUpload"},
           "autoscaling:CreateAutoScalingGroup": {"iam:PassRole"}}


def client_side_monitoring() -> dict[str, str]:
    """The variables that make botocore report the tool's calls to this session."""
    port = os.environ.get(PORT_ENV)
    if not port:
        return {}
    return {"AWS_CSM_ENABLED": "true", "AWS_CSM_HOST": "127.0.0.1", "AWS_CSM_PORT": port,
            "AWS_CSM_CLIENT_ID": CLIENT_ID}


def action(service: str, api: str) -> str:
    prefix = SERVICES.get(service, service.lower())
    if prefix == "s3":
        api = S3_ACTIONS.get(api, api)
    return f"{prefix}:{api}"


def granted(policy: dict) -> set[str]:
    out: set[str] = set()
    for statement in policy["Statement"]:
        actions = statement["Action"]
        out |= set([actions] if isinstance(actions, str) else actions)
    return out


@dataclass
class Verdict:
    missing: set[str]  # called, not granted
    unused: set[str] | None  # granted, never called (None: not checked)
    calls: int

    @property
    def failed(self) -> bool:
        return bool(self.missing or self.unused)


# Allowed to every identity whatever its policies (the lab allows them as AWS does).
ALWAYS_ALLOWED = lab_iam.ALWAYS_ALLOWED
# Called as the identity the deploy role is assumed from (role_arn), before the role: its
# grant is that identity's and the role's trust policy, not the deploy policy's.
BEFORE_THE_ROLE = frozenset({"sts:AssumeRole"})


def load_policy() -> dict:
    """Every statement the tool may be granted: the policy, its KMS and Run Command parts."""
    policy = json.loads(POLICY.read_text())
    policy["Statement"] += json.loads(KMS_POLICY.read_text())["Statement"]
    policy["Statement"] += json.loads(RUNCOMMAND_POLICY.read_text())["Statement"]
    return policy


def _on_callers_behalf(statement: dict) -> bool:
    # kms:ViaService grants are used by EC2 for the caller (launch, image, copy of an
    # encrypted volume), never called by the tool itself.
    return any("kms:ViaService" in test for test in statement.get("Condition", {}).values())


def verdict(used: set[str], policy: dict, *, calls: int, whole_suite: bool) -> Verdict:
    grants = granted(policy)
    called = granted({"Statement": [s for s in policy["Statement"]
                                    if not _on_callers_behalf(s)]})
    used = used.union(*(IMPLIED.get(a, set()) for a in used)) - ALWAYS_ALLOWED - BEFORE_THE_ROLE
    return Verdict(missing=used - grants, unused=(called - used) if whole_suite else None,
                   calls=calls)


@dataclass
class Listener:
    """A UDP socket on loopback collecting client-side monitoring's ApiCall messages."""

    sock: socket.socket = field(default_factory=lambda: socket.socket(socket.AF_INET,
                                                                      socket.SOCK_DGRAM))
    used: set[str] = field(default_factory=set)
    calls: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> int:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        threading.Thread(target=self._loop, daemon=True, name="csm").start()
        return self.sock.getsockname()[1]

    def _take(self, data: bytes) -> None:
        try:
            msg = json.loads(data)
        except ValueError:
            return
        if msg.get("Type") == "ApiCall" and msg.get("ClientId") == CLIENT_ID:
            with self._lock:
                self.used.add(action(msg.get("Service", ""), msg.get("Api", "")))
                self.calls += 1

    def _loop(self) -> None:
        while True:
            try:
                self._take(self.sock.recv(65536))
            except OSError:
                return

    def drain(self) -> None:
        """Everything already sent is in the socket's buffer: read it to the end."""
        while select.select([self.sock], [], [], 0.0)[0]:
            try:
                self._take(self.sock.recv(65536, socket.MSG_DONTWAIT))
            except BlockingIOError:
                break


_listener: Listener | None = None
_ran: set[str] = set()
_result: Verdict | None = None


def _is_main(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    global _listener
    if _is_main(config) and not os.environ.get(PORT_ENV):
        _listener = Listener()
        os.environ[PORT_ENV] = str(_listener.start())  # workers and commands inherit it


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call":
        _ran.add(report.nodeid)


def whole_suite(config: pytest.Config) -> bool:
    o = config.option
    narrowed = any(getattr(o, name, None) for name in (
        "keyword", "markexpr", "deselect", "ignore", "ignore_glob", "lf", "maxfail"))
    chosen = [a for a in config.args if a not in config.getini("testpaths")]
    return not (narrowed or chosen)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    global _result
    if _listener is None or not _is_main(session.config) or not _ran:
        return
    _listener.drain()
    policy = load_policy()
    _result = verdict(_listener.used, policy, calls=_listener.calls,
                      whole_suite=whole_suite(session.config)
                      and any(n.startswith("tests/lab/") for n in _ran))
    if _result.failed and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter) -> None:  # noqa: ANN001 - pytest's reporter
    if _result is None:
        return
    tr = terminalreporter
    tr.section("IAM policy (deploylib/templates/iam-policy.json) against the tool's AWS calls")
    tr.line(f"{_result.calls} calls observed, {len(_listener.used) if _listener else 0} "
            "distinct actions")
    if _result.missing:
        tr.line(f"FAILED: the tool called these, the policy does not grant them: "
                f"{sorted(_result.missing)}", red=True)
    if _result.unused is None:
        tr.line("every grant used: not checked (the run was narrowed, or the lab tests "
                "did not run)", yellow=True)
    elif _result.unused:
        tr.line(f"FAILED: the policy grants these, no test made the tool use them: "
                f"{sorted(_result.unused)}", red=True)
    if not _result.failed:
        tr.line("every call granted" + (", every grant used" if _result.unused is not None
                                         else ""), green=True)
