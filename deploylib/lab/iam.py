"""The lab's IAM: the tool is answered only as its least-privilege policy allows.

The tool signs its requests with the lab's deployer key (deploylib.lab.KEY_IDS). In
front of moto, every request signed with that key — presigned URLs included — is held
against the environment's policy (what `invoke policy` prints, written to
`iam-policy.json` in the lab directory when the lab starts; a test may narrow it) as IAM
evaluates an identity policy: an explicit Deny wins, otherwise an Allow must match the
action and every resource the request names. A denied request gets the service's own
error, with AWS's wording. The lab's own calls (seeding the account) and the tests'
set-up sign with the administrator's key and are not held. A second environment's
deployer in the same account (the neighbour's key) is held to the policy rendered for
that environment (NEIGHBOUR_POLICY_FILE; allowed nothing while there is none): what one
environment can do to another. (That a request is signed with a key the lab knows at
all is checked before: deploylib.lab.sigv4.)

Also as AWS does it: GetObject and HeadObject of a key that does not exist answer 403,
not 404, to a caller without s3:ListBucket on the bucket; a presigned URL past its
expiry answers 403.

EC2's requests name their resources as EC2 authorises them: the instances a
Terminate/StopInstances names, the image a DeregisterImage names, the snapshot of a
DeleteSnapshot, what a CreateTags tags, and for a RunInstances, CreateImage or
CopyImage both what it uses (image, subnet, security groups, key pair, the source
instance) and what it makes (`instance/*`, `volume/*`, `image/*`, `snapshot/*`...); tags
given at creation are authorised as ec2:CreateTags on what is made, with ec2:CreateAction.
Conditions are evaluated for the keys that scope the tool by tag: `aws:ResourceTag/K`
(the tags the resource has now, in moto), `aws:RequestTag/K` (the tags the request
gives), `ec2:CreateAction`, and `dynamodb:LeadingKeys` (the partition key an item
request names: one environment's lock item), with StringEquals and StringLike (and their
ForAnyValue / ForAllValues forms; `aws:TagKeys`, the keys a tag write gives, by its set
operator). A target group's RegisterTargets and DeregisterTargets name the group.
Launching with an instance profile (RunInstances, or a server group given a launch
template that names one) is also an `iam:PassRole` of its role (`iam:PassedToService`);
a RunInstances from a launch template names the template too; a Create/
UpdateAutoScalingGroup given a launch template is also an ec2:RunInstances on the
template, and an account's first group an `iam:CreateServiceLinkedRole` of Auto
Scaling's role (`iam:AWSServiceName`); IAM's GetRole and GetInstanceProfile name the
role or profile;
a CopyObject is also an `s3:GetObject` of its source; a virtual-host S3 request names
the bucket of its host. An EC2 id of a kind the lab does not know is a resource no
policy grants. Any other condition never holds for an Allow and always holds for a
Deny: the lab refuses what it cannot prove allowed.

moto's own IAM access control is not used: it holds every action outside S3 against
the resource "*" (so a statement scoped to a parameter path or a table allows nothing),
and cannot authorise a presigned URL. Not emulated: other condition keys, resource
policies for the caller (bucket and key policies; a key policy is read only for Auto
Scaling's launches, deploylib.lab.scaling).
"""

from __future__ import annotations

import json
import re
import threading
import time
from calendar import timegm
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote

ACCOUNT = "123456789012"  # moto's default account
DEPLOYER = f"arn:aws:iam::{ACCOUNT}:user/deploylab-deployer"
POLICY_FILE = "iam-policy.json"
# The instance role a server group's instances read the record and the releases with at
# boot (deploylib/templates/iam-policy-instance.json), held to its own policy.
INSTANCE_ROLE = f"arn:aws:sts::{ACCOUNT}:assumed-role/deploy-instance/i-lab"
INSTANCE_POLICY_FILE = "iam-policy-instance.json"
# Another environment's deployer in the same account (LAB_NEIGHBOUR_CREDENTIALS), held to
# its own environment's policy: what one environment can do to another.
NEIGHBOUR = f"arn:aws:iam::{ACCOUNT}:user/deploylab-neighbour"
NEIGHBOUR_POLICY_FILE = "iam-policy-neighbour.json"
# Allowed to every identity whatever its policies (AWS: "No permissions are required to
# perform this operation"): preflight asks who the tool is.
ALWAYS_ALLOWED = frozenset({"sts:GetCallerIdentity"})

