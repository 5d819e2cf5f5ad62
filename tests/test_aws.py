"""The AWS module against moto's server over real HTTP (no lab hooks)."""

from __future__ import annotations

import itertools
import urllib.request

import pytest

from deploylib import aws
from deploylib.errors import CloudError, InputError, WaitTimeout

_n = itertools.count(1)


@pytest.fixture
def network(aws_clients):
    """A VPC, a Name-tagged subnet and a security group, unique to the test."""
    n = next(_n)
    ec2 = aws_clients.ec2("us-east-1")
    vpc = ec2.create_vpc(CidrBlock=f"10.{n}.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.{n}.1.0/24", TagSpecifications=[
        {"ResourceType": "subnet", "Tags": [{"Key": "Name", "Value": f"app-{n}"}]}])
    group = ec2.create_security_group(GroupName=f"app-{n}", Description="t", VpcId=vpc)
    return {"n": n, "vpc": vpc, "subnet": subnet["Subnet"]["SubnetId"],
            "group": group["GroupId"], "name": f"app-{n}"}


def launch(aws_clients, network, count=1, role="candidate"):
    ec2 = aws_clients.ec2("us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return aws.launch(ec2, region="us-east-1", image_id=image, count=count,
                      instance_type="t3.micro", subnet_id=network["subnet"],
                      security_group_ids=[network["group"]],
                      tag_list=aws.tags("run-1", "test", "1.2.3", "in-place", role),
                      client_token=f"tok-{network['n']}-{role}")


def test_names_resolve_to_ids(aws_clients, network):
    ec2 = aws_clients.ec2("us-east-1")
    assert aws.resolve_subnet(ec2, network["name"], "us-east-1") == network["subnet"]
    assert aws.resolve_security_group(ec2, network["name"], "us-east-1") == network["group"]
    assert aws.resolve_subnet(ec2, "subnet-0123", "us-east-1") == "subnet-0123"
    with pytest.raises(InputError, match="0 subnets are tagged Name=missing"):
        aws.resolve_subnet(ec2, "missing", "us-east-1")


def test_instances_are_launched_tagged_and_with_imdsv2_required(aws_clients, network):
    ids = launch(aws_clients, network, count=2)
    ec2 = aws_clients.ec2("us-east-1")
    data = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    for inst in data:
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        tags = aws.tag_map(inst["Tags"])
        assert tags[aws.TAG_RUN] == "run-1" and tags[aws.TAG_RELEASE] == "1.2.3"
        assert tags[aws.TAG_PROCEDURE] == "in-place" and tags[aws.TAG_ROLE] == "candidate"
    running = aws.wait_instances(ec2, "us-east-1", ids, "running", timeout=10)
    assert {i.state for i in running} == {"running"}
    found = aws.find_tagged(ec2, "us-east-1", {aws.TAG_RUN: "run-1", aws.TAG_ROLE: "candidate"})
    assert set(ids) <= {i.instance_id for i in found}


def test_waiting_for_a_terminated_instance_to_run_fails_at_once(aws_clients, network):
    ids = launch(aws_clients, network, role="doomed")
    ec2 = aws_clients.ec2("us-east-1")
    aws.terminate(ec2, "us-east-1", ids)
    aws.terminate(ec2, "us-east-1", ids)  # idempotent
    with pytest.raises(CloudError, match="is terminated"):
        aws.wait_instances(ec2, "us-east-1", ids, "running", timeout=10)


def test_a_wait_that_cannot_finish_times_out_naming_the_resource(aws_clients, network):
    ids = launch(aws_clients, network, role="slow")
    ec2 = aws_clients.ec2("us-east-1")
    with pytest.raises(WaitTimeout) as info:
        aws.wait_instances(ec2, "us-east-1", ids, "stopped", timeout=0.3)
    assert ids[0] in info.value.line() and "Fix:" in info.value.line()


