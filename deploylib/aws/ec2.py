"""EC2: instances (launched, described, stopped, terminated) and images (created, copied,
found, deleted with their snapshots)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, cast

from deploylib import waits
from deploylib.aws import TAG_DIGEST, TAG_ENV, TAG_RETIRING, TAG_RUN, calling, tag_map
from deploylib.errors import CloudError, InputError, WaitTimeout

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_ec2 import EC2Client
    from mypy_boto3_ec2.literals import ResourceTypeType
    from mypy_boto3_ec2.type_defs import (
        FilterTypeDef,
        ImageTypeDef,
        LaunchTemplateVersionTypeDef,
        RequestLaunchTemplateDataTypeDef,
        SecurityGroupTypeDef,
        SnapshotTypeDef,
        SubnetTypeDef,
        TagSpecificationTypeDef,
    )

LIVE_STATES: list[str] = ["pending", "running", "stopping", "stopped"]
# EC2 is eventually consistent (AWS's EC2 API reference, "Eventual consistency"): an id
# just created can be unknown to the next call for a while, a snapshot just released
# from its image still in use. Within this long, those answers mean "not yet".
SETTLE = 120.0



def tag_specifications(kinds: tuple[ResourceTypeType, ...], tag_list: list[dict[str, str]]
                       ) -> list[TagSpecificationTypeDef]:
    """The tags of what a call creates, for each kind of resource it creates."""
    return [{"ResourceType": kind, "Tags": [{"Key": t["Key"], "Value": t["Value"]}
                                            for t in tag_list]} for kind in kinds]

@dataclass(frozen=True)
class Instance:
    instance_id: str
    region: str
    state: str
    address: str | None
    image_id: str
    tags: dict[str, str]
    launched: datetime | None = None  # LaunchTime, as botocore parses it

    @classmethod
    def from_api(cls, region: str, data: Mapping[str, Any], public: bool = False
                 ) -> Instance:
        private, public_ip = data.get("PrivateIpAddress"), data.get("PublicIpAddress")
        return cls(
            instance_id=data["InstanceId"],
            region=region,
            state=data["State"]["Name"],
            address=(public_ip or private) if public else (private or public_ip),
            image_id=data.get("ImageId", ""),
            tags=tag_map(data.get("Tags")),
            launched=data.get("LaunchTime"),
        )


def _ids(instance_ids: Iterable[str], region: str) -> str:
    return f"instances {', '.join(instance_ids)} in {region}"


# -- instances ----------------------------------------------------------------------------------


def describe_subnet(ec2: EC2Client, name_or_id: str, region: str) -> SubnetTypeDef:
    """The subnet (its VpcId and AvailabilityZone with it), by id or by Name tag."""
    with calling(f"subnet {name_or_id} in {region}", "check subnet in deploy.toml"):
        if name_or_id.startswith("subnet-"):
            found = ec2.describe_subnets(SubnetIds=[name_or_id])
        else:
            found = ec2.describe_subnets(Filters=[{"Name": "tag:Name", "Values": [name_or_id]}])
    subnets = found.get("Subnets", [])
    if len(subnets) != 1:
        raise InputError(f"{len(subnets)} subnets are tagged Name={name_or_id}",
                         resource=f"subnet {name_or_id} in {region}",
                         fix="set subnet to a subnet id (subnet-…) for this region")
    return subnets[0]


def security_group(ec2: EC2Client, name_or_id: str, region: str, vpc_id: str
                   ) -> SecurityGroupTypeDef:
    """The security group, by id or by name within the subnet's VPC: a group name is
    unique only within a VPC, and a group of another VPC cannot be used there."""
    by_id = name_or_id.startswith("sg-")
    with calling(f"security group {name_or_id} in {region}",
                 "check security_group in deploy.toml"):
        found = ec2.describe_security_groups(Filters=[
            {"Name": "group-id" if by_id else "group-name", "Values": [name_or_id]},
            {"Name": "vpc-id", "Values": [vpc_id]}])
    groups = found.get("SecurityGroups", [])
    if len(groups) != 1:
        raise InputError(f"no security group {name_or_id} in the subnet's VPC {vpc_id}",
                         resource=f"security group {name_or_id} in {region}",
                         fix="set security_group to a group of the subnet's VPC (its id, "
                         "sg-…, or its name)")
    return groups[0]


def resolve_security_group(ec2: EC2Client, name_or_id: str, region: str, vpc_id: str) -> str:
    return str(security_group(ec2, name_or_id, region, vpc_id)["GroupId"])


def _launch_spec(ec2: EC2Client, region: str, image_id: str, instance_type: str,
                 tag_list: list[dict[str, str]], key_name: str | None) -> dict[str, Any]:
    """What every instance is launched with, by RunInstances or a launch template: IMDSv2
    required, the image's root volume re-stated encrypted, tags on instance and volume."""
    fix = ("check the image, subnet, security group and instance type exist in this region "
           "and your quota")
    with calling(f"image {image_id} in {region}", fix):
        images = ec2.describe_images(ImageIds=[image_id]).get("Images", [])
    root = images[0].get("RootDeviceName", "/dev/sda1") if images else "/dev/sda1"
    ebs: dict[str, Any] = {"Encrypted": True, "DeleteOnTermination": True}
    for m in images[0].get("BlockDeviceMappings", []) if images else []:
        if m.get("DeviceName") == root and m.get("Ebs"):
            ebs.update({k: m["Ebs"][k] for k in ("SnapshotId", "VolumeSize", "VolumeType")
                        if k in m["Ebs"]})
    if "SnapshotId" not in ebs and "VolumeSize" not in ebs:
        ebs["VolumeSize"] = 8
    spec: dict[str, Any] = dict(
        ImageId=image_id, InstanceType=instance_type,
        MetadataOptions={"HttpTokens": "required", "HttpEndpoint": "enabled",
                         "HttpPutResponseHopLimit": 1},
        BlockDeviceMappings=[{"DeviceName": root, "Ebs": ebs}],
        TagSpecifications=tag_specifications(("instance", "volume"), tag_list),
    )
    if key_name:
        spec["KeyName"] = key_name
    return spec


