"""EC2 against moto's server over real HTTP: instances and images."""

from __future__ import annotations

import pytest

from deploylib import aws
from deploylib.errors import CloudError, InputError, WaitTimeout
from tests.conftest import launch_instances


def test_names_resolve_to_ids(aws_clients, network):
    ec2 = aws_clients.ec2("us-east-1")
    subnet = aws.ec2.describe_subnet(ec2, network["name"], "us-east-1")
    assert subnet["SubnetId"] == network["subnet"] and subnet["VpcId"] == network["vpc"]
    assert aws.ec2.describe_subnet(ec2, network["subnet"], "us-east-1")["VpcId"] == network["vpc"]
    assert aws.ec2.resolve_security_group(ec2, network["name"], "us-east-1",
                                          network["vpc"]) == network["group"]
    with pytest.raises(InputError, match="0 subnets are tagged Name=missing"):
        aws.ec2.describe_subnet(ec2, "missing", "us-east-1")


def test_a_security_group_name_is_looked_up_in_the_subnets_vpc_only(aws_clients, network):
    """Group names are unique per VPC: another VPC's group of the same name is not it."""
    ec2 = aws_clients.ec2("us-east-1")
    other = ec2.create_vpc(CidrBlock="10.250.0.0/16")["Vpc"]["VpcId"]
    twin = ec2.create_security_group(GroupName=network["name"], Description="t",
                                     VpcId=other)["GroupId"]
    assert aws.ec2.resolve_security_group(ec2, network["name"], "us-east-1",
                                          network["vpc"]) == network["group"]
    assert aws.ec2.resolve_security_group(ec2, network["name"], "us-east-1", other) == twin
    with pytest.raises(InputError, match="in the subnet's VPC"):
        aws.ec2.resolve_security_group(ec2, twin, "us-east-1", network["vpc"])


def test_instances_are_launched_tagged_and_with_imdsv2_required(aws_clients, network):
    ids = launch_instances(aws_clients, network, count=2)
    ec2 = aws_clients.ec2("us-east-1")
    data = ec2.describe_instances(InstanceIds=ids)["Reservations"][0]["Instances"]
    for inst in data:
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        tags = aws.tag_map(inst["Tags"])
        assert tags[aws.TAG_RUN] == "run-1" and tags[aws.TAG_RELEASE] == "1.2.3"
        assert tags[aws.TAG_PROCEDURE] == "in-place" and tags[aws.TAG_ROLE] == "candidate"
    running = aws.ec2.wait_instances(ec2, "us-east-1", ids, "running", timeout=10)
    assert {i.state for i in running} == {"running"}
    found = aws.ec2.find_tagged(ec2, "us-east-1", {aws.TAG_RUN: "run-1", aws.TAG_ROLE: "candidate"})
    assert set(ids) <= {i.instance_id for i in found}


def test_waiting_for_a_terminated_instance_to_run_fails_at_once(aws_clients, network):
    ids = launch_instances(aws_clients, network, role="doomed")
    ec2 = aws_clients.ec2("us-east-1")
    aws.ec2.terminate(ec2, "us-east-1", ids)
    aws.ec2.terminate(ec2, "us-east-1", ids)  # idempotent
    with pytest.raises(CloudError, match="is terminated"):
        aws.ec2.wait_instances(ec2, "us-east-1", ids, "running", timeout=10)


def test_a_wait_that_cannot_finish_times_out_naming_the_resource(aws_clients, network):
    ids = launch_instances(aws_clients, network, role="slow")
    ec2 = aws_clients.ec2("us-east-1")
    with pytest.raises(WaitTimeout) as info:
        aws.ec2.wait_instances(ec2, "us-east-1", ids, "stopped", timeout=0.3)
    assert ids[0] in info.value.line() and "Fix:" in info.value.line()


def test_images_are_created_copied_tagged_and_found(aws_clients, network):
    [iid] = launch_instances(aws_clients, network, role="builder")
    east, west = aws_clients.ec2("us-east-1"), aws_clients.ec2("us-west-2")
    tag_list = aws.tags("run-1", "test", "1.2.3", "immutable", "image")
    name = f"deploy-test-1.2.3-{network['n']}"
    image = aws.ec2.create_image(east, "us-east-1", iid, name, tag_list, no_reboot=False)
    aws.ec2.wait_image(east, "us-east-1", image, timeout=10)
    assert aws.ec2.find_image(east, "us-east-1", name) == image
    copy = aws.ec2.copy_image(west, source_region="us-east-1", dest_region="us-west-2",
                          image_id=image, name=name, tag_list=tag_list, client_token="c1")
    aws.ec2.wait_image(west, "us-west-2", copy, timeout=10)
    assert aws.ec2.image_tags(west, "us-west-2", [copy])[copy][aws.TAG_RELEASE] == "1.2.3"
    # tags at creation: the copy's snapshot, and the image's own
    for client, region, img in ((west, "us-west-2", copy), (east, "us-east-1", image)):
        [snapshot] = aws.ec2.snapshots_of(aws.ec2.images(client, region, [img]))
        snap = client.describe_snapshots(SnapshotIds=[snapshot])["Snapshots"][0]
        assert aws.tag_map(snap["Tags"])[aws.TAG_RUN] == "run-1"
    assert aws.ec2.find_base_image(east, "us-east-1", name, None) == image
    with pytest.raises(InputError, match="no available image matches"):
        aws.ec2.find_base_image(east, "us-east-1", "nothing-like-this-*", None)


