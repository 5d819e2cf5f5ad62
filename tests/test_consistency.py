"""EC2's eventual consistency: the lab answers as AWS may right after a change, and the
tool takes those answers as "not yet" (deploylib.lab.consistency, deploylib.aws.ec2).

The window is widened here so that the raw calls are sure to land inside it; the tool's
calls then wait it out.
"""

from __future__ import annotations

import pytest

from deploylib import aws
from deploylib.errors import CloudError
from deploylib.lab import consistency
from tests.conftest import launch_instances

WINDOW = 3.0


@pytest.fixture
def settling(aws_clients):
    assert consistency.SETTLING is not None, "the moto server has no lab API fixes"
    before = consistency.SETTLING.window
    consistency.SETTLING.window = WINDOW
    yield consistency.SETTLING
    consistency.SETTLING.window = before


def _image(ec2):
    return ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


def _bake(aws_clients, network, role: str) -> str:
    """An image of a fresh builder, created by the tool (tags at creation)."""
    ec2 = aws_clients.ec2("us-east-1")
    [iid] = launch_instances(aws_clients, network, role=role)
    tags = aws.tags(f"run-{role}", "test", "1.0.0", "immutable", "image")
    return aws.ec2.create_image(ec2, "us-east-1", iid, f"{role}-{network['n']}", tags,
                                no_reboot=True)


def test_a_fresh_instance_is_not_found_at_first_and_the_wait_sees_it_through(
        aws_clients, network, settling):
    ec2 = aws_clients.ec2("us-east-1")
    iid = ec2.run_instances(ImageId=_image(ec2), MinCount=1, MaxCount=1,
                            SubnetId=network["subnet"])["Instances"][0]["InstanceId"]
    with pytest.raises(Exception, match="InvalidInstanceID.NotFound"):
        ec2.describe_instances(InstanceIds=[iid])
    with pytest.raises(Exception, match="InvalidInstanceID.NotFound"):
        ec2.create_tags(Resources=[iid], Tags=[{"Key": "k", "Value": "v"}])
    [inst] = aws.ec2.wait_instances(ec2, "us-east-1", [iid], "running", timeout=30)
    assert inst.instance_id == iid


def test_a_fresh_image_is_not_found_at_first_and_the_wait_sees_it_through(
        aws_clients, network, settling):
    ec2 = aws_clients.ec2("us-east-1")
    image = _bake(aws_clients, network, "settle")
    with pytest.raises(Exception, match="InvalidAMIID.NotFound"):
        ec2.describe_images(ImageIds=[image])
    # Tagging in a second call would fail now: the tool tags at creation instead.
    with pytest.raises(Exception, match="InvalidAMIID.NotFound"):
        ec2.create_tags(Resources=[image], Tags=[{"Key": "k", "Value": "v"}])
    aws.ec2.wait_image(ec2, "us-east-1", image, timeout=30)
    assert aws.ec2.image_tags(ec2, "us-east-1", [image])[image][aws.TAG_RUN] == "run-settle"


def test_an_image_missing_for_longer_than_consistency_explains_is_an_error(aws_clients):
    ec2 = aws_clients.ec2("us-east-1")
    ticks = iter([0.0, aws.ec2.SETTLE + 1, aws.ec2.SETTLE + 2])
    with pytest.raises(CloudError, match="image is missing"):
        aws.ec2.wait_image(ec2, "us-east-1", "ami-0000000000000dead", 600,
                           clock=lambda: next(ticks))


def test_a_snapshot_just_released_is_in_use_for_a_while_and_the_delete_waits_it_out(
        aws_clients, network, settling):
    ec2 = aws_clients.ec2("us-east-1")
    image = _bake(aws_clients, network, "settle-snap")
    aws.ec2.wait_image(ec2, "us-east-1", image, timeout=30)
    [snapshot] = aws.ec2.snapshots_of(aws.ec2.images(ec2, "us-east-1", [image]))
    ec2.deregister_image(ImageId=image)
    with pytest.raises(Exception, match="InvalidSnapshot.InUse"):
        ec2.delete_snapshot(SnapshotId=snapshot)
    aws.ec2.delete_snapshot(ec2, "us-east-1", snapshot)
    assert not ec2.describe_snapshots(Filters=[
        {"Name": "snapshot-id", "Values": [snapshot]}])["Snapshots"]


def test_a_snapshot_still_in_use_after_the_settling_time_is_an_error(aws_clients, network):
    ec2 = aws_clients.ec2("us-east-1")
    image = _bake(aws_clients, network, "settle-used")
    aws.ec2.wait_image(ec2, "us-east-1", image, timeout=30)
    [snapshot] = aws.ec2.snapshots_of(aws.ec2.images(ec2, "us-east-1", [image]))
    with pytest.raises(CloudError, match="InvalidSnapshot.InUse"):
        aws.ec2.delete_snapshot(ec2, "us-east-1", snapshot, settle=0)
