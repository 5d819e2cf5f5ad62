"""Bring the lab up and down from the command line (what `invoke lab.*` calls)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from deploylib import render
from deploylib.config import Environment
from deploylib.errors import DeployError, InputError
from deploylib.lab import accounts, lab_dir, rootfs
from deploylib.lab.hosts import kill_leftovers, roots_place

READY_TIMEOUT = 60.0


def spec_for(env: Environment) -> dict[str, Any]:
    """What the daemon must create so that this environment's names resolve in the lab."""
    if env.provider != "lab":
        raise InputError(f"environment {env.name!r} is not a lab environment",
                         fix="use --env lab (or an environment with provider = \"lab\")")
    if env.base_image.startswith("ami-"):
        raise InputError("the lab needs base_image as a name filter, not an image id",
                         resource=f"environments.{env.name}.base_image",
                         fix="use a name such as deploylab/ubuntu-22.04-base-*")
    names = {env.network(r) for r in env.all_regions}
    if len(names) != 1:
        raise InputError("the lab uses the same subnet, security group and target group "
                         "names in every region", resource=f"environments.{env.name}.regions",
                         fix="remove the per-region overrides from the lab environment")
    subnet, group, target_group = names.pop()
    return {"regions": env.all_regions, "subnet": subnet, "security_group": group,
            "target_group": target_group, "bucket": env.artifact_bucket,
            "base_image": env.base_image, "app_port": env.app_port,
            "health_path": env.health_path, "ssh_port": env.ssh_port,
            "lock_table": env.lock_table,
            # An environment reached by Run Command: its hosts have no sshd (builders
            # keep theirs: a bake is over SSH).
            # (DEPLOY_LAB_SSHD=all: both, for a benchmark of one transport against the other)
            "sshd": os.environ.get("DEPLOY_LAB_SSHD") or (
                "builders" if env.transport == "ssm" else "all"),
            # The server groups' instance profile, made in the lab's IAM with its role.
            "instance_profile": env.instance_profile.rsplit("/", 1)[-1],
            # What the tool may do (deploylib.lab.iam): the policy `invoke policy` prints.
            "policy": render.iam_policy(env),
            # What a server group's instances may do at boot (their instance role's).
            "instance_policy": render.instance_policy(env),
            # The Debian base image, where this machine has its root filesystem made
            # (DEPLOY_LAB_DEBIAN=1 makes it: debootstrap, once).
            "debian": rootfs.ready() or os.environ.get("DEPLOY_LAB_DEBIAN") == "1",
            "network": network(),
            # AWS-like delays, scaled (benchmarks): see deploylib.lab.cloud.install
            "profile": json.loads(os.environ.get("DEPLOY_LAB_PROFILE") or "{}")}


NETWORK_ENV = "DEPLOY_LAB_NETWORK"