def test_the_address_used_is_private_unless_public_is_asked_for():
    data = {"InstanceId": "i-1", "State": {"Name": "running"}, "ImageId": "ami-1",
            "PrivateIpAddress": "10.0.0.5", "PublicIpAddress": "203.0.113.7"}
    assert aws.ec2.Instance.from_api("us-east-1", data).address == "10.0.0.5"
    assert aws.ec2.Instance.from_api("us-east-1", data, public=True).address == "203.0.113.7"
    del data["PublicIpAddress"]
    assert aws.ec2.Instance.from_api("us-east-1", data, public=True).address == "10.0.0.5"


def test_an_unknown_id_among_others_does_not_keep_the_others_running(aws_clients, network):
    ids = launch_instances(aws_clients, network, count=2, role="mixed")
    ec2 = aws_clients.ec2("us-east-1")
    # EC2 refuses the whole call for one unknown id; the tool terminates the others anyway
    aws.ec2.terminate(ec2, "us-east-1", [ids[0], "i-0000000000000dead", ids[1]])
    assert {i.state for i in aws.ec2.describe(ec2, "us-east-1", ids)} == {"terminated"}


def test_only_an_image_of_this_account_tagged_for_the_environment_may_be_launched(
        aws_clients):
    import pytest

    from deploylib.errors import InputError

    ec2 = aws_clients.ec2("us-east-1")
    from botocore.exceptions import ClientError

    from deploylib import waits

    ours = ec2.register_image(Name="ours-1", RootDeviceName="/dev/sda1",
                              VirtualizationType="hvm")["ImageId"]

    def tagged() -> bool | None:
        try:  # a fresh id is NotFound for a moment (EC2's eventual consistency)
            ec2.create_tags(Resources=[ours], Tags=[{"Key": "deploy:env", "Value": "prod"}])
            return True
        except ClientError:
            return None

    waits.until(tagged, timeout=10, what="the tag", resource=ours, fix="-")
    account = aws_clients.account()
    aws.ec2.check_own_image(ec2, "us-east-1", ours, "prod", account)
    with pytest.raises(InputError, match="is not staging's"):
        aws.ec2.check_own_image(ec2, "us-east-1", ours, "staging", account)
    # an immutable release's image holds its bytes: another release's is refused
    with pytest.raises(InputError, match="holds other release bytes than this run's"):
        aws.ec2.check_own_image(ec2, "us-east-1", ours, "prod", account, digest="ab" * 32)
    ec2.create_tags(Resources=[ours], Tags=[{"Key": aws.TAG_DIGEST, "Value": "ab" * 32}])
    aws.ec2.check_own_image(ec2, "us-east-1", ours, "prod", account, digest="ab" * 32)
    # and, for a run's own bake (or its handoff), made by that run
    with pytest.raises(InputError, match="was not made by run 20261207T120000-abc123 "
                                         r"\(it is deploy:run=nothing\)"):
        aws.ec2.check_own_image(ec2, "us-east-1", ours, "prod", account,
                                run="20261207T120000-abc123")
    ec2.create_tags(Resources=[ours], Tags=[{"Key": aws.TAG_RUN,
                                             "Value": "20261207T120000-abc123"}])
    aws.ec2.check_own_image(ec2, "us-east-1", ours, "prod", account,
                            run="20261207T120000-abc123")
    # moto's catalogue of public images: another account's
    public = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    for foreign in (public, "ami-0000000000000dead"):
        with pytest.raises(InputError, match="not one of this account's own"):
            aws.ec2.check_own_image(ec2, "us-east-1", foreign, "prod", account)


def test_a_resumed_runs_template_version_is_adopted_only_if_it_launches_what_it_renders(
        aws_clients, network):
    """Idempotent by the run's token: the same call again (a resumed run) finds the version
    it made; a version bearing the token but launching other user data (or image) is not
    adopted, whoever made it."""
    ec2 = aws_clients.ec2("us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    token = f"run-{network['n']}-template"

    def put(user_data: bytes, image_id: str = image) -> aws.ec2.TemplateVersion:
        return aws.ec2.put_template_version(
            ec2, region="us-east-1", name=f"app-{network['n']}", image_id=image_id,
            instance_type="t3.micro", security_group_ids=[network["group"]],
            tag_list=aws.tags("run-1", "test", "1.2.3", "immutable", "instance"),
            user_data=user_data, instance_profile="deploy-instance", key_name=None,
            client_token=token)

    made = put(b"#!/bin/bash\necho boot\n")
    again = put(b"#!/bin/bash\necho boot\n")  # resumed: the same version
    assert (again.version, again.launches) == (made.version, made.launches)
    with pytest.raises(CloudError, match="launches something else than the run renders"):
        put(b"#!/bin/bash\necho planted\n")
    assert len(aws.ec2.launch_template(ec2, "us-east-1", f"app-{network['n']}").versions) == 1