_SCOPE = re.compile(r"Credential=([^/,\s]+)/\d{8}/([a-z0-9-]+)/([a-z0-9-]+)/aws4_request")
# S3's sub-resources on a bucket, and the action each GET asks for.
_BUCKET_GETS = {"versioning": "GetBucketVersioning", "location": "GetBucketLocation",
                "tagging": "GetBucketTagging", "policy": "GetBucketPolicy",
                "acl": "GetBucketAcl", "encryption": "GetEncryptionConfiguration"}


# Services whose signing name is not their IAM prefix (CloudWatch signs as "monitoring").
_IAM_PREFIX = {"monitoring": "cloudwatch"}

# A request's condition keys: one value each, or several (aws:TagKeys)
Keys = dict[str, "str | tuple[str, ...]"]


@dataclass(frozen=True)
class Call:
    """One request as IAM sees it: who signed it, the action, the resources it names."""

    key_id: str
    region: str
    action: str
    resources: tuple[str, ...]
    presigned_expired: bool = False
    # condition keys per resource (aws:ResourceTag/…, aws:RequestTag/…, ec2:CreateAction,
    # aws:TagKeys: the one with many values)
    context: dict[str, Keys] = field(default_factory=dict)
    # what the request is authorised for besides its action: (action, resource, keys) —
    # tags given at creation are an ec2:CreateTags on what is made
    also: tuple[tuple[str, str, Keys], ...] = ()


def scope(environ: dict[str, Any]) -> tuple[str, str, str] | None:
    """(access key id, region, service) from the request's signature: the Authorization
    header, or a presigned URL's X-Amz-Credential."""
    signed = environ.get("HTTP_AUTHORIZATION") or unquote(environ.get("QUERY_STRING", ""))
    found = _SCOPE.search(signed.replace("X-Amz-Credential=", "Credential="))
    return (found.group(1), found.group(2), found.group(3)) if found else None


