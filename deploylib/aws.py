"""AWS through boto3: EC2, ELBv2 target groups, S3 artifacts, the SSM record.

Functions take their clients as arguments; only `AwsClients` builds clients, once per
service and region, with botocore's standard retry mode (throttling and transient
errors retried with backoff) and connect/read timeouts. Everything the tool creates is
tagged with the run id, the release and the procedure.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from deploylib import waits
from deploylib.errors import CloudError, InputError

TAG_RUN = "deploy:run"
TAG_RELEASE = "deploy:release"
TAG_PROCEDURE = "deploy:procedure"
TAG_ENV = "deploy:env"
TAG_ROLE = "deploy:role"
# On foundation images (base image + packages): the bake cache's content key.
TAG_FOUNDATION = "deploy:foundation"
# On hosts a promotion replaced: the run that may still put them back (demote) until its
# release is recorded. gc keeps them while that run holds the lock.
TAG_RETIRING = "deploy:retiring"


# When set, every AWS call the tool makes is appended to this file as service:Operation
# (the IAM policy test compares them with templates/iam-policy.json).
API_LOG_ENV = "DEPLOY_API_LOG"
_TOOL_DIR = os.path.dirname(os.path.abspath(__file__))
_LAB_DIR = os.path.join(_TOOL_DIR, "lab")


_LIBRARIES = ("botocore", "boto3", "s3transfer", "concurrent", "threading")


def _audit(path: str, model: Any) -> None:
    """Record a call made by the tool's code (not the lab's or a test's own set-up).

    The first frame outside the AWS libraries decides. A call with none (s3transfer's
    upload threads) was started by the tool's upload_file and is counted.
    """
    frame = sys._getframe(2)  # past the hook's own lambda
    while frame is not None and any(lib in frame.f_code.co_filename for lib in _LIBRARIES):
        frame = frame.f_back
    if frame is not None:
        name = frame.f_code.co_filename
        if not name.startswith(_TOOL_DIR) or name.startswith(_LAB_DIR):
            return
    with open(path, "a") as log:
        log.write(f"{model.service_model.signing_name}:{model.name}\n")


class AwsClients:
    """boto3 clients, built lazily and once per (service, region)."""

    def __init__(self, primary_region: str, *, endpoint_url: str | None = None,
                 credentials: dict[str, str] | None = None, path_style: bool = False,
                 max_attempts: int = 8):
        import boto3
        from botocore.config import Config

        self.primary_region = primary_region
        self.endpoint_url = endpoint_url
        self._session = boto3.session.Session(**(credentials or {}))
        self._config = Config(
            retries={"mode": "standard", "max_attempts": max_attempts},
            connect_timeout=5,
            read_timeout=60,
            max_pool_connections=32,
            s3={"addressing_style": "path" if path_style else "auto"},
            signature_version="s3v4",
        )
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()

    def client(self, service: str, region: str | None = None) -> Any:
        key = (service, region or self.primary_region)
        with self._lock:
            if key not in self._clients:
                self._clients[key] = self._session.client(
                    service, region_name=key[1], endpoint_url=self.endpoint_url,
                    config=self._config)
                audit = os.environ.get(API_LOG_ENV)
                if audit:
                    self._clients[key].meta.events.register(
                        "before-call", lambda model, **_: _audit(audit, model))
            return self._clients[key]

    def dynamodb(self) -> Any:
        return self.client("dynamodb")

    def ec2(self, region: str) -> Any:
        return self.client("ec2", region)

    def elbv2(self, region: str) -> Any:
        return self.client("elbv2", region)

    def s3(self) -> Any:
        return self.client("s3")

    def ssm(self) -> Any:
        return self.client("ssm")


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _cloud_error(exc: ClientError, resource: str, fix: str) -> CloudError:
    msg = exc.response.get("Error", {}).get("Message", "")
    return CloudError(f"{exc.operation_name} failed: {_code(exc)} {msg}".strip(),
                      resource=resource, fix=fix)


def tags(run_id: str, env: str, release: str, procedure: str, role: str,
         name: str | None = None) -> list[dict[str, str]]:
    out = {TAG_RUN: run_id, TAG_ENV: env, TAG_RELEASE: release, TAG_PROCEDURE: procedure,
           TAG_ROLE: role, "Name": name or f"deploy-{env}-{role}-{release}"}
    return [{"Key": k, "Value": v} for k, v in out.items()]


def tag_map(tag_list: Iterable[dict[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tag_list or ()}


# -- EC2: instances ------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    instance_id: str
    region: str
    state: str
    address: str | None
    image_id: str
    tags: dict[str, str]

    @classmethod
    def from_api(cls, region: str, data: dict[str, Any], public: bool = False) -> Instance:
        private, public_ip = data.get("PrivateIpAddress"), data.get("PublicIpAddress")
        return cls(
            instance_id=data["InstanceId"],
            region=region,
            state=data["State"]["Name"],
            address=(public_ip or private) if public else (private or public_ip),
            image_id=data.get("ImageId", ""),
            tags=tag_map(data.get("Tags")),
        )


def resolve_subnet(ec2: Any, name_or_id: str, region: str) -> str:
    if name_or_id.startswith("subnet-"):
        return name_or_id
    found = ec2.describe_subnets(Filters=[{"Name": "tag:Name", "Values": [name_or_id]}])
    subnets = found.get("Subnets", [])
    if len(subnets) != 1:
        raise InputError(f"{len(subnets)} subnets are tagged Name={name_or_id}",
                         resource=f"subnet {name_or_id} in {region}",
                         fix="set subnet to a subnet id (subnet-…) for this region")
    return subnets[0]["SubnetId"]


def resolve_security_group(ec2: Any, name_or_id: str, region: str) -> str:
    if name_or_id.startswith("sg-"):
        return name_or_id
    found = ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": [name_or_id]}])
    groups = found.get("SecurityGroups", [])
    if len(groups) != 1:
        raise InputError(f"{len(groups)} security groups are named {name_or_id}",
                         resource=f"security group {name_or_id} in {region}",
                         fix="set security_group to a group id (sg-…) for this region")
    return groups[0]["GroupId"]


def launch(ec2: Any, *, region: str, image_id: str, count: int, instance_type: str,
           subnet_id: str, security_group_ids: list[str], tag_list: list[dict[str, str]],
           client_token: str, key_name: str | None = None) -> list[str]:
    """Launch instances with IMDSv2 required and an encrypted root volume; the client
    token makes a retry idempotent."""
    images = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
    root = images[0].get("RootDeviceName", "/dev/sda1") if images else "/dev/sda1"
    # The image's own root volume, re-stated with encryption on.
    ebs: dict[str, Any] = {"Encrypted": True, "DeleteOnTermination": True}
    for m in images[0].get("BlockDeviceMappings", []) if images else []:
        if m.get("DeviceName") == root and m.get("Ebs"):
            ebs.update({k: m["Ebs"][k] for k in ("SnapshotId", "VolumeSize", "VolumeType")
                        if k in m["Ebs"]})
    if "SnapshotId" not in ebs and "VolumeSize" not in ebs:
        ebs["VolumeSize"] = 8
    args: dict[str, Any] = dict(
        ImageId=image_id, InstanceType=instance_type, MinCount=count, MaxCount=count,
        SubnetId=subnet_id, SecurityGroupIds=security_group_ids, ClientToken=client_token,
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled",
                         "HttpPutResponseHopLimit": 1},
        BlockDeviceMappings=[{"DeviceName": root, "Ebs": ebs}],
        TagSpecifications=[{"ResourceType": "instance", "Tags": tag_list},
                           {"ResourceType": "volume", "Tags": tag_list}],
    )
    if key_name:
        args["KeyName"] = key_name
    try:
        reservation = ec2.run_instances(**args)
    except ClientError as exc:
        raise _cloud_error(exc, f"image {image_id} in {region}",
                           "check the image, subnet, security group and instance type "
                           "exist in this region and your quota") from None
    return [i["InstanceId"] for i in reservation["Instances"]]


def describe(ec2: Any, region: str, instance_ids: list[str],
             public: bool = False) -> list[Instance]:
    """Instances as EC2 sees them; `public` prefers the public address (from outside
    the VPC) over the private one."""
    if not instance_ids:
        return []
    try:
        pages = ec2.get_paginator("describe_instances").paginate(InstanceIds=instance_ids)
        return [Instance.from_api(region, i, public) for page in pages
                for r in page["Reservations"] for i in r["Instances"]]
    except ClientError as exc:
        raise _cloud_error(exc, f"instances {', '.join(instance_ids)} in {region}",
                           "check the run state names instances that still exist") from None


def find_tagged(ec2: Any, region: str, filters: dict[str, str]) -> list[Instance]:
    """Instances (not terminated) carrying all the given tags."""
    f = [{"Name": f"tag:{k}", "Values": [v]} for k, v in filters.items()]
    f.append({"Name": "instance-state-name",
              "Values": ["pending", "running", "stopping", "stopped"]})
    pages = ec2.get_paginator("describe_instances").paginate(Filters=f)
    return [Instance.from_api(region, i) for page in pages
            for r in page["Reservations"] for i in r["Instances"]]


def wait_instances(ec2: Any, region: str, instance_ids: list[str], state: str,
                   timeout: float) -> list[Instance]:
    dead = {"terminated", "shutting-down"} - {state}

    def check() -> list[Instance] | None:
        found = describe(ec2, region, instance_ids)
        for inst in found:
            if inst.state in dead:
                raise CloudError(f"instance is {inst.state}, not {state}",
                                 resource=f"instance {inst.instance_id} in {region}",
                                 fix="see its console output and the account's quotas")
        return found if found and all(i.state == state for i in found) else None

    return waits.until(check, timeout=timeout, what=f"instances to be {state}",
                       resource=f"{', '.join(instance_ids)} in {region}",
                       fix="check the EC2 console for the instances' state and status checks")


def stop(ec2: Any, region: str, instance_ids: list[str]) -> None:
    try:
        ec2.stop_instances(InstanceIds=instance_ids)
    except ClientError as exc:
        raise _cloud_error(exc, f"instances {', '.join(instance_ids)} in {region}",
                           "check they exist and are not protected from stopping") from None


def terminate(ec2: Any, region: str, instance_ids: list[str]) -> None:
    if not instance_ids:
        return
    try:
        ec2.terminate_instances(InstanceIds=instance_ids)
    except ClientError as exc:
        if _code(exc) == "InvalidInstanceID.NotFound":
            return  # already gone: terminating is idempotent
        raise _cloud_error(exc, f"instances {', '.join(instance_ids)} in {region}",
                           "check termination protection on them") from None


def console_output(ec2: Any, instance_id: str) -> str:
    out = ec2.get_console_output(InstanceId=instance_id, Latest=True)
    return out.get("Output", "") or ""


# -- EC2: images ---------------------------------------------------------------------------


def find_base_image(ec2: Any, region: str, spec: str, owner: str | None) -> str:
    """An image id as given, or the newest available image whose name matches."""
    if spec.startswith("ami-"):
        return spec
    args: dict[str, Any] = {"Filters": [{"Name": "name", "Values": [spec]},
                                        {"Name": "state", "Values": ["available"]}]}
    if owner:
        args["Owners"] = [owner]
    images = ec2.describe_images(**args).get("Images", [])
    if not images:
        raise InputError(f"no available image matches name filter {spec!r}",
                         resource=f"base_image in {region}",
                         fix="check base_image and base_image_owner in deploy.toml")
    return max(images, key=lambda i: i.get("CreationDate", ""))["ImageId"]


def create_image(ec2: Any, region: str, instance_id: str, name: str,
                 tag_list: list[dict[str, str]], no_reboot: bool) -> str:
    try:
        out = ec2.create_image(InstanceId=instance_id, Name=name, NoReboot=no_reboot,
                               TagSpecifications=[{"ResourceType": "image", "Tags": tag_list}])
    except ClientError as exc:
        raise _cloud_error(exc, f"instance {instance_id} in {region}",
                           "check the instance exists and the image name is unused") from None
    return out["ImageId"]


def copy_image(ec2_dest: Any, *, source_region: str, dest_region: str, image_id: str,
               name: str, tag_list: list[dict[str, str]], client_token: str) -> str:
    try:
        out = ec2_dest.copy_image(SourceRegion=source_region, SourceImageId=image_id,
                                  Name=name, ClientToken=client_token, Encrypted=True)
    except ClientError as exc:
        raise _cloud_error(exc, f"image {image_id} to {dest_region}",
                           "check the destination region is enabled for the account") from None
    # Copies do not carry user tags; tag the copy so it is found and cleaned like the rest.
    ec2_dest.create_tags(Resources=[out["ImageId"]], Tags=tag_list)
    return out["ImageId"]


def find_image(ec2: Any, name: str) -> str | None:
    """An image this account owns with exactly this name (images are named per run)."""
    images = ec2.describe_images(Owners=["self"],
                                 Filters=[{"Name": "name", "Values": [name]}]).get("Images", [])
    usable = [i for i in images if i.get("State") in ("pending", "available")]
    return usable[0]["ImageId"] if usable else None


def wait_image(ec2: Any, region: str, image_id: str, timeout: float) -> None:
    def check() -> bool:
        images = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
        state = images[0]["State"] if images else "missing"
        if state in ("failed", "deregistered", "missing", "error", "invalid"):
            raise CloudError(f"image is {state}", resource=f"image {image_id} in {region}",
                             fix="see the image's StateReason in the EC2 console")
        return state == "available"

    waits.until(check, timeout=timeout, what="the image to be available",
                resource=f"image {image_id} in {region}",
                fix="image creation and copies can take many minutes; raise "
                "timeouts.image in deploy.toml or check the snapshot's progress")


def mark_retiring(ec2: Any, instance_ids: list[str], run_id: str) -> None:
    """Tag hosts a promotion replaced with the run that may still put them back."""
    if instance_ids:
        ec2.create_tags(Resources=instance_ids, Tags=[{"Key": TAG_RETIRING, "Value": run_id}])


def tag_snapshots(ec2: Any, image_id: str, tag_list: list[dict[str, str]]) -> list[str]:
    """Tag an image's snapshots like the image, so they are found and cleaned with it."""
    snapshots = snapshots_of(ec2.describe_images(ImageIds=[image_id]).get("Images", []))
    if snapshots:
        ec2.create_tags(Resources=snapshots, Tags=tag_list)
    return snapshots