def launch(ec2: EC2Client, *, region: str, image_id: str, count: int, instance_type: str,
           subnet_id: str, security_group_ids: list[str], tag_list: list[dict[str, str]],
           client_token: str, key_name: str | None = None,
           instance_profile: str | None = None) -> list[str]:
    """Launch instances with IMDSv2 required and an encrypted root volume; the client
    token makes a retry idempotent. `instance_profile`: the role they act with (their
    SSM agent's, for Run Command)."""
    args = _launch_spec(ec2, region, image_id, instance_type, tag_list, key_name)
    args.update(MinCount=count, MaxCount=count, SubnetId=subnet_id,
                SecurityGroupIds=security_group_ids, ClientToken=client_token)
    if instance_profile:
        args["IamInstanceProfile"] = _profile_spec(instance_profile)
    with calling(f"image {image_id} in {region}", "check the image, subnet, security group "
                 "and instance type exist in this region and your quota"):
        reservation = ec2.run_instances(**args)
    return [i["InstanceId"] for i in reservation["Instances"]]


def _profile_spec(profile: str) -> Any:
    """An instance profile as EC2 takes it (RunInstances and launch templates alike):
    by ARN, or by name."""
    return {"Arn": profile} if profile.startswith("arn:") else {"Name": profile}


def dry_run_launch(ec2: EC2Client, *, region: str, image_id: str, instance_type: str,
                   subnet_id: str, security_group_ids: list[str], tag_list: list[dict[str, str]],
                   key_name: str | None, instance_profile: str | None) -> None:
    """Ask EC2 whether the caller may launch as a deploy does (RunInstances with
    DryRun): the image, subnet, security groups, the tags, and passing the instance
    profile's role. Raises as the launch would (PermissionDenied naming the action);
    nothing is launched."""
    args = _launch_spec(ec2, region, image_id, instance_type, tag_list, key_name)
    args.update(MinCount=1, MaxCount=1, SubnetId=subnet_id, DryRun=True,
                SecurityGroupIds=security_group_ids)
    if instance_profile:
        args["IamInstanceProfile"] = _profile_spec(instance_profile)
    try:
        with calling(f"a launch in {region} (DryRun)", "grant what AWS names (`invoke policy`)"):
            ec2.run_instances(**args)
    except CloudError as exc:
        if exc.code == "DryRunOperation":  # "Request would have succeeded"
            return
        raise


