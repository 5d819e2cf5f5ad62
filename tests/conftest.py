"""Shared fixtures. Each starts a real part: moto's server, an OpenSSH sshd, the lab.

The suite runs in parallel (pytest-xdist, one test file per worker at a time): each
worker's labs, sshd and sample apps live on loopback addresses of their own (`WORKER`),
each lab in a directory of its own, so workers never meet.
"""

from __future__ import annotations

import itertools
import json
import os
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LAB_ENV_TEXT = (REPO / "deploylib/lab/environment.toml").read_text()

# Credentials for a plain moto server, which checks no signature (the lab's endpoint does:
# deploylib.lab.sigv4): the deployer's key id, so a policy held to it holds them too.
UNCHECKED = {"aws_access_key_id": "lab", "aws_secret_access_key": "unchecked"}

# Which parallel worker this is (0 without xdist): it picks this worker's addresses.
WORKER = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
# A lab takes one loopback /16 per region, counting up from here (3 regions, one spare).
os.environ["DEPLOY_LAB_NETWORK"] = str(1 + 4 * WORKER)

pytest_plugins = ["tests.iam_audit", "tests.scheduling"]


# How the sample app runs (examples/app/release.toml), for releases of it without that file.
SAMPLE_APP = {"start": "python3 app.py", "reload": "kill -HUP $MAINPID"}


def own_range(offset: int) -> int:
    """A loopback /16 of this worker's own (127.N.0.0/16), for tests of ranges and of
    what listens on them: 20 per worker from 100, above the ones its labs take and below
    `loopback`'s. Each test file takes its own offsets, so two files on two workers never
    meet on one range (test_lab_addresses: 0-9, test_lab_hosts: 10)."""
    assert 0 <= offset < 20
    return 100 + 20 * WORKER + offset


def loopback(block: int, host: int = 1) -> str:
    """A loopback address of this worker's own: 127.(200+WORKER).block.host."""
    return f"127.{200 + WORKER}.{block}.{host}"


def open_to_services(directory: Path) -> Path:
    """Let other users pass through (o+x: traverse, not list) `directory` and the temporary
    directories above it, which pytest makes 0700: a lab host's app runs as its own user
    and must reach its release, as on a real host."""
    from deploylib.lab import accounts

    while (closed := accounts.reachable_by_services(directory)) is not None:
        os.chmod(closed, os.stat(closed).st_mode | 0o001)
    return directory


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def write_config(directory: Path, extra: str = "", name: str = "deploy.toml",
                 drop: tuple[str, ...] = (), **overrides: object) -> Path:
    """A deploy.toml whose lab keeps its runs in `directory` (tests never touch ./.runs);
    `overrides` set keys of the lab environment, `drop` removes them."""
    # A lab session's tests rebake-light one image over another many times over: the
    # refusal past max_layers has tests of its own.
    if "max_layers" not in drop:
        overrides.setdefault("max_layers", 50)
    # The lab's fleet is server groups; the tests of what every fleet shares (the
    # procedures, their faults, the CLI) run on loose instances, whose hosts only the tool
    # launches. The server-group modules ask for groups (tests/lab/conftest.groups_lab).
    if "fleet" not in drop:
        overrides.setdefault("fleet", "instances")
    # The tests' own releases of the sample app (a bare app.py, no release.toml): how it
    # runs, as the environment's defaults (examples/app/release.toml says the same).
    if "app" not in drop:
        overrides.setdefault("app", SAMPLE_APP)
    text = LAB_ENV_TEXT.replace('state_dir = ".runs"', f'state_dir = "{directory / "runs"}"')
    text = text.replace('app_source = "examples/app"', f'app_source = "{REPO / "examples/app"}"')
    text = text.replace('smoke_tests = "examples/smoke"',
                        f'smoke_tests = "{REPO / "examples/smoke"}"')
    text = "\n".join(ln for ln in text.splitlines()
                     if not any(ln.startswith(f"{key} =") for key in drop)) + "\n"
    for key, value in overrides.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        lines.insert(lines.index("[environments.lab]") + 1, f"{key} = {toml_value(value)}")
        text = "\n".join(lines) + "\n"
    path = directory / name
    path.write_text(text + extra)
    return path


