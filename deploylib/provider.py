"""Providers: where the clients point and which host keys are trusted.

The real provider uses the standard AWS credential chain and trusts the SSH host keys
an instance prints to its console (cloud-init). The lab provider (deploylib.lab.provider)
points the same clients at the local lab. Steps cannot tell which one they run on.
"""

from __future__ import annotations

import os
from typing import Protocol

import paramiko

from deploylib import aws, ssh
from deploylib.config import Environment
from deploylib.errors import CloudError


class Provider(Protocol):
    def aws_clients(self, env: Environment) -> aws.AwsClients: ...

    def ssh_credentials(self, env: Environment) -> ssh.Credentials: ...

    def trusted_keys(self, clients: aws.AwsClients,
                     instance: aws.ec2.Instance) -> tuple[paramiko.PKey, ...]: ...


class AwsProvider:
    """Real AWS: credentials from the standard chain, host keys from the console."""

    def aws_clients(self, env: Environment) -> aws.AwsClients:
        # The artifact bucket lives in the primary region, where the clients point.
        return aws.AwsClients(env.primary_region, path_style="." in env.artifact_bucket)

    def ssh_credentials(self, env: Environment) -> ssh.Credentials:
        key = os.path.expanduser(env.ssh_key) if env.ssh_key else None
        return ssh.Credentials(user=env.ssh_user, key_file=key)

    def trusted_keys(self, clients: aws.AwsClients,
                     instance: aws.ec2.Instance) -> tuple[paramiko.PKey, ...]:
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


def for_environment(env: Environment) -> Provider:
    if env.provider == "lab":
        from deploylib.lab.provider import LabProvider

        return LabProvider.from_environment()
    return AwsProvider()
