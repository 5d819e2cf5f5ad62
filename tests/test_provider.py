"""The real provider's trust source: the host keys an instance prints to its console.

Run as an operator would against EC2 (moto's server standing in, at AWS_ENDPOINT_URL):
a live host that has printed no key is never trusted, so a hotfix stops before touching
anything — and no connection is even tried."""

from __future__ import annotations

import subprocess
import sys
from urllib.parse import urlparse

import pytest

from deploylib import aws, config
from deploylib.provider import AwsProvider
from tests.conftest import REPO, tool_env

PRODUCTION = """
[environments.production]
provider = "aws"
primary_region = "us-east-1"
base_image = "{image}"
subnet = "{subnet}"
security_group = "{group}"
target_group = "{target_group}"
artifact_bucket = "prod-artifacts"
lock_table = "prod-locks"
app_source = "{app}"
state_dir = "{runs}"
"""


def _env(name: str = "production"):
    return config.parse(PRODUCTION.replace("production", name).format(
        image="ami-0123456789abcdef0", subnet="s", group="g", target_group="t", app="app",
        runs="runs")).environment(name)


@pytest.mark.parametrize("region", ["us-east-1", "eu-west-1", "ap-southeast-4", "il-central-1"])
@pytest.mark.parametrize("bucket", ["acme-artifacts", "artifacts.acme.example"])
def test_presigned_urls_name_the_buckets_own_region(monkeypatch, region, bucket):
    """Signed here, offline: the host a real instance would fetch the release from."""
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "example")
    env = config.parse(PRODUCTION.format(image="ami-0123456789abcdef0", subnet="s", group="g",
                                         target_group="t", app="app", runs="runs")
                       .replace("us-east-1", region).replace("prod-artifacts", bucket)
                       ).environment("production")
    url = urlparse(aws.s3.presign(AwsProvider(env).aws_clients(env).s3(), bucket,
                                  "releases/production/1.2.3.tar.gz", expires=60))
    if "." in bucket:  # no certificate covers a dotted bucket as a host name
        assert (url.hostname, url.path) == (f"s3.{region}.amazonaws.com",
                                            f"/{bucket}/releases/production/1.2.3.tar.gz")
    else:
        assert url.hostname == f"{bucket}.s3.{region}.amazonaws.com"
    assert url.scheme == "https" and "X-Amz-Credential=AKIAEXAMPLE%2F" in url.query
    assert f"%2F{region}%2Fs3%2F" in url.query  # signed for the bucket's region


def test_no_console_keys_means_no_trusted_key(aws_clients):
    ec2 = aws_clients.ec2("us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    inst = aws.ec2.wait_instances(ec2, "us-east-1", [iid], "running", timeout=10)[0]
    # moto's console output carries no SSH host key block, so nothing is trusted, and an
    # SSH wait would keep waiting rather than trust whichever key answers.
    assert AwsProvider(_env()).trusted_keys(aws_clients, inst) == ()


def test_a_hotfix_on_ec2_trusts_no_host_that_printed_no_key(aws_clients, moto_endpoint,
                                                            tmp_path):
    ec2, elb = aws_clients.ec2("us-east-1"), aws_clients.elbv2("us-east-1")
    vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName="prod-app", Description="app",
                                      VpcId=vpc)["GroupId"]
    target_group = elb.create_target_group(Name="prod-web", Protocol="HTTP", Port=8080,
                                           VpcId=vpc)["TargetGroups"][0]["TargetGroupArn"]
    balancer = elb.create_load_balancer(Name="prod-lb", Subnets=[subnet],
                                        Scheme="internal")["LoadBalancers"][0]["LoadBalancerArn"]
    elb.create_listener(LoadBalancerArn=balancer, Protocol="HTTP", Port=80, DefaultActions=[
        {"Type": "forward", "TargetGroupArn": target_group}])
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    hosts = [i["InstanceId"] for i in ec2.run_instances(
        ImageId=image, MinCount=2, MaxCount=2, SubnetId=subnet)["Instances"]]
    elb.register_targets(TargetGroupArn=target_group, Targets=[{"Id": i} for i in hosts])
    aws_clients.s3().create_bucket(Bucket="prod-artifacts")
    aws_clients.dynamodb().create_table(
        TableName="prod-locks", BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "env", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "env", "KeyType": "HASH"}])
    config = tmp_path / "deploy.toml"
    config.write_text(PRODUCTION.format(image=image, subnet=subnet, group=group,
                                        target_group=target_group, app=REPO / "examples/app",
                                        runs=tmp_path / "runs"))
    env = tool_env(DEPLOY_CONFIG=str(config), AWS_ENDPOINT_URL=moto_endpoint,
                   AWS_ACCESS_KEY_ID="lab", AWS_SECRET_ACCESS_KEY="lab-secret",
                   AWS_EC2_METADATA_DISABLED="true")
    proc = subprocess.run([sys.executable, "-m", "invoke", "hotfix", "--version", "1.0.1",
                           "--env", "production"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-2000:]
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][0]
    assert "select-hosts" in error and "no trusted host key" in error
    assert "no host was touched" in error
    states = elb.describe_target_health(TargetGroupArn=target_group)
    assert sorted(d["Target"]["Id"] for d in states["TargetHealthDescriptions"]) == sorted(hosts)


def test_an_instance_type_without_the_latest_console_falls_back_to_the_buffered_one(
        faulty_aws):
    """GetConsoleOutput(Latest=True) is Nitro-only: elsewhere AWS refuses it, and the
    buffered output (where cloud-init's first boot printed the keys) is read instead."""
    import json

    clients, faults = faulty_aws
    ec2 = clients.ec2("us-east-1")
    image = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    iid = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    (faults / "faults.json").write_text(json.dumps({"rules": [
        {"action": "GetConsoleOutput", "error": "UnsupportedOperation", "times": 1}]}))
    inst = aws.ec2.wait_instances(ec2, "us-east-1", [iid], "running", timeout=10)[0]
    assert AwsProvider(_env()).trusted_keys(clients, inst) == ()  # no keys in moto's text
    assert json.loads((faults / "faults-hits.json").read_text()) == {
        "0:GetConsoleOutput": 1}  # the Latest call was refused, the fallback answered
