"""The lab itself: the AWS API's effects happen on real hosts and a real balancer."""

from __future__ import annotations

import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deploylib import aws, ssh, waits
from deploylib.errors import HostError, HostKeyError
from deploylib.lab.lab_provider import LabProvider
from tests.conftest import open_to_services

pytestmark = pytest.mark.lab


@pytest.fixture
def region_tools(lab):
    clients = lab.clients()
    region = lab.env.primary_region
    ec2 = clients.ec2(region)
    found = aws.ec2.describe_subnet(ec2, lab.env.subnet, region)
    subnet = found["SubnetId"]
    group = aws.ec2.resolve_security_group(ec2, lab.env.security_group, region, found["VpcId"])
    base = aws.ec2.find_base_image(ec2, region, lab.env.base_image, None)
    provider = LabProvider(lab.info, lab.env)

    def launch(image=base, role="labtest"):
        ids = aws.ec2.launch(ec2, region=region, image_id=image, count=1, instance_type="t3.micro",
                         subnet_id=subnet, security_group_ids=[group],
                         tag_list=aws.tags("lab-test", "lab", "0", "none", role),
                         client_token=f"lab-test-{role}-{image}")
        return aws.ec2.wait_instances(ec2, region, ids, "running", timeout=30)[0]

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
        # As on an Ubuntu AMI: a user of its own, root through passwordless sudo only.
        assert conn.run("id -un").output.strip() == lab.env.ssh_user != "root"
        assert conn.run("apt-get install -y nginx", check=False).exit_status != 0
        out = conn.run_as_root("apt-get install -y nginx\n").output
        assert "recorded, not installed: nginx" in out
    aws.ec2.terminate(ec2, region, [inst.instance_id])
    assert not Path(root).exists()
    registry = Path(root).parents[2] / "hostkeys"
    assert not (registry / f"{inst.instance_id}.pub").exists()


@pytest.mark.lab_shape(regions=2)  # regions are what is tested
def test_images_snapshot_the_root_and_copies_carry_it(region_tools, lab):
    clients, region, ec2, launch, connect = region_tools
    builder = launch(role="snap-builder")
    with connect(builder) as conn:
        wait_ssh(conn)
        conn.run_as_root("mkdir -p $DEPLOY_HOST_ROOT/srv && "
                         "echo baked > $DEPLOY_HOST_ROOT/srv/marker\n")
    image = aws.ec2.create_image(ec2, region, builder.instance_id, "lab-test-snap",
                             [{"Key": "t", "Value": "1"}], False)
    aws.ec2.wait_image(ec2, region, image, timeout=30)  # a copy needs its source available
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


def test_host_keys_are_kept_once_trusted_and_a_changed_one_is_refused(region_tools, lab):
    """cloud-init prints the keys once per instance and the console keeps only what was
    printed since the last boot: after a restart the console shows none, and the key
    first trusted still serves; a host that comes back with another key is refused."""
    clients, region, ec2, launch, connect = region_tools
    inst = launch(role="keepkeys")
    with connect(inst) as conn:
        wait_ssh(conn)
    first = aws.ec2.console_output(ec2, region, inst.instance_id, latest=True)
    assert "BEGIN SSH HOST KEY KEYS" in first and "random: crng init done" in first
    aws.ec2.stop(ec2, region, [inst.instance_id])
    ec2.start_instances(InstanceIds=[inst.instance_id])
    assert "SSH HOST KEY" not in aws.ec2.console_output(ec2, region, inst.instance_id,
                                                        latest=False)
    with connect(inst) as conn:
        wait_ssh(conn)  # the kept key
    # The host is replaced by one with another key (which it prints, as a new one would).
    aws.ec2.stop(ec2, region, [inst.instance_id])
    (lab.cli.lab_dir / "hosts" / inst.instance_id / "ssh_host_ed25519_key").unlink()
    ec2.start_instances(InstanceIds=[inst.instance_id])
    assert "BEGIN SSH HOST KEY KEYS" in aws.ec2.console_output(ec2, region, inst.instance_id,
                                                               latest=True)
    with connect(inst) as conn, pytest.raises(HostKeyError, match="different SSH host key"):
        waits.until(lambda: _refused_or_none(conn), timeout=10, what="sshd", resource="-",
                    fix="-")
    aws.ec2.terminate(ec2, region, [inst.instance_id])


def _refused_or_none(conn):
    try:
        conn.open()
        return True
    except HostKeyError:
        raise
    except HostError:
        return None  # sshd not listening yet


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


