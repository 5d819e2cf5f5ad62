"""The artifact store against moto's server over real HTTP."""

from __future__ import annotations

import urllib.request

from deploylib import aws


def test_artifacts_upload_once_and_presigned_urls_fetch_them(aws_clients, tmp_path):
    s3 = aws_clients.s3()
    s3.create_bucket(Bucket="artifacts-test")
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"release bytes")
    assert aws.s3.published_sha256(s3, "artifacts-test", "r/a.tar.gz") is None
    aws.s3.upload_artifact(s3, "artifacts-test", "r/a.tar.gz", str(path), "abc")
    assert aws.s3.published_sha256(s3, "artifacts-test", "r/a.tar.gz") == "abc"
    url = aws.s3.presign(s3, "artifacts-test", "r/a.tar.gz", expires=60)
    assert "Signature" in url
    assert urllib.request.urlopen(url, timeout=5).read() == b"release bytes"


def test_a_missing_release_that_s3_answers_403_for_asks_for_list_bucket(enforced_aws):
    """Without s3:ListBucket, S3 answers HeadObject of a missing key 403, not 404 (the lab
    answers as S3 does: deploylib.lab.iam)."""
    import json

    import pytest

    from deploylib.errors import PermissionDenied

    deployer, admin, lab_dir = enforced_aws
    admin.s3().create_bucket(Bucket="artifacts-403")
    (lab_dir / "iam-policy.json").write_text(json.dumps({"Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": "arn:aws:s3:::artifacts-403/releases/*"}]}))
    with pytest.raises(PermissionDenied, match="s3:ListBucket on arn:aws:s3:::artifacts-403"):
        aws.s3.published_sha256(deployer.s3(), "artifacts-403", "releases/1.0.0.tar.gz")