# -- launch templates ---------------------------------------------------------------------------


# EC2's limit for user data, in raw form before base64 (launch templates' included).
USER_DATA_LIMIT = 16384


def packed_user_data(script: str, *, what: str) -> bytes:
    """A script as user data: gzip-compressed, which cloud-init reads as it reads the
    script (its "compressed content"), and at a third of the size; the same bytes for the
    same script (no timestamp), so a resumed run renders what it rendered. Refused in one
    line when even compressed it is over EC2's limit."""
    import gzip

    packed = gzip.compress(script.encode(), compresslevel=9, mtime=0)
    if len(packed) > USER_DATA_LIMIT:
        raise InputError(f"{what} is {len(packed):,} bytes compressed, over EC2's "
                         f"{USER_DATA_LIMIT:,}-byte limit for user data",
                         resource=what, fix="shorten what the environment adds to it "
                         "(its app's start, reload and health settings)")
    return packed


@dataclass(frozen=True)
class TemplateVersion:
    template_id: str
    name: str
    version: int
    image_id: str
    tags: dict[str, str]
    created: float = 0.0  # epoch seconds
    description: str = ""  # the client token of the run that made it
    # what its instances launch with, as the template holds it (base64 user data, the
    # instance type, security groups, profile): a resumed run's own version is its own
    # only when these are what the run renders
    launches: tuple[str, str, tuple[str, ...], str] = ("", "", (), "")


def put_template_version(ec2: EC2Client, *, region: str, name: str, image_id: str,
                         instance_type: str, security_group_ids: list[str],
                         tag_list: list[dict[str, str]], user_data: bytes,
                         instance_profile: str | None, key_name: str | None,
                         client_token: str) -> TemplateVersion:
    """A new version of the environment's launch template (the template made on first
    use): what one server group's instances launch with. Idempotent by client token."""
    import base64

    # The run-instances spec's keys, which a template's data shares (botocore checks
    # them against the service model before anything is sent).
    spec = _launch_spec(ec2, region, image_id, instance_type, tag_list, key_name)
    spec.update(SecurityGroupIds=security_group_ids,
                UserData=base64.b64encode(user_data).decode())
    data = cast("RequestLaunchTemplateDataTypeDef", spec)
    if instance_profile:
        data["IamInstanceProfile"] = _profile_spec(instance_profile)
    tags = [t for t in tag_list if t["Key"] != "Name"]
    template = launch_template(ec2, region, name)
    if template is not None:
        mine = next((v for v in template.versions if v.description == client_token), None)
        if mine is not None:
            # A run resumed finds the version it made; a version that only bears its
            # description (anyone allowed to write the template can give one that) is
            # not adopted unless it launches exactly what this run renders.
            if (mine.image_id, mine.launches) != (image_id, _launches(data)):
                raise CloudError(
                    f"launch template {name} version {mine.version} bears this run's token "
                    "but launches something else than the run renders",
                    resource=f"{name}:{mine.version} in {region}",
                    fix="delete that version (aws ec2 delete-launch-template-versions) and "
                    "resume the run, or clean it up (`invoke cleanup`)")
            return mine
    with calling(f"launch template {name} in {region}",
                 "check ec2:CreateLaunchTemplate* is allowed (`invoke policy`)"):
        if template is None:
            made = ec2.create_launch_template(
                LaunchTemplateName=name, LaunchTemplateData=data, ClientToken=client_token,
                VersionDescription=client_token,
                TagSpecifications=tag_specifications(("launch-template",), tags)
            )["LaunchTemplate"]
            return TemplateVersion(made["LaunchTemplateId"], name,
                                   int(made["LatestVersionNumber"]), image_id, tag_map(tags),
                                   description=client_token, launches=_launches(data))
        version = ec2.create_launch_template_version(
            LaunchTemplateId=template.template_id, LaunchTemplateData=data,
            VersionDescription=client_token, ClientToken=client_token)["LaunchTemplateVersion"]
    return TemplateVersion(template.template_id, name, int(version["VersionNumber"]),
                           image_id, tag_map(tags), description=client_token,
                           launches=_launches(data))


