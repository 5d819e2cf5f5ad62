"""Shared fixtures. Each starts a real part: moto's server, an OpenSSH sshd, the lab."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB_ENV_TEXT = (REPO / "deploylib/lab/environment.toml").read_text()
IAM_TEST = "test_iam_policy.py"


def pytest_configure(config):
    """Every AWS call the tool makes during the session (in this process and every
    `invoke` it starts) is logged, for the IAM policy test, which runs last."""
    import tempfile

    from deploylib.aws import API_LOG_ENV

    if not os.environ.get(API_LOG_ENV):
        os.environ[API_LOG_ENV] = str(Path(tempfile.mkdtemp(prefix="deploy-api-")) / "calls")


def pytest_collection_modifyitems(session, config, items):
    items.sort(key=lambda item: item.path.name == IAM_TEST)


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_config(directory: Path, extra: str = "", name: str = "deploy.toml",
                 **overrides: object) -> Path:
    """A deploy.toml whose lab keeps its runs in `directory` (tests never touch ./.runs)."""
    text = LAB_ENV_TEXT.replace('state_dir = ".runs"', f'state_dir = "{directory / "runs"}"')
    text = text.replace('app_source = "examples/app"', f'app_source = "{REPO / "examples/app"}"')
    text = text.replace('smoke_tests = "examples/smoke"',
                        f'smoke_tests = "{REPO / "examples/smoke"}"')
    for key, value in overrides.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        lines.insert(lines.index("[environments.lab]") + 1, f"{key} = {toml_value(value)}")
        text = "\n".join(lines) + "\n"
    path = directory / name
    path.write_text(text + extra)
    return path


@dataclass
class Cli:
    """Runs `invoke` as an operator would, against a given config and lab directory."""

    config: Path
    lab_dir: Path

    def env(self) -> dict[str, str]:
        return dict(os.environ, DEPLOY_CONFIG=str(self.config), DEPLOY_LAB_DIR=str(self.lab_dir))

    def __call__(self, args: str, *, check: bool = True,
                 timeout: float = 300) -> subprocess.CompletedProcess:
        proc = subprocess.run([sys.executable, "-m", "invoke", *shlex.split(args)], cwd=REPO,
                              env=self.env(), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"invoke {args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc


@pytest.fixture(scope="session")
def moto_endpoint():
    """A plain moto server (no lab hooks) on a free loopback port."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_clients(moto_endpoint):
    """boto3 clients (our AwsClients) pointed at the plain moto server."""
    from deploylib.aws import AwsClients
    from deploylib.lab import LAB_CREDENTIALS

    return AwsClients("us-east-1", endpoint_url=moto_endpoint, credentials=LAB_CREDENTIALS,
                      path_style=True, max_attempts=2)


@dataclass
class SshServer:
    address: str
    port: int
    host_key: Path
    client_key: Path
    root: Path
    process: subprocess.Popen


def start_sshd(directory: Path, address: str, port: int = 2022) -> SshServer:
    """A real OpenSSH sshd in the foreground, accepting one client key, on `address`."""
    from deploylib.lab.hosts import SSHD, write_keypair

    directory.mkdir(parents=True, exist_ok=True)
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)
    host_key, client_key = directory / "host_key", directory / "client_key"
    write_keypair(host_key)
    (directory / "authorized_keys").write_text(write_keypair(client_key) + "\n")
    root = directory / "root"
    root.mkdir(exist_ok=True)
    config = directory / "sshd_config"
    config.write_text("\n".join([
        f"ListenAddress {address}:{port}", f"HostKey {host_key}",
        f"AuthorizedKeysFile {directory / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no",
        "StrictModes no", "PidFile none", "UseDNS no", "LogLevel ERROR",
        "Subsystem sftp internal-sftp", f"SetEnv DEPLOY_HOST_ROOT={root}", ""]))
    log = open(directory / "sshd.log", "ab")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)],
                            stdout=log, stderr=log, start_new_session=True)
    server = SshServer(address, port, host_key, client_key, root, proc)
    wait_listening(address, port)
    return server


def wait_listening(address: str, port: int, timeout: float = 10) -> None:
    """Poll until something accepts TCP connections on address:port."""
    import socket

    from deploylib import waits

    def accepts() -> bool:
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return True
        except OSError:
            return False

    waits.until(accepts, timeout=timeout, what="sshd to listen", resource=f"{address}:{port}",
                fix="see sshd.log in the test's directory")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """One real sshd on 127.0.99.1:2022 for the SSH module's tests."""
    server = start_sshd(tmp_path_factory.mktemp("sshd"), "127.0.99.1")
    yield server
    server.process.kill()
    server.process.wait()


@dataclass
class Lab:
    cli: Cli
    info: dict
    config_path: Path

    @property
    def cfg(self):
        from deploylib import config

        return config.load(self.config_path)

    @property
    def env(self):
        return self.cfg.environment("lab")

    def clients(self):
        from deploylib import runner

        os.environ["DEPLOY_LAB_DIR"] = str(self.cli.lab_dir)
        return runner.environment_clients(self.env)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """The whole lab (moto server with hooks, sshd hosts, balancers), fleet live on 1.0.0.

    Module-scoped: the tests of one module run against one lab, in file order.
    """
    from deploylib.lab import control

    directory = tmp_path_factory.mktemp("lab")
    config_path = write_config(directory)
    cli = Cli(config=config_path, lab_dir=directory / "lab")
    saved = {k: os.environ.get(k) for k in ("DEPLOY_LAB_DIR", "DEPLOY_CONFIG")}
    os.environ.update(cli.env())
    try:
        cli("lab.up --hosts 2")
        info = control.running(cli.lab_dir)
        assert info, "the lab did not come up"
        yield Lab(cli=cli, info=info, config_path=config_path)
    finally:
        control.stop_daemon(cli.lab_dir)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def fake_jenkins():
    """A local HTTP server speaking Jenkins' REST API (no real Jenkins can run here)."""
    from tests.fake_jenkins import FakeJenkins

    server = FakeJenkins().start()
    yield server
    server.stop()
