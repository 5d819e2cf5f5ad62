"""The artifact store against moto's server over real HTTP."""

from __future__ import annotations

import urllib.request

import pytest

from deploylib import aws


def test_artifacts_upload_once_and_presigned_urls_fetch_them(aws_clients, tmp_path):
    s3 = aws_clients.s3()
    s3.create_bucket(Bucket="artifacts-test")
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"release bytes")
    assert aws.s3.published(s3, "artifacts-test", "r/a.tar.gz") is None
    aws.s3.upload_artifact(s3, "artifacts-test", "r/a.tar.gz", str(path), "abc")
    assert aws.s3.published(s3, "artifacts-test", "r/a.tar.gz") == aws.s3.Stored("abc", None)
    url = aws.s3.presign(s3, "artifacts-test", "r/a.tar.gz", expires=60)
    assert "Signature" in url
    assert urllib.request.urlopen(url, timeout=5).read() == b"release bytes"


@pytest.mark.parametrize("size", [13, 9 * 1024 * 1024])  # one PUT; a multipart upload
def test_an_upload_never_overwrites_what_is_published(aws_clients, tmp_path, size):
    """The write is conditional (If-None-Match: *), on the single PUT and on a multipart
    upload's completion alike: a second build under the same key is refused by S3 itself,
    and the first stays."""
    s3 = aws_clients.s3()
    bucket = f"artifacts-once-{size}"
    s3.create_bucket(Bucket=bucket)
    first, second = tmp_path / "first", tmp_path / "second"
    first.write_bytes(b"a" * size)
    second.write_bytes(b"b" * size)
    aws.s3.upload_artifact(s3, bucket, "r/a.tar.gz", str(first), "a" * 64)
    with pytest.raises(aws.s3.AlreadyThere, match="published at r/a.tar.gz meanwhile"):
        aws.s3.upload_artifact(s3, bucket, "r/a.tar.gz", str(second), "b" * 64)
    assert aws.s3.published(s3, bucket, "r/a.tar.gz").sha256 == "a" * 64
    body = s3.get_object(Bucket=bucket, Key="r/a.tar.gz")["Body"].read()
    assert body[:1] == b"a" and len(body) == size
    # the condition is this upload's only: the next one to another key is not refused
    aws.s3.upload_artifact(s3, bucket, "r/b.tar.gz", str(second), "b" * 64)


def test_a_versioned_release_is_fetched_as_published_whatever_is_put_at_its_key(
        aws_clients, tmp_path):
    """In a versioned bucket the release is its version: a presigned URL and a download
    of that version give what was published even after someone put other bytes (and
    other metadata) at the key."""
    s3 = aws_clients.s3()
    s3.create_bucket(Bucket="artifacts-versions")
    s3.put_bucket_versioning(Bucket="artifacts-versions",
                             VersioningConfiguration={"Status": "Enabled"})
    path = tmp_path / "a.tar.gz"
    path.write_bytes(b"the release")
    aws.s3.upload_artifact(s3, "artifacts-versions", "r/a.tar.gz", str(path), "a" * 64)
    stored = aws.s3.published(s3, "artifacts-versions", "r/a.tar.gz")
    assert stored.sha256 == "a" * 64 and stored.version_id
    s3.put_object(Bucket="artifacts-versions", Key="r/a.tar.gz", Body=b"planted",
                  Metadata={"sha256": "e" * 64})
    assert aws.s3.published(s3, "artifacts-versions", "r/a.tar.gz").sha256 == "e" * 64
    assert aws.s3.published(s3, "artifacts-versions", "r/a.tar.gz",
                            stored.version_id) == stored
    url = aws.s3.presign(s3, "artifacts-versions", "r/a.tar.gz", expires=60,
                         version_id=stored.version_id)
    assert urllib.request.urlopen(url, timeout=5).read() == b"the release"
    aws.s3.download_artifact(s3, "artifacts-versions", "r/a.tar.gz", tmp_path / "got",
                             stored.version_id)
    assert (tmp_path / "got").read_bytes() == b"the release"
    assert aws.s3.published(s3, "artifacts-versions", "r/a.tar.gz", "no-such-version") is None


def test_a_missing_release_that_s3_answers_403_for_asks_for_list_bucket(enforced_aws):
    """Without s3:ListBucket, S3 answers HeadObject of a missing key 403, not 404 (the lab
    answers as S3 does: deploylib.lab.iam)."""
    import json

    from deploylib.errors import PermissionDenied

    deployer, admin, lab_dir = enforced_aws
    admin.s3().create_bucket(Bucket="artifacts-403")
    (lab_dir / "iam-policy.json").write_text(json.dumps({"Statement": [
        {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject"],
         "Resource": "arn:aws:s3:::artifacts-403/releases/*"}]}))
    with pytest.raises(PermissionDenied, match="s3:ListBucket on arn:aws:s3:::artifacts-403"):
        aws.s3.published(deployer.s3(), "artifacts-403", "releases/1.0.0.tar.gz")