def _launches(data: Mapping[str, Any]) -> tuple[str, str, tuple[str, ...], str]:
    """What a template version's instances launch with, from its data as sent or read."""
    profile = data.get("IamInstanceProfile") or {}
    return (str(data.get("UserData", "")), str(data.get("InstanceType", "")),
            tuple(sorted(data.get("SecurityGroupIds") or [])),
            str(profile.get("Arn") or profile.get("Name") or ""))


def _version(v: LaunchTemplateVersionTypeDef) -> TemplateVersion:
    data = v.get("LaunchTemplateData", {})
    tags = next((tag_map(t.get("Tags")) for t in data.get("TagSpecifications", [])
                 if t.get("ResourceType") == "instance"), {})
    made = v.get("CreateTime")
    return TemplateVersion(v["LaunchTemplateId"], v["LaunchTemplateName"],
                           int(v["VersionNumber"]), data.get("ImageId", ""), tags,
                           made.timestamp() if made is not None else 0.0,
                           v.get("VersionDescription", ""), launches=_launches(data))


def _template_versions(ec2: EC2Client, region: str, template_id: str
                       ) -> list[LaunchTemplateVersionTypeDef]:
    with calling(f"launch template {template_id} in {region}",
                 "check ec2:DescribeLaunchTemplateVersions is allowed"):
        pages = ec2.get_paginator("describe_launch_template_versions").paginate(
            LaunchTemplateId=template_id)
        return [v for page in pages for v in page.get("LaunchTemplateVersions", [])]


@dataclass(frozen=True)
class LaunchTemplate:
    template_id: str
    default: int
    versions: list[TemplateVersion]


def launch_template(ec2: EC2Client, region: str, name: str) -> LaunchTemplate | None:
    """The environment's launch template and its versions (None: there is none)."""
    with calling(f"launch template {name} in {region}",
                 "check ec2:DescribeLaunchTemplates is allowed"):
        found = ec2.describe_launch_templates(
            Filters=[{"Name": "launch-template-name", "Values": [name]}]).get(
            "LaunchTemplates", [])
    if not found:
        return None
    template_id = found[0]["LaunchTemplateId"]
    return LaunchTemplate(template_id, int(found[0].get("DefaultVersionNumber", 1)),
                          [_version(v) for v in _template_versions(ec2, region, template_id)])


def template_images(ec2: EC2Client, region: str, name: str) -> dict[str, str]:
    """The image each version of the launch template launches, by version number."""
    template = launch_template(ec2, region, name)
    return {str(v.version): v.image_id for v in (template.versions if template else [])}


def delete_template(ec2: EC2Client, region: str, template_id: str) -> None:
    with calling(f"launch template {template_id} in {region}",
                 "check ec2:DeleteLaunchTemplate is allowed"):
        ec2.delete_launch_template(LaunchTemplateId=template_id)


def delete_template_versions(ec2: EC2Client, region: str, template_id: str,
                             versions: list[int]) -> None:
    if not versions:
        return
    with calling(f"launch template {template_id} in {region}",
                 "check ec2:DeleteLaunchTemplateVersions is allowed"):
        ec2.delete_launch_template_versions(LaunchTemplateId=template_id,
                                            Versions=[str(v) for v in versions])