def test_images_are_created_copied_tagged_and_found(aws_clients, network):
    [iid] = launch(aws_clients, network, role="builder")
    east, west = aws_clients.ec2("us-east-1"), aws_clients.ec2("us-west-2")
    tag_list = aws.tags("run-1", "test", "1.2.3", "immutable", "image")
    name = f"deploy-test-1.2.3-{network['n']}"
    image = aws.create_image(east, "us-east-1", iid, name, tag_list, no_reboot=False)
    aws.wait_image(east, "us-east-1", image, timeout=10)
    assert aws.find_image(east, name) == image
    copy = aws.copy_image(west, source_region="us-east-1", dest_region="us-west-2",
                          image_id=image, name=name, tag_list=tag_list, client_token="c1")
    aws.wait_image(west, "us-west-2", copy, timeout=10)
    assert aws.image_tags(west, [copy])[copy][aws.TAG_RELEASE] == "1.2.3"
    [snapshot] = aws.tag_snapshots(west, copy, tag_list)
    snap = west.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]
    assert aws.tag_map(snap["Tags"])[aws.TAG_RUN] == "run-1"
    assert aws.find_base_image(east, "us-east-1", name, None) == image
    with pytest.raises(InputError, match="no available image matches"):
        aws.find_base_image(east, "us-east-1", "nothing-like-this-*", None)


def test_target_group_registration(aws_clients, network):
    elb = aws_clients.elbv2("us-east-1")
    arn = elb.create_target_group(Name=f"web-{network['n']}", Protocol="HTTP", Port=8080,
                                  VpcId=network["vpc"])["TargetGroups"][0]["TargetGroupArn"]
    assert aws.resolve_target_group(elb, f"web-{network['n']}", "us-east-1") == arn
    ids = launch(aws_clients, network, count=2, role="web")
    aws.register(elb, arn, ids, 8080)
    aws.wait_healthy(elb, arn, ids, "us-east-1", timeout=5)
    assert set(aws.target_states(elb, arn)) == set(ids)
    aws.deregister(elb, arn, ids[:1], 8080)
    aws.wait_drained(elb, arn, ids[:1], "us-east-1", timeout=5)
    assert set(aws.target_states(elb, arn)) == set(ids[1:])
    with pytest.raises(CloudError, match="target group"):
        aws.resolve_target_group(elb, "no-such-group", "us-east-1")


def test_artifacts_upload_once_and_presigned_urls_fetch_them(aws_clients, tmp_path):
    s3 = aws_clients.s3()
    s3.create_bucket(Bucket="artifacts-test")
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"release bytes")
    assert aws.published_sha256(s3, "artifacts-test", "r/a.tar.gz") is None
    aws.upload_artifact(s3, "artifacts-test", "r/a.tar.gz", str(path), "abc")
    assert aws.published_sha256(s3, "artifacts-test", "r/a.tar.gz") == "abc"
    url = aws.presign(s3, "artifacts-test", "r/a.tar.gz", expires=60)
    assert "Signature" in url
    assert urllib.request.urlopen(url, timeout=5).read() == b"release bytes"


def test_the_live_record_round_trips(aws_clients):
    ssm = aws_clients.ssm()
    assert aws.read_record(ssm, "/deploylib/test/live") is None
    aws.write_record(ssm, "/deploylib/test/live", {"release": "1.0.0", "images": {"r": "ami-1"}})
    assert aws.read_record(ssm, "/deploylib/test/live")["images"] == {"r": "ami-1"}
    ssm.put_parameter(Name="/deploylib/broken/live", Value="not json", Type="String")
    with pytest.raises(CloudError, match="not JSON"):
        aws.read_record(ssm, "/deploylib/broken/live")


def test_clients_use_standard_retries_and_are_built_once(aws_clients):
    ec2 = aws_clients.ec2("eu-west-1")
    assert aws_clients.ec2("eu-west-1") is ec2
    assert ec2.meta.config.retries["mode"] == "standard"
    assert ec2.meta.region_name == "eu-west-1"


def test_the_address_used_is_private_unless_public_is_asked_for():
    data = {"InstanceId": "i-1", "State": {"Name": "running"}, "ImageId": "ami-1",
            "PrivateIpAddress": "10.0.0.5", "PublicIpAddress": "203.0.113.7"}
    assert aws.Instance.from_api("us-east-1", data).address == "10.0.0.5"
    assert aws.Instance.from_api("us-east-1", data, public=True).address == "203.0.113.7"
    del data["PublicIpAddress"]
    assert aws.Instance.from_api("us-east-1", data, public=True).address == "10.0.0.5"