def tool_env(**extra: str) -> dict[str, str]:
    """The environment the tool runs in as a command: this one, plus the observer of its
    AWS calls (the IAM policy check, tests/iam_audit.py) when the session has one."""
    from tests import iam_audit

    return {**os.environ, **iam_audit.client_side_monitoring(), **extra}


@dataclass
class Cli:
    """Runs `invoke` as an operator would, against a given config and lab directory.

    In this process by default, as click's CliRunner runs a command: Invoke's program
    parses the same argv and runs the same tasks, with this command's environment set for
    the call and its output captured — a command costs what its work costs, not a Python
    start and boto3's import. `process=True` runs it as a process of its own, for what
    only a process shows (signals, a killed run, imports a plugin makes).
    """

    config: Path
    lab_dir: Path

    def env(self) -> dict[str, str]:
        return tool_env(DEPLOY_CONFIG=str(self.config), DEPLOY_LAB_DIR=str(self.lab_dir))

    def __call__(self, args: str, *, check: bool = True, timeout: float = 300,
                 process: bool = False) -> subprocess.CompletedProcess:
        argv = shlex.split(args)
        if process:
            proc = subprocess.run([sys.executable, "-m", "invoke", *argv], cwd=REPO,
                                  env=self.env(), capture_output=True, text=True,
                                  timeout=timeout)
        else:
            proc = run_in_process(argv, self.env())
        if check and proc.returncode != 0:
            raise AssertionError(f"invoke {args} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
        return proc


def run_in_process(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`invoke ARGV` run by Invoke's own Program in this process, in `env` and the
    repository, its exit code and output as a process would give them."""
    import contextlib
    import io
    import traceback

    from invoke import Program

    from deploylib.tasks import ns

    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    code: int | str | None = 0
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(REPO)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                Program(namespace=ns, name="invoke", binary="invoke").run(["invoke", *argv])
            except SystemExit as exc:  # the program's exit: its code, as a process's
                code = exc.code
            except Exception:  # noqa: BLE001 - what a process prints and exits 1 on
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    if code is None:
        code = 0
    elif isinstance(code, str):  # sys.exit("message"): printed, exit 1
        err.write(code + "\n")
        code = 1
    return subprocess.CompletedProcess(["invoke", *argv], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def moto_endpoint():
    """A moto server with no lab hosts on a free loopback port; its API as the lab's
    (tags at creation, eventual consistency: deploylib.lab.cloud.fill_gaps)."""
    from moto.server import ThreadedMotoServer

    from deploylib.lab import cloud

    cloud.fill_gaps()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws_clients(moto_endpoint):
    """boto3 clients (our AwsClients) pointed at the plain moto server."""
    from deploylib.aws import AwsClients

    return AwsClients("us-east-1", endpoint_url=moto_endpoint, credentials=UNCHECKED,
                      path_style=True, max_attempts=2)


@pytest.fixture
def faulty_aws(tmp_path):
    """A moto server with the lab's fault middleware in front (deploylib.lab.faults) and
    clients on it, without retries: (clients, where faults.json goes)."""
    from deploylib.aws import AwsClients
    from deploylib.lab.faults import Faults, LabServer

    server = LabServer(Faults(tmp_path))
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield AwsClients("us-east-1", endpoint_url=f"http://{host}:{port}",
                         credentials={"aws_access_key_id": "a", "aws_secret_access_key": "b"},
                         max_attempts=0, path_style=True), tmp_path
    finally:
        server.stop()


def held_server(directory: Path):
    """A moto server with the lab's endpoint in front, as the lab's daemon runs it: it
    answers only what the lab's keys (made afresh in `directory`) or keys made through
    its IAM and STS sign, and holds the deployer's to the policy the test writes in
    `directory` (iam-policy.json). Returns (server, endpoint, the lab's keys by holder)."""
    from deploylib.lab import KEY_IDS, iam, make_keys, sigv4
    from deploylib.lab.faults import Faults, LabServer

    keys = make_keys(directory)
    server = LabServer(Faults(directory), iam.Enforcer(directory, KEY_IDS["deployer"]),
                       sigv4.Keys.of_lab(keys))
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}", keys


@pytest.fixture
def enforced_aws(tmp_path):
    """A moto server holding the deployer to a policy as the lab does (deploylib.lab.iam):
    (the deployer's clients, the administrator's, where iam-policy.json goes — the
    test writes the policy)."""
    from deploylib.aws import AwsClients

    server, endpoint, keys = held_server(tmp_path)
    try:
        yield tuple(AwsClients("us-east-1", endpoint_url=endpoint, credentials=keys[who],
                               max_attempts=0, path_style=True)
                    for who in ("deployer", "admin")) + (tmp_path,)
    finally:
        server.stop()


_networks = itertools.count(1)


@pytest.fixture
def network(aws_clients):
    """A VPC, a Name-tagged subnet and a security group in the plain moto server, unique
    to the test (the server is the session's: names and ranges never repeat)."""
    n = next(_networks)
    ec2 = aws_clients.ec2("us-east-1")
    vpc = ec2.create_vpc(CidrBlock=f"10.{n}.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{n}.1.0/24", TagSpecifications=[
        {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": f"app-{n}"}]}])
    group = ec2.create_security_group(GroupName=f"app-{n}", Description="t", VpcId=vpc)
    return {"n": n, "vpc": vpc, "subnet": subnet["Subnet"]["SubnetId"],
            "group": group["GroupId"], "name": f"app-{n}"}


def launch_instances(aws_clients, network, count=1, role="candidate") -> list[str]:
    """Instances launched by the tool's own launch, in the test's network, and waited
    for (as the tool waits): until then EC2 may not know their ids yet."""
    from deploylib import aws

    ec2 = aws_clients.ec2("us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    ids = aws.ec2.launch(ec2, region="us-east-1", image_id=image, count=count,
                          instance_type="t3.micro", subnet_id=network["subnet"],
                          security_group_ids=[network["group"]],
                          tag_list=aws.tags("run-1", "test", "1.2.3", "in-place", role),
                          client_token=f"tok-{network['n']}-{role}")
    aws.ec2.wait_instances(ec2, "us-east-1", ids, "running", timeout=30)
    return ids


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
        "AuthorizedKeysFile none",  # read as root: other users need not reach the file
        f"AuthorizedKeysCommand /usr/bin/cat {directory / 'authorized_keys'}",
        "AuthorizedKeysCommandUser root", "PermitRootLogin prohibit-password",
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


NO_SUDO_USER = "deploylab-nosudo"  # a login user without a sudo rule


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """One real sshd on this worker's 127.x.99.1:2022, for the SSH module's tests. It
    takes root, the lab's login user (passwordless sudo) and one with no sudo rule."""
    import pwd

    from deploylib.lab import accounts

    accounts.ensure_login_user()
    try:
        pwd.getpwnam(NO_SUDO_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*",
                        NO_SUDO_USER], check=True)
    server = start_sshd(tmp_path_factory.mktemp("sshd"), loopback(99))
    yield server
    server.process.kill()
    server.process.wait()


@dataclass
class Lab:
    """A running lab and the operator's command line pointed at it."""

    cli: Cli
    info: dict
    config_path: Path
    shape: Shape
    _clients: object = None

    def write_config(self, directory: Path | None = None, extra: str = "",
                     drop: tuple[str, ...] = (), **overrides: object) -> Path:
        """A deploy.toml for this lab (its shape: regions, fleet) with `overrides`, in
        `directory` (default: beside the lab's own)."""
        shaped = {k: v for k, v in self.shape.overrides().items() if k not in drop}
        return write_config(directory or self.config_path.parent, extra, drop=drop,
                            **{**shaped, **overrides})

    @property
    def cfg(self):
        from deploylib import config

        return config.load(self.config_path)

    @property
    def env(self):
        return self.cfg.environment("lab")

    def clients(self):
        """AWS clients on this lab for the tests' own set-up and checks: the lab's
        administrator, not held to the tool's policy (the tool, run as a command, is).
        Built once per lab: building boto3 clients costs more than most calls."""
        if self._clients is None:
            self._clients = self.clients_as("admin")
        return self._clients

    def clients_as(self, who: str):
        """AWS clients on this lab signing with one of its keys (deploylib.lab.KEY_IDS)."""
        from deploylib.aws import AwsClients
        from deploylib.lab import credentials

        return AwsClients(self.env.primary_region, endpoint_url=self.info["endpoint"],
                          credentials=credentials(who, self.cli.lab_dir), path_style=True)

    def up(self) -> None:
        """Start the lab afresh: the first release (1.0.0) baked and live, nothing else."""
        from deploylib.lab import control

        control.stop_daemon(self.cli.lab_dir)
        self.cli("lab.up --hosts 2")
        info = control.running(self.cli.lab_dir)
        assert info, "the lab did not come up"
        self.info = info
        self._clients = None


@dataclass(frozen=True)
class Shape:
    """What a lab is made of, as a test asks for it (`@pytest.mark.lab_shape(...)` on the
    test or its module): one region unless regions are what is tested, loose instances
    unless server groups are."""

    regions: int = 1
    fleet: str = "instances"
    debian: bool = False  # the lab offers the Debian base image (deploylib.lab.rootfs)
    transport: str = "ssh"  # "ssm": reached by Run Command, its hosts without sshd

    @classmethod
    def of(cls, node) -> Shape:
        marker = node.get_closest_marker("lab_shape")
        return cls(**marker.kwargs) if marker else cls()

    def overrides(self) -> dict[str, object]:
        regions = ["us-west-2", "eu-west-1"][:self.regions - 1]
        extra: dict[str, object] = {"copy_regions": regions, "fleet": self.fleet}
        if self.transport != "ssh":
            extra["transport"] = self.transport
        if self.fleet == "server-groups":
            extra["timeouts"] = {"boot": 120}
        return extra


class Labs:
    """This worker's labs, one per shape, each started when a test first asks for it and
    kept for the session: bringing a lab up bakes its first release, most of its cost."""

    def __init__(self, tmp_path_factory) -> None:
        self._tmp = tmp_path_factory
        self._labs: dict[Shape, Lab] = {}
        self._stopping: list[threading.Thread] = []

    def get(self, shape: Shape) -> Lab:
        if shape not in self._labs:
            if shape.debian:
                from deploylib.lab import rootfs

                rootfs.ensure()  # debootstrap once per machine (about a minute), cached after
            directory = open_to_services(self._tmp.mktemp("lab"))
            config_path = write_config(directory, **shape.overrides())
            cli = Cli(config=config_path, lab_dir=directory / "lab")
            running = Lab(cli=cli, info={}, config_path=config_path, shape=shape)
            self._labs[shape] = running  # stopped at the session's end even if up fails
            running.up()
        return self._labs[shape]

    def stop(self, wait: bool = True) -> None:
        """Stop every lab of the worker's; without `wait`, in the background (a lab's
        hosts and their roots take seconds to go, which the next tests need not wait
        for) — `join` waits for them."""
        from deploylib.lab import control

        held = list(self._labs.values())
        self._labs.clear()

        def stop_all() -> None:
            for running in held:
                control.stop_daemon(running.cli.lab_dir)

        if wait:
            stop_all()
        elif held:
            stopping = threading.Thread(target=stop_all, name="labs-stopping")
            stopping.start()
            self._stopping.append(stopping)

    def join(self) -> None:
        for stopping in self._stopping:
            stopping.join()
        self._stopping.clear()


_labs: Labs | None = None


@pytest.fixture(scope="session")
def labs(tmp_path_factory):
    """This worker's labs (`Labs`), stopped when the session ends."""
    global _labs
    _labs = held = Labs(tmp_path_factory)
    try:
        yield held
    finally:
        held.stop()
        held.join()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """The worker's labs stopped, in the background, once it reaches a test that is not
    a lab test: the lab modules are handed out first (tests/scheduling.py), so none is
    left for it, and an idle lab still costs its balancers' checks. (One asked for later
    would be brought up again.)"""
    if _labs is not None and not item.get_closest_marker("lab"):
        _labs.stop(wait=False)


@pytest.fixture
def lab(request, labs):
    """The lab of the shape the test asks for (moto server with hooks, sshd hosts,
    balancers), its fleet live, and the tool's command line pointed at it for the test.

    Lab tests do not lean on what an earlier test left: each starts from whatever release
    is live, and tests/lab/conftest.py checks the lab is whole before every test
    (repairing it when a failed test left it broken).
    """
    running = labs.get(Shape.of(request.node))
    saved = {k: os.environ.get(k) for k in ("DEPLOY_LAB_DIR", "DEPLOY_CONFIG")}
    os.environ.update(DEPLOY_CONFIG=str(running.config_path),
                      DEPLOY_LAB_DIR=str(running.cli.lab_dir))
    try:
        yield running
    finally:
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


# -- the tool as a team installs it: the wheel, in a virtualenv outside this checkout ----

# Kept between sessions and workers (tool-env.sh keys each virtualenv by the wheel's bytes
# and the locks, and makes one at a time): a second session with the same tree installs
# nothing.
TOOL_CACHE = Path(os.environ.get("DEPLOY_TEST_TOOL_CACHE")
                  or Path(__import__("tempfile").gettempdir()) / "deploylib-test-tools")


def build_wheel(out: Path) -> Path:
    """The wheel, built as `./dev wheel` builds it, from a copy of this tree (the build's
    scratch stays out of the checkout)."""
    import shutil

    # What builds it: the project's file and the package.
    source = out / "source"
    shutil.copytree(REPO / "deploylib", source / "deploylib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", source / "pyproject.toml")
    env = {**os.environ, "SOURCE_DATE_EPOCH": "315532800", "PYTHONWARNINGS": "ignore"}
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                    "--no-build-isolation", "-w", str(out / "dist"), str(source)],
                   check=True, env=env, capture_output=True)
    (wheel,) = (out / "dist").glob("deploylib-*.whl")
    return wheel


@dataclass
class ToolVenv:
    """The wheel installed by the shared library's tool-env.sh, as a Jenkins agent has it."""

    wheel: Path
    bin: Path

    def env(self, **extra: str) -> dict[str, str]:
        """A command line that has this virtualenv and the system, nothing of the suite's."""
        keep = {k: v for k, v in os.environ.items()
                if k.startswith(("PIP_", "LANG", "LC_", "JAVA_HOME"))
                or k in ("HOME", "TMPDIR", "DEPLOY_LAB_NETWORK", "DEPLOY_LAB_ROOTFS_CACHE")}
        return {**keep, "PATH": f"{self.bin}:/usr/local/sbin:/usr/local/bin:/usr/sbin:"
                "/usr/bin:/sbin:/bin", **extra}


@pytest.fixture(scope="session")
def tool_venv(tmp_path_factory) -> ToolVenv:
    """deploylib's wheel, built from this tree and installed into a virtualenv outside the
    checkout (its dependencies from the hashed lock), by resources/deploylib/tool-env.sh."""
    out = tmp_path_factory.mktemp("wheel")
    wheel = build_wheel(out)
    resources = REPO / "resources/deploylib"
    made = subprocess.run(
        ["bash", str(resources / "tool-env.sh"), str(wheel), str(resources / "requirements.lock"),
         str(resources / "requirements-build.lock")],
        cwd=out, env={**os.environ, "DEPLOY_TOOL_CACHE": str(TOOL_CACHE)},
        capture_output=True, text=True, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    return ToolVenv(wheel=wheel, bin=Path(made.stdout.strip()))