def _described(pages: Iterable[Mapping[str, Any]], region: str, public: bool
               ) -> list[Instance]:
    return [Instance.from_api(region, i, public) for page in pages
            for r in page["Reservations"] for i in r["Instances"]]


def describe(ec2: EC2Client, region: str, instance_ids: list[str],
             public: bool = False) -> list[Instance]:
    """Instances as EC2 sees them; `public` prefers the public address (from outside
    the VPC) over the private one."""
    if not instance_ids:
        return []
    with calling(_ids(instance_ids, region),
                 "check the run state names instances that still exist"):
        pages = ec2.get_paginator("describe_instances").paginate(InstanceIds=instance_ids)
        return _described(pages, region, public)


def find_tagged(ec2: EC2Client, region: str, filters: dict[str, str]) -> list[Instance]:
    """Instances (not terminated) carrying all the given tags."""
    f: list[FilterTypeDef] = [*_tag_filters(filters),
                              {"Name": "instance-state-name", "Values": LIVE_STATES}]
    with calling(f"instances tagged {filters} in {region}", "check EC2 read permissions"):
        pages = ec2.get_paginator("describe_instances").paginate(Filters=f)
        return _described(pages, region, False)


def wait_instances(ec2: EC2Client, region: str, instance_ids: list[str], state: str,
                   timeout: float) -> list[Instance]:
    dead = {"terminated", "shutting-down"} - {state}

    def check() -> list[Instance] | None:
        try:
            found = describe(ec2, region, instance_ids)
        except CloudError as exc:
            if exc.code == "InvalidInstanceID.NotFound":
                return None  # just launched: not visible yet (the deadline still holds)
            raise
        for inst in found:
            if inst.state in dead:
                raise CloudError(f"instance is {inst.state}, not {state}",
                                 resource=f"instance {inst.instance_id} in {region}",
                                 fix="see its console output and the account's quotas")
        return found if found and all(i.state == state for i in found) else None

    return waits.until(check, timeout=timeout, what=f"instances to be {state}",
                       resource=f"{', '.join(instance_ids)} in {region}",
                       fix="check the EC2 console for the instances' state and status checks")


def still_there(ec2: EC2Client, region: str, instance_ids: list[str]) -> set[str]:
    """Which of the ids are instances not terminated (a filter: unknown ids are fine)."""
    if not instance_ids:
        return set()
    with calling(f"instances in {region}", "check EC2 read permissions"):
        pages = ec2.get_paginator("describe_instances").paginate(Filters=[
            {"Name": "instance-id", "Values": instance_ids},
            {"Name": "instance-state-name", "Values": LIVE_STATES}])
        return {i.instance_id for i in _described(pages, region, False)}


def stop(ec2: EC2Client, region: str, instance_ids: list[str]) -> None:
    with calling(_ids(instance_ids, region),
                 "check they exist and are not protected from stopping"):
        ec2.stop_instances(InstanceIds=instance_ids)


def terminate(ec2: EC2Client, region: str, instance_ids: list[str]) -> None:
    """Terminate instances; one already gone is fine (terminating is idempotent), and
    every other one is checked to be on its way out."""
    if not instance_ids:
        return
    try:
        with calling(_ids(instance_ids, region), "check termination protection on them"):
            out = ec2.terminate_instances(InstanceIds=instance_ids)
    except CloudError as exc:
        if exc.code != "InvalidInstanceID.NotFound":
            raise
        # EC2 terminates none of the ids when one is unknown: the others, one by one.
        if len(instance_ids) > 1:
            for one in instance_ids:
                terminate(ec2, region, [one])
        return
    going = {i["InstanceId"]: i["CurrentState"]["Name"]
             for i in out.get("TerminatingInstances", [])}
    left = [i for i in instance_ids if going.get(i) not in ("shutting-down", "terminated")]
    if left:
        raise CloudError(f"EC2 did not terminate {', '.join(left)}", resource=_ids(left, region),
                         fix="check termination protection and the instances' state")