def test_a_deregistered_host_is_shown_draining_until_the_delay_while_it_serves_nothing(
        region_tools, lab):
    """As ALB documents: routing stops at once and an idle target is done at once, but
    DescribeTargetHealth shows it `draining` until the deregistration delay has passed;
    then it is `unused`. Registered again, one passing check makes it healthy."""
    from deploylib import render
    from tests.lab.checks import live_hosts, target_group

    clients, region, ec2, launch, connect = region_tools
    elb, group = clients.elbv2(region), target_group(lab, region)
    host, other = live_hosts(lab)[region][:2]
    delay = aws.elb.deregistration_delay(elb, region, group)
    aws.elb.deregister(elb, region, group, [host.instance_id], lab.env.app_port)
    assert aws.elb.target_states(elb, region, group)[host.instance_id] == "draining"
    url = lab.info["regions"][region]["load_balancer"] + lab.env.health_path
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    assert {opener.open(url, timeout=5).headers["X-Lab-Target"] for _ in range(8)} == \
        {other.instance_id}
    # The host itself has nothing in flight, while the API still says draining.
    with connect(host) as conn:
        said = conn.run_as_root(render.idle_script(app_port=lab.env.app_port, quiet=0.2,
                                                   ceiling=delay)).output
    assert said.startswith("idle: nothing in flight for 0.2s")
    assert aws.elb.target_states(elb, region, group)[host.instance_id] == "draining"
    waits.until(lambda: host.instance_id not in aws.elb.target_states(elb, region, group),
                timeout=delay + 10, what="the deregistration delay", resource=host.instance_id,
                fix="-")
    asked = elb.describe_target_health(TargetGroupArn=group, Targets=[
        {"Id": host.instance_id, "Port": lab.env.app_port}])["TargetHealthDescriptions"]
    assert asked[0]["TargetHealth"]["State"] == "unused"
    aws.elb.put_in(elb, region, group, [host.instance_id], lab.env.app_port, timeout=30)


def test_hosts_live_where_their_services_can_reach_them(tmp_path):
    """A lab directory other users cannot pass through (a clone under /root) keeps its
    hosts' roots in a directory of its own that they can; an open one keeps them."""
    import os

    from deploylib.lab.hosts import roots_place

    closed = tmp_path / "closed"
    (closed / "lab").mkdir(parents=True)
    os.chmod(closed, 0o700)
    place = roots_place(closed / "lab")
    assert place != closed / "lab" and place.parent == Path(tempfile.gettempdir())
    assert roots_place(closed / "lab") == place  # the same lab, the same place
    os.chmod(closed, 0o755)
    open_to_services(tmp_path)  # pytest makes its temporary directories 0700
    assert roots_place(closed / "lab") == closed / "lab"


def test_the_labs_endpoint_answers_only_its_own_keys_kept_from_other_users(lab):
    """A lab's keys are made when it starts and readable by its owner only; a request
    signed with any other secret (the lab's fixed ones of before, say) changes nothing."""
    import stat

    from botocore.exceptions import ClientError

    from deploylib.aws import AwsClients
    from deploylib.lab import KEYS_FILE, credentials

    keys = lab.cli.lab_dir / KEYS_FILE
    assert stat.S_IMODE(keys.stat().st_mode) == 0o600
    admin = credentials("admin", lab.cli.lab_dir)
    assert admin["aws_secret_access_key"] != "lab-admin-secret"
    forged = AwsClients(lab.env.primary_region, endpoint_url=lab.info["endpoint"],
                        max_attempts=0, credentials={**admin,
                                                     "aws_secret_access_key": "lab-admin-secret"})
    with pytest.raises(ClientError, match="AuthFailure"):
        forged.ec2(lab.env.primary_region).run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, UserData="touch /tmp/owned")
    assert lab.clients().ec2(lab.env.primary_region).describe_instances(Filters=[
        {"Name": "image-id", "Values": ["ami-12c6146b"]}])["Reservations"] == []


def test_user_data_changes_its_own_host_and_nothing_of_the_machine(region_tools, lab, tmp_path):
    """As on EC2, an instance's user data acts on its own instance only: in the lab it
    runs with the machine read-only but for the host's root, as root without the powers
    to undo that, and without the lab daemon's environment."""
    from tests.lab.checks import host_root

    clients, region, ec2, _launch, _connect = region_tools
    found = aws.ec2.describe_subnet(ec2, lab.env.subnet, region)
    group = aws.ec2.resolve_security_group(ec2, lab.env.security_group, region, found["VpcId"])
    base = aws.ec2.find_base_image(ec2, region, lab.env.base_image, None)
    outside = open_to_services(tmp_path) / "written-by-user-data"
    script = (
        "#!/bin/bash\n"
        'echo inside > "$DEPLOY_HOST_ROOT/var/lib/inside"\n'
        f"echo outside > {outside} || echo 'refused: outside'\n"
        "mount -o remount,rw / 2>/dev/null || echo 'refused: remount'\n"
        "env | grep -q '^DEPLOY_LAB_DIR=' || echo 'no lab directory'\n")
    iid = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1, InstanceType="t3.micro",
                            SubnetId=found["SubnetId"], SecurityGroupIds=[group],
                            UserData=script)["Instances"][0]["InstanceId"]
    try:
        console = host_root(lab, iid).parent / "console.log"
        waits.until(lambda: console.exists() and "user data exited" in console.read_text(),
                    timeout=30, what="the user data", resource=iid, fix="read daemon.log")
        log = (host_root(lab, iid) / "var/log/cloud-init-output.log").read_text()
        assert (host_root(lab, iid) / "var/lib/inside").read_text() == "inside\n"
        assert not outside.exists()
        assert "Read-only file system" in log and "refused: outside" in log
        assert "refused: remount" in log and "no lab directory" in log
    finally:
        aws.ec2.terminate(ec2, region, [iid])
