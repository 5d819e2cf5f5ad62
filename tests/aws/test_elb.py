"""Target groups against moto's server over real HTTP."""

from __future__ import annotations

import pytest

from deploylib import aws
from deploylib.errors import CloudError
from tests.conftest import launch_instances


def test_target_group_registration(aws_clients, network):
    elb = aws_clients.elbv2("us-east-1")
    arn = elb.create_target_group(Name=f"web-{network['n']}", Protocol="HTTP", Port=8080,
                                  VpcId=network["vpc"])["TargetGroups"][0]["TargetGroupArn"]
    assert aws.elb.resolve_target_group(elb, f"web-{network['n']}", "us-east-1") == arn
    ids = launch_instances(aws_clients, network, count=2, role="web")
    aws.elb.register(elb, "us-east-1", arn, ids, 8080)
    aws.elb.wait_healthy(elb, "us-east-1", arn, ids, timeout=5)
    assert set(aws.elb.target_states(elb, "us-east-1", arn)) == set(ids)
    aws.elb.deregister(elb, "us-east-1", arn, ids[:1], 8080)
    aws.elb.wait_drained(elb, "us-east-1", arn, ids[:1], timeout=5)
    assert set(aws.elb.target_states(elb, "us-east-1", arn)) == set(ids[1:])
    with pytest.raises(CloudError, match="target group"):
        aws.elb.resolve_target_group(elb, "no-such-group", "us-east-1")