def console_output(ec2: EC2Client, region: str, instance_id: str, *, latest: bool) -> str:
    """The instance's console output: the most recent (`latest`, Nitro instances only)
    or what was buffered after its last state change (every instance type)."""
    with calling(f"instance {instance_id} in {region}", "check ec2:GetConsoleOutput"):
        out = ec2.get_console_output(InstanceId=instance_id, **({"Latest": True}
                                                                 if latest else {}))
    return out.get("Output", "") or ""


def mark_retiring(ec2: EC2Client, region: str, instance_ids: list[str], run_id: str) -> None:
    """Tag hosts a promotion replaced with the run that may still put them back."""
    if instance_ids:
        with calling(_ids(instance_ids, region), "check ec2:CreateTags"):
            ec2.create_tags(Resources=instance_ids,
                            Tags=[{"Key": TAG_RETIRING, "Value": run_id}])


# -- images ---------------------------------------------------------------------------------


def _described_images(ec2: EC2Client, region: str, ids: list[str]
                      ) -> list[ImageTypeDef] | None:
    """Images as EC2 describes them; None when it knows none of the ids (unknown, or
    not visible yet), [] when it knows them as gone."""
    try:
        with calling(f"images {', '.join(ids)} in {region}", "check the image ids"):
            return ec2.describe_images(ImageIds=ids).get("Images", [])
    except CloudError as exc:
        if exc.code in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed"):
            return None
        raise


def images(ec2: EC2Client, region: str, image_ids: list[str]) -> list[ImageTypeDef]:
    """Images as EC2 describes them (none for an id it does not know)."""
    ids = [i for i in image_ids if i]
    return (_described_images(ec2, region, ids) or []) if ids else []


def key_pair_exists(ec2: EC2Client, region: str, name: str) -> bool:
    try:
        with calling(f"key pair {name} in {region}", "check key_name in deploy.toml"):
            return bool(ec2.describe_key_pairs(KeyNames=[name]).get("KeyPairs"))
    except CloudError as exc:
        if exc.code == "InvalidKeyPair.NotFound":
            return False
        raise


def check_own_image(ec2: EC2Client, region: str, image_id: str, env: str, account: str,
                    digest: str | None = None, run: str | None = None) -> None:
    """An image the tool may launch a fleet from: this account's own, tagged for the
    environment (tags given at its creation: the policy lets no environment write them
    after) and, given `digest`, holding those release bytes; given `run`, made by that
    run. Image ids come back from the record and from a Jenkins handoff; one PutParameter
    or one crafted build must not promote someone else's image (which would print its own
    host keys to its console, and be trusted), nor another release's, nor another run's."""
    try:
        with calling(f"image {image_id} in {region}", "check the tool may describe images"):
            found = ec2.describe_images(ImageIds=[image_id], Owners=["self"]).get("Images")
    except CloudError as exc:
        if exc.code not in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            raise
        found = []
    if not found or found[0].get("OwnerId") != account:
        raise InputError(f"image {image_id} in {region} is not one of this account's own",
                         resource=f"image in {region}",
                         fix="deploy an image this account baked (`invoke deploy --mode "
                         "immutable`); check the record and the handoff were not altered")
    tags = tag_map(found[0].get("Tags"))
    tagged = tags.get(TAG_ENV)
    if tagged != env:
        raise InputError(f"image {image_id} in {region} is not {env}'s (tagged "
                         f"{TAG_ENV}={tagged or 'nothing'})", resource=f"image in {region}",
                         fix=f"deploy an image baked for {env}")
    if digest is not None and tags.get(TAG_DIGEST) != digest:
        raise InputError(f"image {image_id} in {region} holds other release bytes than "
                         f"this run's (sha256 {str(tags.get(TAG_DIGEST) or 'untagged')[:12]}…,"
                         f" not {digest[:12]}…)", resource=f"image in {region}",
                         fix="deploy the image this release's bake made; check the run's "
                         "state in the store was not altered")
    if run is not None and tags.get(TAG_RUN) != run:
        raise InputError(f"image {image_id} in {region} was not made by run {run} (it is "
                         f"{TAG_RUN}={tags.get(TAG_RUN) or 'nothing'})",
                         resource=f"image in {region}",
                         fix="deploy the images the run's own bake made: pass its BAKE_RUN "
                         "exactly as `invoke bake` sent it")


