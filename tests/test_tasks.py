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
    """The command line in `env`, in this process (tests/conftest.run_in_process)."""
    from tests.conftest import run_in_process

    return run_in_process(args.split(), env)


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


def config_error(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Bad configuration: exit 2, one error line with the fix, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(errors) == 1 and errors[0].startswith("error:") and "Fix:" in errors[0], \
        proc.stderr
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("args", ["preflight --env production", "status --env production",
                                  "hotfix --version 1.0.1 --env production"])
def test_an_aws_profile_that_is_not_there_is_one_line_and_exit_2(production, args):
    env, runs = production
    env["AWS_PROFILE"] = "nope"
    config_error(invoke(args, env), "AWS_PROFILE: the AWS profile 'nope'", "aws configure")
    config = Path(env["DEPLOY_CONFIG"])
    config.write_text(config.read_text() + 'aws_profile = "ops"\n')
    del env["AWS_PROFILE"]
    config_error(invoke(args, env), "environments.production.aws_profile", "'ops'")
    assert no_run_started(runs)


def _held_to(directory: Path, policy: dict) -> str:
    """A moto server holding the lab's deployer key to `policy`: (server, endpoint, the
    deployer's key)."""
    import json

    from tests.conftest import held_server

    (directory / "iam-policy.json").write_text(json.dumps(policy))
    server, endpoint, keys = held_server(directory)
    return server, endpoint, keys["deployer"]


@pytest.mark.parametrize("key, value, words", [
    ("account_id", '"999999999999"', ["environments.production.account_id",
                                      "act in account 123456789012, not in 999999999999"]),
    ("role_arn", '"arn:aws:iam::123456789012:role/deploy-production"',
     ["environments.production.role_arn", "could not be assumed", "trust policy"]),
])
@pytest.mark.parametrize("args", ["status --env production",
                                  "hotfix --version 1.0.1 --env production",
                                  "lock.break --env production"])
def test_an_identity_the_environment_may_not_use_is_refused_before_anything_is_written(
        production, tmp_path, key, value, words, args):
    env, runs = production
    config = Path(env["DEPLOY_CONFIG"])
    config.write_text(config.read_text() + f"{key} = {value}\n")
    server, endpoint, key = _held_to(tmp_path, {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "*", "Resource": "*"},
        {"Effect": "Deny", "Action": "sts:AssumeRole", "Resource": "*"}]})
    try:
        env.update(AWS_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID=key["aws_access_key_id"],
                   AWS_SECRET_ACCESS_KEY=key["aws_secret_access_key"])
        config_error(invoke(args, env), *words)
    finally:
        server.stop()
    assert no_run_started(runs)


@pytest.mark.parametrize("command", [["-m", "invoke"], ["-m", "deploylib.cli"]])
def test_a_closed_pipe_on_stdout_ends_the_command_quietly(command):
    import os

    read, write = os.pipe()
    os.close(read)  # nobody reads: the first write meets a closed pipe, as `| head` leaves it
    try:
        proc = subprocess.run([sys.executable, *command, "plan", "--mode", "in-place", "--json"],
                              cwd=REPO, env=tool_env(), stdout=write, stderr=subprocess.PIPE,
                              text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.stderr.strip() == "", proc.stderr[-2000:]
    assert proc.returncode in (141, -13)  # as a filter SIGPIPE ended: 128 + 13, or the signal