def network() -> int:
    """The second octet of the first region's loopback range (127.N.0.0/16, the next
    region N+1, …): labs side by side on one machine (parallel test workers) each take
    ranges of their own."""
    text = os.environ.get(NETWORK_ENV) or "1"
    if not text.isdigit() or not 1 <= int(text) <= 240:
        raise InputError(f"{NETWORK_ENV}={text!r} is not a loopback range number",
                         fix="use 1 to 240 (the lab takes 127.N.0.0/16 onwards)")
    return int(text)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def running(directory: Path | None = None) -> dict[str, Any] | None:
    directory = directory or lab_dir()
    try:
        info = json.loads((directory / "lab.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return info if _pid_alive(int(info.get("pid", 0))) else None


def start_daemon(env: Environment, directory: Path | None = None) -> dict[str, Any]:
    """Start the lab daemon in the background and wait until it is ready."""
    directory = directory or lab_dir()
    info = running(directory)
    if info:
        return info
    if directory.exists():
        kill_leftovers(directory)
        _remove(directory)
    spec = spec_for(env)
    if env.ssh_user != accounts.LOGIN_USER:
        raise InputError(f"lab hosts log in as {accounts.LOGIN_USER!r}, as Ubuntu AMIs log "
                         f"in as 'ubuntu' (root logins refused), not {env.ssh_user!r}",
                         resource=f"environments.{env.name}.ssh_user",
                         fix=f'set ssh_user = "{accounts.LOGIN_USER}" or leave it out')
    accounts.ensure_login_user()
    if spec["debian"]:
        rootfs.ensure()
    directory.mkdir(parents=True)
    log = open(directory / "daemon.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "deploylib.lab.daemon", "--dir", str(directory),
         "--spec", json.dumps(spec)],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        cwd=Path(__file__).resolve().parents[2])
    log.close()
    (directory / "daemon.pid").write_text(str(proc.pid))
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = (directory / "daemon.log").read_text()[-2000:].strip().splitlines()
            raise DeployError(f"the lab daemon exited with {proc.returncode}: "
                              f"{tail[-1] if tail else 'no output'}",
                              resource=str(directory / "daemon.log"),
                              fix="read the log; is openssh-server installed (`./dev setup`)?")
        info = running(directory)
        if info:
            return info
        time.sleep(0.05)
    proc.kill()
    raise DeployError("the lab daemon did not become ready in time",
                      resource=str(directory / "daemon.log"), fix="read the log")


def stop_daemon(directory: Path | None = None) -> bool:
    """Stop the daemon (it stops every host) and remove the lab directory."""
    directory = directory or lab_dir()
    if not directory.exists():
        return False
    try:
        pid = int((directory / "daemon.pid").read_text())
    except (FileNotFoundError, ValueError):
        pid = 0
    if pid and _pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _pid_alive(pid) and time.monotonic() < deadline:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
            time.sleep(0.05)
        if _pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
    kill_leftovers(directory)
    _remove(directory)
    return True


def _remove(directory: Path) -> None:
    """The lab's directory, and the hosts' roots where they live apart from it (never
    while a root filesystem host's mounts are still in them)."""
    rootfs.remove(roots_place(directory.resolve()))
    rootfs.remove(directory)


def _admin_clients(env: Environment) -> Any:
    from deploylib import aws
    from deploylib.lab import credentials

    info = running()
    if info is None:
        raise InputError("the lab is not running", fix="start it with `invoke lab.up`")
    clients = aws.AwsClients(env.primary_region, endpoint_url=info["endpoint"],
                             credentials=credentials("admin"), path_style=True)
    # AWS acting (a scaling policy), not the tool: no observer of the tool's calls
    # (client-side monitoring: the IAM policy check) may count them as the tool's.
    clients._session._session.set_config_variable("csm_enabled", False)
    return clients


def scale(env: Environment, region: str, desired: int) -> tuple[str, int]:
    """Set the desired capacity of a region's live server group, as an autoscaling
    policy would (AWS acting, not the tool: the lab's administrator, not held to the
    tool's policy). Returns the group and its capacity before."""
    from deploylib import live

    if region not in env.all_regions:
        raise InputError(f"{region} is not a region of {env.name}",
                         fix=f"use one of: {', '.join(env.all_regions)}")
    record = live.record(_admin_clients(env), env) or {}
    name = (record.get("server_groups") or {}).get(region)
    if not name:
        raise InputError(f"no server group is live in {region}",
                         resource=env.record_parameter,
                         fix='set fleet = "server-groups" in the lab environment and deploy '
                         "with `--mode immutable`")
    return name, scale_group(env, region, name, desired)


def scale_group(env: Environment, region: str, name: str, desired: int) -> int:
    """Set one server group's desired capacity (within its size); returns it before."""
    from deploylib import aws

    asg = _admin_clients(env).autoscaling(region)
    group = aws.autoscaling.describe(asg, region, name)
    if group is None:
        raise InputError(f"the server group {name} is gone", resource=region,
                         fix="deploy again with `--mode immutable`")
    if not group.min_size <= desired <= group.max_size:
        raise InputError(f"--desired {desired} is outside {name}'s size "
                         f"({group.min_size} to {group.max_size})",
                         resource=f"server group {name} in {region}",
                         fix=f"use {group.min_size} to {group.max_size}, as a scaling policy "
                         "would be held to")
    with aws.calling(f"server group {name} in {region}", "check the lab is up"):
        asg.set_desired_capacity(AutoScalingGroupName=name, DesiredCapacity=desired)
    return group.desired