def ebs_default_key(ec2: EC2Client, region: str) -> str:
    """The key EC2 encrypts a volume with when the request names none (the tool names
    none: launches, images and copies all use the region's default)."""
    with calling(f"the default EBS key in {region}", "grant ec2:GetEbsDefaultKmsKeyId"):
        return str(ec2.get_ebs_default_kms_key_id()["KmsKeyId"])


def find_base_image(ec2: EC2Client, region: str, spec: str, owner: str | None) -> str:
    """An image id as given, or the newest available image whose name matches."""
    if spec.startswith("ami-"):
        return spec
    args: dict[str, Any] = {"Filters": [{"Name": "name", "Values": [spec]},
                                        {"Name": "state", "Values": ["available"]}]}
    if owner:
        args["Owners"] = [owner]
    with calling(f"base_image in {region}", "check base_image and base_image_owner"):
        found = ec2.describe_images(**args).get("Images", [])
    if not found:
        raise InputError(f"no available image matches name filter {spec!r}",
                         resource=f"base_image in {region}",
                         fix="check base_image and base_image_owner in deploy.toml")
    return max(found, key=lambda i: i.get("CreationDate", ""))["ImageId"]


def _image_and_snapshots(tag_list: list[dict[str, str]]) -> list[TagSpecificationTypeDef]:
    """Tags at creation, for the image and its snapshots alike: a resource tagged in a
    later call can be missed by it (not visible yet), and one left untagged is invisible
    to gc and shows as drift."""
    return tag_specifications(("image", "snapshot"), tag_list)


def create_image(ec2: EC2Client, region: str, instance_id: str, name: str,
                 tag_list: list[dict[str, str]], no_reboot: bool) -> str:
    with calling(f"instance {instance_id} in {region}",
                 "check the instance exists and the image name is unused"):
        out = ec2.create_image(InstanceId=instance_id, Name=name, NoReboot=no_reboot,
                               TagSpecifications=_image_and_snapshots(tag_list))
    return out["ImageId"]


def copy_image(ec2_dest: EC2Client, *, source_region: str, dest_region: str, image_id: str,
               name: str, tag_list: list[dict[str, str]], client_token: str) -> str:
    with calling(f"image {image_id} to {dest_region}",
                 "check the destination region is enabled for the account"):
        # A copy carries none of its source's tags: they go on with the copy.
        out = ec2_dest.copy_image(SourceRegion=source_region, SourceImageId=image_id,
                                  Name=name, ClientToken=client_token, Encrypted=True,
                                  TagSpecifications=_image_and_snapshots(tag_list))
    return out["ImageId"]


def find_image(ec2: EC2Client, region: str, name: str) -> str | None:
    """An image this account owns with exactly this name (images are named per run)."""
    with calling(f"image {name} in {region}", "check EC2 read permissions"):
        found = ec2.describe_images(Owners=["self"], Filters=[
            {"Name": "name", "Values": [name]}]).get("Images", [])
    usable = [i for i in found if i.get("State") in ("pending", "available")]
    return usable[0]["ImageId"] if usable else None


