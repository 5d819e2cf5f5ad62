"""KMS: the keys the volumes are encrypted with (EC2 uses them; the tool only asks)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Any

from deploylib.aws import calling
from deploylib.errors import CloudError, InputError

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_kms import KMSClient

# What the account's default EBS key is when nobody chose one: AWS's own, usable by
# every identity in the account without a grant.
AWS_MANAGED = "alias/aws/ebs"


def describe_key(kms: KMSClient, region: str, key: str) -> dict[str, Any]:
    """A key's metadata (Arn, KeyState, KeyManager); one line when it is not there."""
    try:
        with calling(f"KMS key {key} in {region}",
                     "grant kms:DescribeKey on it: list it in kms_keys and apply "
                     "`invoke policy`"):
            return dict(kms.describe_key(KeyId=key)["KeyMetadata"])
    except CloudError as exc:
        if exc.code == "NotFoundException":
            raise InputError(f"the KMS key {key} does not exist in {region}",
                             resource=f"KMS key in {region}",
                             fix="set the default EBS key to one that exists (aws ec2 "
                             "modify-ebs-default-kms-key-id) or reset it") from None
        raise


# What Auto Scaling's service-linked role must be allowed in a customer-managed key's
# policy to launch instances whose volumes the key encrypts (the Auto Scaling user guide,
# "Required AWS KMS key policy for use with encrypted volumes"): two statements.
ROLE_USES_KEY = ("kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo",
                 "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey")
ROLE_GRANTS = ("kms:CreateGrant",)
ROLE_STATEMENTS = (
    'Allow {role} kms:Encrypt, kms:Decrypt, kms:ReEncrypt*, kms:GenerateDataKey*, '
    'kms:DescribeKey on "*"', 'Allow {role} kms:CreateGrant on "*" with Bool '
    'kms:GrantIsForAWSResource true')


def key_policy(kms: KMSClient, region: str, key: str) -> dict[str, Any]:
    with calling(f"KMS key {key} in {region}",
                 "grant kms:GetKeyPolicy on it: list it in kms_keys and apply `invoke policy`"):
        return dict(json.loads(kms.get_key_policy(KeyId=key, PolicyName="default")["Policy"]))


def missing_for(policy: Mapping[str, Any], principal: str) -> list[str]:
    """Which of ROLE_STATEMENTS a key policy lacks for `principal` (an IAM role's ARN):
    the actions no Allow statement naming it (or "*") covers. A Deny is not weighed: the
    statements to add are what this names."""
    statements = policy.get("Statement", [])
    statements = [statements] if isinstance(statements, dict) else statements
    allowed: list[str] = []
    for statement in statements:
        who = statement.get("Principal")
        named = who.get("AWS", []) if isinstance(who, dict) else [who]
        named = [named] if isinstance(named, str) else named
        if statement.get("Effect") == "Allow" and (principal in named or "*" in named):
            actions = statement.get("Action", [])
            allowed += [actions] if isinstance(actions, str) else actions

    def covered(action: str) -> bool:
        return any(fnmatchcase(action.lower(), pattern.lower()) for pattern in allowed)

    role = principal.rsplit("/", 1)[-1]
    needed = [ROLE_USES_KEY, ROLE_GRANTS]
    return [text.format(role=role) for text, actions in zip(ROLE_STATEMENTS, needed, strict=True)
            if not all(covered(a) for a in actions)]