def snapshots_of(images: Iterable[dict[str, Any]]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for i in images for m in i.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")]


def tagged_images(ec2: Any, filters: dict[str, str]) -> list[dict[str, Any]]:
    """This account's images carrying all the given tags (any state but deregistered)."""
    f = [{"Name": f"tag:{k}", "Values": [v]} for k, v in filters.items()]
    return ec2.describe_images(Owners=["self"], Filters=f).get("Images", [])


def tagged_snapshots(ec2: Any, filters: dict[str, str]) -> list[dict[str, Any]]:
    f = [{"Name": f"tag:{k}", "Values": [v]} for k, v in filters.items()]
    pages = ec2.get_paginator("describe_snapshots").paginate(OwnerIds=["self"], Filters=f)
    return [snap for page in pages for snap in page.get("Snapshots", [])]


def delete_snapshot(ec2: Any, region: str, snapshot_id: str) -> None:
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except ClientError as exc:
        if _code(exc) == "InvalidSnapshot.NotFound":
            return
        raise _cloud_error(exc, f"snapshot {snapshot_id} in {region}",
                           "check no image still uses it") from None


def delete_image(ec2: Any, region: str, image_id: str) -> list[str]:
    """Deregister an image and delete its snapshots (an image alone leaks its storage)."""
    images = ec2.describe_images(ImageIds=[image_id]).get("Images", []) if image_id else []
    if not images:
        return []
    snapshots = snapshots_of(images)
    try:
        ec2.deregister_image(ImageId=image_id)
    except ClientError as exc:
        if _code(exc) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            raise _cloud_error(exc, f"image {image_id} in {region}",
                               "check the image is this account's") from None
    for snap in snapshots:
        delete_snapshot(ec2, region, snap)
    return snapshots


def image_tags(ec2: Any, image_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    ids = sorted(set(image_ids))
    if not ids:
        return {}
    try:
        images = ec2.describe_images(ImageIds=ids).get("Images", [])
    except ClientError:
        return {}
    return {i["ImageId"]: tag_map(i.get("Tags")) for i in images}


# -- ELBv2: target groups ------------------------------------------------------------------


def resolve_target_group(elbv2: Any, name_or_arn: str, region: str) -> str:
    if name_or_arn.startswith("arn:"):
        return name_or_arn
    try:
        groups = elbv2.describe_target_groups(Names=[name_or_arn])["TargetGroups"]
    except ClientError as exc:
        raise _cloud_error(exc, f"target group {name_or_arn} in {region}",
                           "check target_group in deploy.toml names a group in this "
                           "region") from None
    return groups[0]["TargetGroupArn"]


def target_states(elbv2: Any, group_arn: str) -> dict[str, str]:
    """Registered targets of a group and their health state (initial, healthy, draining…)."""
    out = elbv2.describe_target_health(TargetGroupArn=group_arn)
    return {d["Target"]["Id"]: d["TargetHealth"]["State"]
            for d in out.get("TargetHealthDescriptions", [])}


def register(elbv2: Any, group_arn: str, instance_ids: list[str], port: int) -> None:
    if instance_ids:
        elbv2.register_targets(TargetGroupArn=group_arn,
                               Targets=[{"Id": i, "Port": port} for i in instance_ids])


def deregister(elbv2: Any, group_arn: str, instance_ids: list[str], port: int) -> None:
    if instance_ids:
        elbv2.deregister_targets(TargetGroupArn=group_arn,
                                 Targets=[{"Id": i, "Port": port} for i in instance_ids])


def wait_healthy(elbv2: Any, group_arn: str, instance_ids: list[str], region: str,
                 timeout: float) -> None:
    def check() -> bool:
        states = target_states(elbv2, group_arn)
        return all(states.get(i) == "healthy" for i in instance_ids)

    waits.until(check, timeout=timeout, what="targets to be healthy in the target group",
                resource=f"{', '.join(instance_ids)} in {region}",
                fix="check the service on those hosts answers the health path, and the "
                "security group lets the load balancer reach the app port")


def wait_drained(elbv2: Any, group_arn: str, instance_ids: list[str], region: str,
                 timeout: float) -> None:
    """Wait until deregistered targets have finished draining (no longer listed)."""

    def check() -> bool:
        states = target_states(elbv2, group_arn)
        return not any(states.get(i) in ("draining", "healthy", "initial", "unhealthy")
                       for i in instance_ids)

    waits.until(check, timeout=timeout, what="targets to finish draining",
                resource=f"{', '.join(instance_ids)} in {region}",
                fix="long-lived connections hold draining open; lower the target group's "
                "deregistration_delay or raise timeouts.drain")


# -- S3: the artifact store ----------------------------------------------------------------


def published_sha256(s3: Any, bucket: str, key: str) -> str | None:
    """The sha256 an artifact was published with, or None when nothing is there."""
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise _cloud_error(exc, f"s3://{bucket}/{key}",
                           "check the artifact bucket exists and you may read it") from None
    return head.get("Metadata", {}).get("sha256") or ""


def upload_artifact(s3: Any, bucket: str, key: str, path: str, sha256: str) -> None:
    """Upload an artifact, recording its sha256 with it."""
    try:
        s3.upload_file(path, bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})
    except ClientError as exc:
        raise _cloud_error(exc, f"s3://{bucket}/{key}",
                           "check artifact_bucket exists and you may write to it") from None


def download_artifact(s3: Any, bucket: str, key: str, path: Any) -> None:
    """Fetch a published artifact to a local file (written beside, then renamed)."""
    from pathlib import Path

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        s3.download_file(bucket, key, str(partial))
    except ClientError as exc:
        partial.unlink(missing_ok=True)
        raise _cloud_error(exc, f"s3://{bucket}/{key}",
                           "check the release was published and you may read it") from None
    os.replace(partial, target)


def presign(s3: Any, bucket: str, key: str, expires: int = 900) -> str:
    """A short-lived GET URL; it is a credential: never log it or store it in state."""
    return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                     ExpiresIn=expires)


# -- SSM: the record of what is live -------------------------------------------------------


def read_record(ssm: Any, name: str) -> dict[str, Any] | None:
    try:
        value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as exc:
        if _code(exc) == "ParameterNotFound":
            return None
        raise _cloud_error(exc, f"parameter {name}", "check SSM permissions") from None
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise CloudError("the live record is not JSON", resource=f"parameter {name}",
                         fix="restore it from its parameter history") from None


def write_record(ssm: Any, name: str, record: dict[str, Any]) -> None:
    ssm.put_parameter(Name=name, Value=json.dumps(record, sort_keys=True), Type="String",
                      Overwrite=True)