def wait_image(ec2: EC2Client, region: str, image_id: str, timeout: float, *,
               clock: Callable[[], float] = time.monotonic) -> None:
    began = clock()

    def check() -> bool:
        found = images(ec2, region, [image_id])
        state = found[0]["State"] if found else "missing"
        if state == "missing" and clock() - began < SETTLE:
            return False  # just created or copied: not visible yet
        if state in ("failed", "deregistered", "missing", "error", "invalid"):
            raise CloudError(f"image is {state}", resource=f"image {image_id} in {region}",
                             fix="see the image's StateReason in the EC2 console")
        return state == "available"

    waits.until(check, timeout=timeout, what="the image to be available",
                resource=f"image {image_id} in {region}",
                fix="image creation and copies can take many minutes; raise "
                "timeouts.image in deploy.toml or check the snapshot's progress")


def snapshots_of(found: Iterable[Mapping[str, Any]]) -> list[str]:
    return [m["Ebs"]["SnapshotId"] for i in found for m in i.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")]


def _tag_filters(filters: dict[str, str]) -> list[FilterTypeDef]:
    return [{"Name": f"tag:{k}", "Values": [v]} for k, v in filters.items()]


def tagged_images(ec2: EC2Client, region: str, filters: dict[str, str]
                  ) -> list[ImageTypeDef]:
    """This account's images carrying all the given tags (any state but deregistered)."""
    with calling(f"images tagged {filters} in {region}", "check EC2 read permissions"):
        return ec2.describe_images(Owners=["self"],
                                   Filters=_tag_filters(filters)).get("Images", [])


def tagged_snapshots(ec2: EC2Client, region: str, filters: dict[str, str]
                     ) -> list[SnapshotTypeDef]:
    with calling(f"snapshots tagged {filters} in {region}", "check EC2 read permissions"):
        pages = ec2.get_paginator("describe_snapshots").paginate(
            OwnerIds=["self"], Filters=_tag_filters(filters))
        return [snap for page in pages for snap in page.get("Snapshots", [])]


def delete_snapshot(ec2: EC2Client, region: str, snapshot_id: str, *,
                    settle: float = SETTLE) -> None:
    """Delete a snapshot; one already gone is fine. Right after its image is
    deregistered, EC2 may still call it in use: retried for `settle` seconds."""
    def attempt() -> bool:
        try:
            with calling(f"snapshot {snapshot_id} in {region}", "check no image uses it"):
                ec2.delete_snapshot(SnapshotId=snapshot_id)
        except CloudError as exc:
            if exc.code == "InvalidSnapshot.InUse" and settle > 0:
                last[:] = [exc]
                return False
            if exc.code != "InvalidSnapshot.NotFound":
                raise
        return True

    last: list[CloudError] = []
    try:
        waits.until(attempt, timeout=settle, what="the snapshot to be released",
                    resource=f"snapshot {snapshot_id} in {region}", fix="", longest=5.0)
    except WaitTimeout:
        raise last[0] from None


def delete_image(ec2: EC2Client, region: str, image_id: str, *,
                 just_made: bool = False) -> list[str]:
    """Deregister an image and delete its snapshots (an image alone leaks its storage).

    `just_made`: the run created or copied it moments ago, so an EC2 that does not know
    the id yet is waited out (up to SETTLE) rather than taken as "nothing to delete"."""
    found = _described_images(ec2, region, [image_id])
    if found is None and just_made:
        try:
            found = waits.until(lambda: _described_images(ec2, region, [image_id]),
                                timeout=SETTLE, what="the image to be visible",
                                resource=f"image {image_id} in {region}", fix="", longest=5.0)
        except WaitTimeout:
            found = None
    if not found:
        return []
    snapshots = snapshots_of(found)
    try:
        with calling(f"image {image_id} in {region}", "check the image is this account's"):
            ec2.deregister_image(ImageId=image_id)
    except CloudError as exc:
        if exc.code not in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
            raise
    for snap in snapshots:
        delete_snapshot(ec2, region, snap)
    return snapshots


def image_tags(ec2: EC2Client, region: str, image_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    return {i["ImageId"]: tag_map(i.get("Tags"))
            for i in images(ec2, region, sorted(set(image_ids)))}
