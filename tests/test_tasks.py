"""The command line when AWS cannot be used at all: every command that talks to AWS,
run against a real (not lab) environment with no credentials anywhere, or with an
endpoint nothing answers, says so in one line with the fix, exits non-zero, and starts
nothing. No traffic leaves loopback: the endpoint is a closed local port and the
instance metadata service is off."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, tool_env

PRODUCTION = """
[environments.production]
provider = "aws"
primary_region = "us-east-1"
base_image = "ami-0123456789abcdef0"
subnet = "app"
security_group = "app"
target_group = "web"
artifact_bucket = "example-artifacts"
app_source = "{app}"
state_dir = "{runs}"
"""

COMMANDS = [
    "status --env production",
    "hotfix --version 1.0.1 --env production",
    "deploy --mode rebake-light --version 1.0.2 --env production",
    "bake --version 1.1.0 --env production",
    "start --mode in-place --version 1.0.3 --env production",
    "rollback --env production",
    "lock.status --env production",
    "lock.break --env production",
    "gc --env production --dry-run",
]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def production(tmp_path):
    config = tmp_path / "deploy.toml"
    config.write_text(PRODUCTION.format(app=REPO / "examples/app", runs=tmp_path / "runs"))
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in tool_env().items() if not k.startswith("AWS_")
           or k.startswith("AWS_CSM_")}
    env.update(DEPLOY_CONFIG=str(config), HOME=str(home), AWS_EC2_METADATA_DISABLED="true",
               AWS_CONFIG_FILE=str(home / "none"), AWS_SHARED_CREDENTIALS_FILE=str(home / "none"),
               AWS_ENDPOINT_URL=f"http://127.0.0.1:{closed_port()}", AWS_MAX_ATTEMPTS="1")
    return env, tmp_path / "runs"


def invoke(args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args.split()], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def one_line(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert len(errors) == 1 and "Fix:" in errors[0], proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def no_run_started(runs: Path) -> bool:
    return not list(runs.glob("*.json"))


@pytest.mark.parametrize("args", COMMANDS)
def test_without_credentials_each_command_says_how_to_give_them(production, args):
    env, runs = production
    one_line(invoke(args, env), "no usable AWS credentials", "AWS_PROFILE")
    assert no_run_started(runs)


@pytest.mark.parametrize("args", COMMANDS)
def test_with_no_route_to_aws_each_command_says_what_to_check(production, args):
    env, runs = production
    env.update(AWS_ACCESS_KEY_ID="AKIAEXAMPLE", AWS_SECRET_ACCESS_KEY="example-secret")
    line = one_line(invoke(args, env), "could not be reached", "VPN")
    assert env["AWS_ENDPOINT_URL"].removeprefix("http://") in line
    assert "example-secret" not in line
    assert no_run_started(runs)


def test_preflight_without_credentials_fails_its_first_check_and_asks_nothing_else(production):
    env, runs = production
    proc = invoke("preflight --env production", env)
    assert proc.returncode == 2, proc.stderr
    checks = [ln.strip() for ln in proc.stdout.splitlines() if ln.startswith("  ")]
    assert len(checks) == 1 and checks[0].startswith("FAIL  credentials:"), proc.stdout
    assert "no usable AWS credentials" in checks[0] and "AWS_PROFILE" in checks[0]
    assert no_run_started(runs)
