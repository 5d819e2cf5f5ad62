"""The lab itself: the AWS API's effects happen on real hosts and a real balancer."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploylib import aws, ssh, waits
from deploylib.errors import HostError
from deploylib.lab.provider import LabProvider

pytestmark = pytest.mark.lab


@pytest.fixture
def region_tools(lab):
    clients = lab.clients()
    region = lab.env.primary_region
    ec2 = clients.ec2(region)
    subnet = aws.ec2.resolve_subnet(ec2, lab.env.subnet, region)
    group = aws.ec2.resolve_security_group(ec2, lab.env.security_group, region)
    base = aws.ec2.find_base_image(ec2, region, lab.env.base_image, None)
    provider = LabProvider(lab.info)

    def launch(image=base, role="labtest"):
        ids = aws.ec2.launch(ec2, region=region, image_id=image, count=1, instance_type="t3.micro",
                         subnet_id=subnet, security_group_ids=[group],
                         tag_list=aws.tags("lab-test", "lab", "0", "none", role),
                         client_token=f"lab-test-{role}-{image}")
        return aws.ec2.describe(ec2, region, ids)[0]

    def connect(inst):
        return ssh.Connection(ssh.Endpoint(inst.instance_id, inst.address, lab.env.ssh_port,
                                           provider.trusted_keys(clients, inst)),
                              provider.ssh_credentials(lab.env), connect_timeout=5)

    return clients, region, ec2, launch, connect


def wait_ssh(conn):
    def attempt():
        try:
            conn.open()
            return True
        except HostError:
            return False

    waits.until(attempt, timeout=10, what="ssh", resource=conn.endpoint.name, fix="-")


def test_an_instance_is_a_real_host_on_its_own_loopback_address(region_tools, lab):
    clients, region, ec2, launch, connect = region_tools
    inst = launch()
    assert inst.address.startswith(f"127.{lab.info['spec']['network']}.0.")
    with connect(inst) as conn:
        wait_ssh(conn)
        root = conn.run("echo $DEPLOY_HOST_ROOT").output.strip()
        assert Path(root).name == "root" and inst.instance_id in root
        assert conn.run("cat $DEPLOY_HOST_ROOT/etc/app.env").output.strip() == \
            f"APP_HOST={inst.address}"
        out = conn.run("apt-get install -y nginx").output
        assert "recorded, not installed: nginx" in out
    aws.ec2.terminate(ec2, region, [inst.instance_id])
    assert not Path(root).exists()
    registry = Path(root).parents[2] / "hostkeys"
    assert not (registry / f"{inst.instance_id}.pub").exists()


def test_images_snapshot_the_root_and_copies_carry_it(region_tools, lab):
    clients, region, ec2, launch, connect = region_tools
    builder = launch(role="snap-builder")
    with connect(builder) as conn:
        wait_ssh(conn)
        conn.run("mkdir -p $DEPLOY_HOST_ROOT/srv && echo baked > $DEPLOY_HOST_ROOT/srv/marker")
    image = aws.ec2.create_image(ec2, region, builder.instance_id, "lab-test-snap",
                             [{"Key": "t", "Value": "1"}], False)
    other = lab.env.copy_regions[0]
    copy = aws.ec2.copy_image(clients.ec2(other), source_region=region, dest_region=other,
                          image_id=image, name="lab-test-snap", tag_list=[
                              {"Key": "t", "Value": "1"}], client_token="lab-test-copy")
    aws.ec2.terminate(ec2, region, [builder.instance_id])
    restored = launch(image=image, role="snap-restored")
    with connect(restored) as conn:
        wait_ssh(conn)
        assert conn.run("cat $DEPLOY_HOST_ROOT/srv/marker").output.strip() == "baked"
        # the address is the new instance's, not the builder's
        assert restored.address in conn.run("cat $DEPLOY_HOST_ROOT/etc/app.env").output
    assert (Path(lab.info["hostkeys"]).parent / "images" / copy / "srv/marker").exists()
    aws.ec2.terminate(ec2, region, [restored.instance_id])


def test_stopping_stops_sshd_and_starting_brings_it_back_with_the_same_key(region_tools):
    clients, region, ec2, launch, connect = region_tools
    inst = launch(role="stopstart")
    with connect(inst) as conn:
        wait_ssh(conn)
    aws.ec2.stop(ec2, region, [inst.instance_id])
    with connect(inst) as conn, pytest.raises(HostError):
        conn.open()
    ec2.start_instances(InstanceIds=[inst.instance_id])
    with connect(inst) as conn:
        wait_ssh(conn)  # same trusted key: a changed key would raise HostKeyError
    aws.ec2.terminate(ec2, region, [inst.instance_id])


def test_the_balancer_follows_registrations_and_health(region_tools, lab):
    clients, region, ec2, launch, connect = region_tools
    elb = clients.elbv2(region)
    arn = elb.create_target_group(Name="lab-test-web", Protocol="HTTP", Port=8080,
                                  VpcId=ec2.describe_subnets()["Subnets"][0]["VpcId"],
                                  HealthCheckPath="/health")["TargetGroups"][0]["TargetGroupArn"]
    inst = launch(role="unhealthy")  # a bare host: nothing answers on the app port
    aws.elb.register(elb, region, arn, [inst.instance_id], 8080)
    states = aws.elb.target_states(elb, region, arn)
    assert states[inst.instance_id] in ("initial", "unhealthy")  # never "healthy" unchecked
    aws.elb.deregister(elb, region, arn, [inst.instance_id], 8080)
    aws.elb.wait_drained(elb, region, arn, [inst.instance_id], timeout=10)
    aws.ec2.terminate(ec2, region, [inst.instance_id])
    # the live group's balancer answers through a healthy host, and says which
    url = lab.info["regions"][region]["load_balancer"] + "/health"
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.headers["X-Lab-Target"].startswith("i-")
