"""Providers: where the clients point and which host keys are trusted.

The real provider uses the standard AWS credential chain; the lab provider
(deploylib.lab.lab_provider) points the same clients at the local lab. Both trust the SSH
host keys an instance prints to its console at first boot (cloud-init), and keep them
once trusted (`trusted_keys`): cloud-init prints them once per instance and the console
keeps only the output since the last boot, so a host rebooted since is still known by
the key first seen — and a changed key is still refused. Steps cannot tell which
provider they run on.
"""

from __future__ import annotations

import os
from typing import Protocol

import paramiko

from deploylib import aws, ssh
from deploylib.config import Environment
from deploylib.errors import CloudError


class Provider(Protocol):
    def aws_clients(self, env: Environment, run_id: str | None = None) -> aws.AwsClients: ...

    def ssh_credentials(self, env: Environment) -> ssh.Credentials: ...

    def trusted_keys(self, clients: aws.AwsClients,
                     instance: aws.ec2.Instance) -> tuple[paramiko.PKey, ...]: ...


def console_keys(clients: aws.AwsClients, instance: aws.ec2.Instance
                 ) -> tuple[paramiko.PKey, ...]:
    """The host keys cloud-init printed to the instance's console (none yet: empty)."""
    # Console output appears a minute or so after boot; until then this is empty and
    # the SSH wait keeps polling rather than trusting whatever key answers first.
    # The latest output is Nitro-only, and a long-running host's has overwritten
    # cloud-init's first-boot lines: the buffered output is asked for then.
    ec2, region, iid = clients.ec2(instance.region), instance.region, instance.instance_id
    try:
        keys = ssh.host_keys_from_console(aws.ec2.console_output(ec2, region, iid,
                                                                 latest=True))
    except CloudError as exc:
        if exc.code not in ("UnsupportedOperation", "InvalidParameterCombination",
                            "InvalidParameterValue"):
            raise
        keys = []
    return tuple(keys or ssh.host_keys_from_console(
        aws.ec2.console_output(ec2, region, iid, latest=False)))


def trusted_keys(clients: aws.AwsClients, env: Environment,
                 instance: aws.ec2.Instance) -> tuple[paramiko.PKey, ...]:
    """The keys kept for the instance when it was first trusted; else the console's,
    kept now (the first to keep them wins: a racing run reads the kept ones back)."""
    ssm, name = clients.ssm(), f"{env.host_keys_path}{instance.region}/{instance.instance_id}"
    kept = aws.ssm.read_value(ssm, name)
    if kept is None:
        keys = console_keys(clients, instance)
        if not keys:
            return ()
        text = "\n".join(f"{k.get_name()} {k.get_base64()}" for k in keys)
        if aws.ssm.create_value(ssm, name, text):
            return keys
        kept = aws.ssm.read_value(ssm, name) or ""
    return tuple(ssh.parse_public_key(*line.split()[:2]) for line in kept.splitlines()
                 if len(line.split()) >= 2)


class AwsProvider:
    """Real AWS: credentials from the standard chain, host keys from the console."""

    def __init__(self, env: Environment):
        self.env = env

    def aws_clients(self, env: Environment, run_id: str | None = None) -> aws.AwsClients:
        # The artifact bucket lives in the primary region, where the clients point.
        clients = aws.AwsClients(env.primary_region, path_style="." in env.artifact_bucket,
                                 identity=identity(env, run_id))
        if env.role_arn or env.account_id:
            clients.check_identity()  # before anything is written: one line, exit 2
        return clients

    def ssh_credentials(self, env: Environment) -> ssh.Credentials:
        key = os.path.expanduser(env.ssh_key) if env.ssh_key else None
        return ssh.Credentials(user=env.ssh_user, key_file=key)

    def trusted_keys(self, clients: aws.AwsClients,
                     instance: aws.ec2.Instance) -> tuple[paramiko.PKey, ...]:
        return trusted_keys(clients, self.env, instance)


def identity(env: Environment, run_id: str | None = None) -> aws.Identity:
    """Whose credentials the environment's clients sign with (deploy.toml's aws_profile,
    role_arn, account_id); a role's session named after the run, long enough for the
    longest wait of any procedure (and renewed before it ends)."""
    _, longest = env.longest_wait()
    return aws.Identity(env=env.name, profile=env.aws_profile, role_arn=env.role_arn,
                        account_id=env.account_id,
                        session_name=f"deploylib-{run_id or env.name}",
                        session_seconds=int(longest) + 900)


def for_environment(env: Environment) -> Provider:
    if env.provider == "lab":
        from deploylib.lab.lab_provider import LabProvider

        return LabProvider.from_environment(env)
    return AwsProvider(env)
