"""The volume keys against moto's server over real HTTP (the lab's EBS default key)."""

from __future__ import annotations

import pytest

from deploylib import aws
from deploylib.errors import InputError


def test_the_default_ebs_key_is_awss_own_until_another_is_chosen(aws_clients):
    ec2 = aws_clients.ec2("eu-west-1")
    assert aws.ec2.ebs_default_key(ec2, "eu-west-1").endswith(":alias/aws/ebs")
    kms = aws_clients.client("kms", "eu-west-1")
    arn = kms.create_key(Description="volumes")["KeyMetadata"]["Arn"]
    try:
        ec2.modify_ebs_default_kms_key_id(KmsKeyId=arn)
        assert aws.ec2.ebs_default_key(ec2, "eu-west-1") == arn
        assert aws.kms.describe_key(kms, "eu-west-1", arn)["KeyState"] == "Enabled"
    finally:
        ec2.reset_ebs_default_kms_key_id()
    assert aws.ec2.ebs_default_key(ec2, "eu-west-1").endswith(":alias/aws/ebs")


def test_a_key_that_is_not_there_is_one_line_with_the_fix(aws_clients):
    kms = aws_clients.client("kms", "eu-west-1")
    missing = "arn:aws:kms:eu-west-1:123456789012:key/00000000-0000-0000-0000-000000000000"
    with pytest.raises(InputError, match="does not exist in eu-west-1") as info:
        aws.kms.describe_key(kms, "eu-west-1", missing)
    assert "reset" in info.value.line()
