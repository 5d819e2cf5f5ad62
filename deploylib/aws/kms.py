"""KMS: the keys the volumes are encrypted with (EC2 uses them; the tool only asks)."""

from __future__ import annotations

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
