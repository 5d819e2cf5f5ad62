"""What is live in an environment, read from AWS: the record, each region's target group
and the hosts the balancer routes to. Reads only; the one way the steps, `invoke status`,
gc and the tests look these up."""

from __future__ import annotations

from typing import Any

from deploylib import aws
from deploylib.config import Environment


def record(clients: aws.AwsClients, env: Environment) -> dict[str, Any] | None:
    """The environment's record (`/deploylib/<env>/live`), or None before a first release."""
    return aws.ssm.read_record(clients.ssm(), env.record_parameter)


def target_group(clients: aws.AwsClients, env: Environment, region: str) -> str:
    """The ARN of the region's target group (deploy.toml names it or gives its ARN)."""
    _, _, name = env.network(region)
    return aws.elb.resolve_target_group(clients.elbv2(region), name, region)


def hosts(clients: aws.AwsClients, env: Environment, region: str,
          group: str | None = None) -> list[str]:
    """The instances registered and healthy in the region's target group."""
    return aws.elb.healthy(clients.elbv2(region), region,
                           group or target_group(clients, env, region))