def _s3(environ: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    path = unquote(environ.get("PATH_INFO", "")).lstrip("/")
    host = environ.get("HTTP_HOST", "").rsplit(":", 1)[0]
    if host and host != "localhost" and not re.fullmatch(r"[\d.]+", host):
        # virtual-host style: the bucket is the host's first label
        bucket, key = host.split(".", 1)[0], path
    else:
        bucket, _, key = path.partition("/")
    query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
    method = environ.get("REQUEST_METHOD", "GET")
    if key:
        resource = f"arn:aws:s3:::{bucket}/{key}"
        if method == "DELETE":
            action = "AbortMultipartUpload" if "uploadId" in query else "DeleteObject"
        elif method in ("PUT", "POST"):
            # PutObject, and the multipart upload's create, parts and completion
            action = "PutObjectTagging" if "tagging" in query else "PutObject"
        elif "tagging" in query:
            action = "GetObjectTagging"
        else:
            # A GET or HEAD naming a version is authorised by GetObjectVersion, as in AWS.
            action = "GetObjectVersion" if "versionId" in query else "GetObject"
        return f"s3:{action}", (resource,)
    resource = f"arn:aws:s3:::{bucket}"
    if method in ("GET", "HEAD"):
        sub = next((name for name in _BUCKET_GETS if name in query), None)
        action = _BUCKET_GETS[sub] if sub else "ListBucket"
    elif method == "POST" and "delete" in query:
        return "s3:DeleteObject", (f"{resource}/*",)
    else:
        action = {"PUT": "CreateBucket", "DELETE": "DeleteBucket"}.get(method, method.title())
    return f"s3:{action}", (resource,)


def _named(service: str, region: str, params: dict[str, Any]) -> tuple[str, ...]:
    """The resources a JSON request names, as their ARNs (services the tool calls)."""
    if service == "ssm":
        names = params.get("Names") or [params.get("Name") or params.get("Path")]
        return tuple(f"arn:aws:ssm:{region}:{ACCOUNT}:parameter/{str(n).lstrip('/')}"
                     for n in names if n)
    if service == "dynamodb" and params.get("TableName"):
        return (f"arn:aws:dynamodb:{region}:{ACCOUNT}:table/{params['TableName']}",)
    if service == "kms" and params.get("KeyId"):
        key = str(params["KeyId"])
        return (key if key.startswith("arn:") else f"arn:aws:kms:{region}:{ACCOUNT}:key/{key}",)
    return ("*",)


def _send_command(key_id: str, region: str, params: dict[str, Any]) -> Call:
    """Run Command authorises a SendCommand on the document it runs (an AWS-owned one has
    no account in its ARN) and on every instance it names, each with its tags as
    `ssm:resourceTag/K`."""
    document = str(params.get("DocumentName") or "")
    owned = "" if document.startswith("AWS-") else ACCOUNT
    resources = [f"arn:aws:ssm:{region}:{owned}:document/{document}"]
    context: dict[str, Keys] = {}
    for iid in params.get("InstanceIds") or []:
        arn = _ec2_arn(region, "instance", str(iid))
        resources.append(arn)
        context[arn] = {f"ssm:resourceTag/{k}": v for k, v in _tags_now(region, iid).items()}
    return Call(key_id, region, "ssm:SendCommand", tuple(resources), context=context)


def _leading_key(params: dict[str, Any]) -> str | None:
    """The partition key's value an item request names (`dynamodb:LeadingKeys`): the one
    attribute of its Key (a table keyed by more is not one the tool has)."""
    key = params.get("Key")
    if not isinstance(key, dict) or len(key) != 1:
        return None
    (value,) = key.values()
    if not isinstance(value, dict) or len(value) != 1:
        return None
    (typed,) = value.values()
    return typed if isinstance(typed, str) else None


_EC2_KINDS = {"i-": "instance", "ami-": "image", "snap-": "snapshot", "vol-": "volume",
              "subnet-": "subnet", "sg-": "security-group", "eni-": "network-interface",
              "lt-": "launch-template"}
# What each creating action makes (its tags at creation are authorised on these).
_EC2_MADE = {"RunInstances": ("instance", "volume", "network-interface"),
             "CreateImage": ("image", "snapshot"), "CopyImage": ("image",),
             "CreateLaunchTemplate": ("launch-template",)}


def _ec2_arn(region: str, kind: str, name: str) -> str:
    owner = "" if kind in ("image", "snapshot") else ACCOUNT  # images and snapshots: none
    return f"arn:aws:ec2:{region}:{owner}:{kind}/{name}"


def _numbered(form: dict[str, list[str]], name: str) -> list[str]:
    """The values of NAME.1, NAME.2, … in a query request."""
    found = [(int(k[len(name) + 1:]), v[0]) for k, v in form.items()
             if k.startswith(name + ".") and k[len(name) + 1:].isdigit()]
    return [v for _, v in sorted(found)]


def _given_tags(form: dict[str, list[str]]) -> dict[str, str]:
    """The tags a request gives: TagSpecification.N.Tag.M (at creation), or Tag.N."""
    tags = {}
    for key, value in form.items():
        found = re.fullmatch(r"(TagSpecification\.\d+\.)?Tag\.(\d+)\.Key", key)
        if found:
            tags[value[0]] = (form.get(key[:-3] + "Value") or [""])[0]
    return tags


def _tags_now(region: str, resource_id: str) -> dict[str, str]:
    from moto.ec2.models import ec2_backends

    return dict(ec2_backends[ACCOUNT][region].tags.get(resource_id, {}))


def _ec2(region: str, action: str, form: dict[str, list[str]]
         ) -> tuple[tuple[str, ...], dict[str, Keys], tuple]:
    """(resources, their condition keys, what else is authorised) of an EC2 request."""
    tags = _given_tags(form)
    given: Keys = {f"aws:RequestTag/{k}": v for k, v in tags.items()}
    if tags:
        given["aws:TagKeys"] = tuple(tags)
    used = []
    if action in ("TerminateInstances", "StopInstances"):
        used = _numbered(form, "InstanceId")
    elif action in ("DeregisterImage", "RunInstances"):
        used = (form.get("ImageId") or [])[:1]
    elif action == "DeleteSnapshot":
        used = (form.get("SnapshotId") or [])[:1]
    elif action == "CreateTags":
        used = _numbered(form, "ResourceId")
    elif action == "CreateImage":
        used = (form.get("InstanceId") or [])[:1]
    elif action in ("CreateLaunchTemplateVersion", "DeleteLaunchTemplate",
                    "DeleteLaunchTemplateVersions"):
        used = (form.get("LaunchTemplateId") or [])[:1]
    if action == "RunInstances":
        used += (form.get("SubnetId") or [])[:1] + _numbered(form, "SecurityGroupId")
        # A launch from a launch template is authorised on the template too.
        used += [t for t in [_template_id(region, form)] if t]
    if not used and action not in _EC2_MADE:
        return ("*",), {}, ()
    context: dict[str, Keys] = {}
    for name in used:
        # An id of a kind the lab does not know is named as one no policy grants: what
        # the lab cannot read, it refuses.
        kind = next((k for p, k in _EC2_KINDS.items() if name.startswith(p)), "unknown")
        arn = _ec2_arn(region, kind, name)
        context[arn] = {**given, **{f"aws:ResourceTag/{k}": v
                                    for k, v in _tags_now(region, name).items()}}
    if action == "RunInstances" and form.get("KeyName"):
        context[_ec2_arn(region, "key-pair", form["KeyName"][0])] = dict(given)
    made = [_ec2_arn(region, kind, "*") for kind in _EC2_MADE.get(action, ())]
    for arn in made:
        context[arn] = dict(given)
    also = tuple(("ec2:CreateTags", arn, {**given, "ec2:CreateAction": action})
                 for arn in made) if given and made else ()
    if action == "RunInstances":
        profile = (form.get("IamInstanceProfile.Arn") or form.get("IamInstanceProfile.Name")
                   or [""])[0]
        also += _passes(profile)
    return tuple(context), context, also


def _passes(profile: str) -> tuple[tuple[str, str, Keys], ...]:
    """Launching with an instance profile passes its role to EC2: iam:PassRole on the
    role (named as its profile, as the IAM console makes them), for ec2.amazonaws.com."""
    if not profile:
        return ()
    role = profile.rsplit("/", 1)[-1]
    return (("iam:PassRole", f"arn:aws:iam::{ACCOUNT}:role/{role}",
             {"iam:PassedToService": "ec2.amazonaws.com"}),)


def _template_id(region: str, form: dict[str, list[str]]) -> str:
    """The launch template a request names (LaunchTemplate.*), as its id; a name the lab
    cannot find is named as one no policy grants."""
    from moto.ec2.models import ec2_backends

    template_id = (form.get("LaunchTemplate.LaunchTemplateId") or [""])[0]
    name = (form.get("LaunchTemplate.LaunchTemplateName") or [""])[0]
    if template_id or not name:
        return template_id
    try:
        return str(ec2_backends[ACCOUNT][region].get_launch_template_by_name(name).id)
    except Exception:  # noqa: BLE001 - moto's own error: the call itself will say
        return f"x-unknown-{name}"


def _group_launches(region: str, action: str, form: dict[str, list[str]]
                    ) -> tuple[tuple[str, str, Keys], ...]:
    """What Create/UpdateAutoScalingGroup given a launch template is authorised for
    besides itself (the Auto Scaling user guide, "Launch template permissions"): the
    caller's ec2:RunInstances on the template, iam:PassRole of its instance profile's
    role, and — for an account's first group — iam:CreateServiceLinkedRole of Auto
    Scaling's role."""
    from deploylib.lab import scaling

    also: tuple[tuple[str, str, Keys], ...] = ()
    template = _template_id(region, form)
    if template:
        arn = _ec2_arn(region, "launch-template", template)
        also += (("ec2:RunInstances", arn, {f"aws:ResourceTag/{k}": v for k, v in
                                            _tags_now(region, template).items()}),)
        also += _passes(_template_profile(region, form))
    if action == "CreateAutoScalingGroup" and not scaling.has_service_role():
        also += (("iam:CreateServiceLinkedRole", scaling.service_role_arn(),
                  {"iam:AWSServiceName": scaling.SERVICE}),)
    return also


def _iam_named(action: str, form: dict[str, list[str]]) -> tuple[str, ...]:
    """The role or instance profile an IAM read names, as its ARN (with its path, as IAM
    authorises it; a name IAM does not have, at the root path)."""
    from moto.iam.models import iam_backends

    backend = iam_backends[ACCOUNT]["aws"]
    if action == "GetRole" and form.get("RoleName"):
        name = form["RoleName"][0]
        found = [r.arn for r in backend.roles.values() if r.name == name]
        return (found[0] if found else f"arn:aws:iam::{ACCOUNT}:role/{name}",)
    if action == "GetInstanceProfile" and form.get("InstanceProfileName"):
        name = form["InstanceProfileName"][0]
        found = [p.arn for p in backend.instance_profiles.values() if p.name == name]
        return (found[0] if found else f"arn:aws:iam::{ACCOUNT}:instance-profile/{name}",)
    return ("*",)


def _template_profile(region: str, form: dict[str, list[str]]) -> str:
    """The instance profile of the launch template version a group is given."""
    from moto.ec2.models import ec2_backends

    template_id = (form.get("LaunchTemplate.LaunchTemplateId") or [""])[0]
    name = (form.get("LaunchTemplate.LaunchTemplateName") or [""])[0]
    version = (form.get("LaunchTemplate.Version") or ["$Default"])[0]
    backend = ec2_backends[ACCOUNT][region]
    try:
        template = backend.get_launch_template(template_id) if template_id else \
            backend.get_launch_template_by_name(name)
        data = template.get_version(version).data
    except Exception:  # noqa: BLE001 - moto's own errors: the call itself will say
        return ""
    profile = data.get("IamInstanceProfile") or {}
    return str(profile.get("Arn") or profile.get("Name") or "")


def call(environ: dict[str, Any], body: bytes) -> Call | None:
    """The request as IAM sees it, or None when it is unsigned."""
    signed = scope(environ)
    if signed is None:
        return None
    key_id, region, service = signed
    service = _IAM_PREFIX.get(service, service)
    expired = False
    if service == "s3":
        action, resources = _s3(environ)
        source = unquote(environ.get("HTTP_X_AMZ_COPY_SOURCE", ""))
        if source:  # CopyObject reads its source: s3:GetObject (or its version's) there
            name, _, version = source.lstrip("/").partition("?versionId=")
            read = "s3:GetObjectVersion" if version else "s3:GetObject"
            return Call(key_id, region, action, resources,
                        also=((read, f"arn:aws:s3:::{name}", {}),))
        query = parse_qs(environ.get("QUERY_STRING", ""))
        if "X-Amz-Expires" in query:
            issued = timegm(time.strptime(query["X-Amz-Date"][0], "%Y%m%dT%H%M%SZ"))
            expired = time.time() > issued + int(query["X-Amz-Expires"][0])
    elif environ.get("PATH_INFO", "").startswith("/service/"):
        # Smithy RPC v2 (CBOR), as botocore calls CloudWatch: the operation is the path's
        # last part.
        operation = environ["PATH_INFO"].rstrip("/").rsplit("/", 1)[-1]
        return Call(key_id, region, f"{service}:{operation}", ("*",), expired)
    elif environ.get("HTTP_X_AMZ_TARGET"):
        action = f"{service}:{environ['HTTP_X_AMZ_TARGET'].rsplit('.', 1)[-1]}"
        try:
            params = json.loads(body or b"{}")
        except ValueError:
            params = {}
        params = params if isinstance(params, dict) else {}
        if action == "ssm:SendCommand":
            return _send_command(key_id, region, params)
        resources = _named(service, region, params)
        leading = _leading_key(params) if service == "dynamodb" else None
        if leading is not None:  # an item's table: the item's partition key, IAM's key
            return Call(key_id, region, action, resources, expired,
                        {r: {"dynamodb:LeadingKeys": leading} for r in resources})
    else:
        form = parse_qs(body.decode("utf-8", "replace")) if body else {}
        query = parse_qs(environ.get("QUERY_STRING", ""))
        name = (form.get("Action") or query.get("Action") or [""])[0]
        action = f"{service}:{name}"
        if service == "ec2":
            resources, context, also = _ec2(region, name, {**query, **form})
            return Call(key_id, region, action, resources, False, context, also)
        if service == "autoscaling":
            named = (form.get("AutoScalingGroupName") or [""])[0]
            # Auto Scaling authorises a group's writes on the group; Describe* on "*".
            resources = (f"arn:aws:autoscaling:{region}:{ACCOUNT}:autoScalingGroup:"
                         f"*:autoScalingGroupName/{named}",) if named and \
                not name.startswith("Describe") else ("*",)
            also = _group_launches(region, name, form) if name in (
                "CreateAutoScalingGroup", "UpdateAutoScalingGroup") else ()
            return Call(key_id, region, action, resources, expired, also=also)
        if service == "iam":
            return Call(key_id, region, action, _iam_named(name, form), expired)
        if service == "sts" and name == "AssumeRole":
            # STS authorises an AssumeRole on the role it asks for.
            return Call(key_id, region, action, tuple((form.get("RoleArn") or ["*"])[:1]),
                        expired)
        group = (form.get("TargetGroupArn") or [""])[0]
        # ELB authorises a target group's writes on the group; its Describe calls on "*".
        resources = (group,) if service == "elasticloadbalancing" and group and \
            name in ("RegisterTargets", "DeregisterTargets") else ("*",)
    return Call(key_id, region, action, resources, expired)


def _matches(patterns: Any, value: str, *, fold: bool) -> bool:
    """IAM's wildcards: `*` any run of characters, `?` one; actions ignore case."""
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if fold and fnmatchcase(value.lower(), pattern.lower()):
            return True
        if not fold and fnmatchcase(value, pattern.replace("[", "[[]")):
            return True
    return False


def _applies(statement: dict[str, Any], action: str, resource: str) -> bool:
    if "NotAction" in statement:
        acts = not _matches(statement["NotAction"], action, fold=True)
    else:
        acts = _matches(statement.get("Action", []), action, fold=True)
    if "NotResource" in statement:
        return acts and not _matches(statement["NotResource"], resource, fold=False)
    return acts and _matches(statement.get("Resource", []), resource, fold=False)


_OPERATORS = {"StringEquals": lambda want, have: want == have,
              "StringLike": lambda want, have: fnmatchcase(have, want.replace("[", "[[]")),
              "Bool": lambda want, have: want.lower() == have.lower()}
# The condition keys the lab evaluates (lower case, as IAM compares them).
_KEYS = ("aws:resourcetag/", "aws:requesttag/", "aws:tagkeys", "ec2:createaction",
         "dynamodb:leadingkeys", "iam:passedtoservice", "iam:awsservicename",
         "kms:grantisforawsresource", "ssm:resourcetag/")


def names_principal(statement: dict[str, Any], arn: str) -> bool:
    """Whether a resource policy's statement (a key policy's) is for the principal `arn`
    (by its ARN, or "*")."""
    principal = statement.get("Principal")
    if principal == "*":
        return True
    named = principal.get("AWS", []) if isinstance(principal, dict) else []
    return arn in ([named] if isinstance(named, str) else named) or "*" in named


def holds(condition: dict[str, Any], keys: Keys) -> bool | None:
    """Whether a statement's Condition holds for the request's keys (every operator,
    every key in it; any of a key's values; for a key of many values, aws:TagKeys, each
    of them with ForAllValues, one with ForAnyValue); None when it uses an operator or key
    the lab cannot evaluate."""
    lowered = {k.lower(): v for k, v in keys.items()}
    for operator, tests in condition.items():
        qualifier, _, base = operator.rpartition(":")
        test = _OPERATORS.get(base)
        if test is None or not isinstance(tests, dict):
            return None
        for key, wanted in tests.items():
            name = key.lower()
            if not name.startswith(_KEYS):
                return None
            have = lowered.get(name)
            values = [str(v) for v in ([wanted] if isinstance(wanted, str) else wanted)]
            if isinstance(have, tuple):  # many values: only a set operator says how
                if qualifier == "ForAllValues":  # (none: met, as in IAM)
                    met = all(any(test(v, h) for v in values) for h in have)
                elif qualifier == "ForAnyValue":
                    met = any(any(test(v, h) for v in values) for h in have)
                else:
                    return None
            else:
                met = have is not None and any(test(v, have) for v in values)
            if not met:
                return False
    return True


def allowed(policy: dict[str, Any], action: str, resource: str,
            keys: Keys | None = None) -> bool:
    """Whether an identity policy allows one action on one resource, given the
    request's condition keys."""
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    allow = False
    for statement in statements:
        if not _applies(statement, action, resource):
            continue
        met = holds(statement["Condition"], keys or {}) if "Condition" in statement else True
        if statement.get("Effect") == "Deny" and met is not False:
            return False  # explicit deny wins (one the lab cannot evaluate too)
        if statement.get("Effect") == "Allow" and met is True:
            allow = True
    return allow


def _bucket_exists(resource: str) -> bool:
    from moto.s3.models import s3_backends

    bucket = resource.removeprefix("arn:aws:s3:::").split("/", 1)[0]
    return bucket in s3_backends[ACCOUNT]["aws"].buckets


def denial(action: str, resource: str, who: str = DEPLOYER) -> str:
    """AWS's words for an identity-policy refusal."""
    return (f"User: {who} is not authorized to perform: {action} on resource: "
            f"{resource} because no identity-based policy allows the {action} action")


class _PolicyFile:
    """A policy read from the lab directory (re-read when it changes)."""

    def __init__(self, path: Path, absent: dict[str, Any] | None = None):
        self.file = path
        self.absent = absent  # in force while there is no file (None: none, not held)
        self._lock = threading.Lock()
        self._loaded: tuple[float, dict[str, Any]] | None = None

    def read(self) -> dict[str, Any] | None:
        with self._lock:
            try:
                mtime = self.file.stat().st_mtime
            except FileNotFoundError:
                self._loaded = None
                return self.absent
            if self._loaded is None or self._loaded[0] != mtime:
                self._loaded = (mtime, json.loads(self.file.read_text()))
            return self._loaded[1]


class Enforcer:
    """The deployer's policy, the instance role's and the neighbour's, each read from the
    lab directory."""

    def __init__(self, directory: Path, deployer_key: str, instance_key: str | None = None,
                 neighbour_key: str | None = None):
        self.file = directory / POLICY_FILE
        self.deployer_key = deployer_key
        self._policies = {deployer_key: (_PolicyFile(self.file), DEPLOYER)}
        if instance_key:
            self._policies[instance_key] = (_PolicyFile(directory / INSTANCE_POLICY_FILE),
                                            INSTANCE_ROLE)
        if neighbour_key:  # an identity with no policy yet is allowed nothing
            self._policies[neighbour_key] = (_PolicyFile(directory / NEIGHBOUR_POLICY_FILE,
                                                         absent={"Statement": []}), NEIGHBOUR)

    def policy(self, key: str | None = None) -> dict[str, Any] | None:
        """The policy in force for a key (the deployer's by default), or None when the lab
        holds it to none (no file: a bare moto server with the fault layer, as some tests
        start)."""
        held = self._policies.get(key or self.deployer_key)
        return held[0].read() if held else None

    def refusal(self, request: Call | None) -> tuple[str, str] | None:
        """(error code kind, message) when the policy refuses the request, else None."""
        if request is None or request.key_id not in self._policies:
            return None
        policy = self.policy(request.key_id)
        if policy is None:
            return None
        who = self._policies[request.key_id][1]
        if request.presigned_expired:
            return "AccessDenied", "Request has expired"
        if request.action in ALWAYS_ALLOWED:
            return None
        if request.action.startswith("s3:") and not _bucket_exists(request.resources[0]):
            return None  # S3 tells anyone a bucket is not there: moto answers NoSuchBucket
        checks = [(request.action, r, request.context.get(r, {})) for r in request.resources]
        for action, resource, keys in [*checks, *request.also]:
            if not allowed(policy, action, resource, keys):
                return "AccessDenied", denial(action, resource, who)
        return None

    def hides_missing_keys(self, request: Call | None) -> bool:
        """Whether a 404 for this object read must be a 403 (no s3:ListBucket)."""
        if request is None or request.key_id not in self._policies or \
                request.action != "s3:GetObject":
            return False
        policy = self.policy(request.key_id)
        if policy is None:
            return False
        bucket = request.resources[0].split("/", 1)[0]
        return not allowed(policy, "s3:ListBucket", bucket)
