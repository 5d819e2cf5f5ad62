"""The lab provider: the same clients as on AWS, pointed at the lab."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import paramiko

from deploylib import aws, ssh
from deploylib.config import Environment
from deploylib.errors import InputError
from deploylib.lab import credentials, lab_dir


def read_info(directory: Path | None = None) -> dict[str, Any]:
    directory = directory or lab_dir()
    path = directory / "lab.json"
    try:
        info = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        raise InputError(f"the lab is not running ({path} is missing)",
                         fix="start it with `invoke lab.up`") from None
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, KeyError, ValueError):
        raise InputError("the lab daemon is gone but left lab.json behind",
                         resource=str(path), fix="run `invoke lab.down` then `invoke lab.up`"
                         ) from None
    return info


class LabProvider:
    def __init__(self, info: dict[str, Any], env: Environment):
        self.info = info
        self.env = env

    @classmethod
    def from_environment(cls, env: Environment) -> LabProvider:
        return cls(read_info(), env)

    def aws_clients(self, env: Environment, run_id: str | None = None) -> aws.AwsClients:
        # The lab's deployer key always (the lab holds it to the environment's policy); its
        # account (moto's) is checked as a real one is.
        clients = aws.AwsClients(env.primary_region, endpoint_url=self.info["endpoint"],
                                 credentials=credentials("deployer"), path_style=True,
                                 identity=aws.Identity(env=env.name, account_id=env.account_id))
        if env.account_id:
            clients.check_identity()
        return clients

    def ssh_credentials(self, env: Environment) -> ssh.Credentials:
        return ssh.Credentials(user=env.ssh_user, key_file=self.info["ssh_key"])

    def trusted_keys(self, clients: aws.AwsClients,
                     instance: aws.ec2.Instance) -> tuple[paramiko.PKey, ...]:
        # As on EC2: the lab's console output prints them at first boot (cloud.py).
        from deploylib import provider

        return provider.trusted_keys(clients, self.env, instance)
