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
