"""S3: the artifact store. One object per release version, its sha256 in its metadata."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from deploylib.aws import calling
from deploylib.errors import CloudError, PermissionDenied


def published_sha256(s3: Any, bucket: str, key: str) -> str | None:
    """The sha256 an artifact was published with, or None when nothing is there."""
    try:
        with calling(f"s3://{bucket}/{key}",
                     "check the artifact bucket exists and you may read it"):
            head = s3.head_object(Bucket=bucket, Key=key)
    except PermissionDenied as exc:
        # S3 answers a missing key 403, not 404, to whoever may not list the bucket: the
        # first publish of every release meets it.
        raise PermissionDenied(f"S3 refused to say whether {key} exists ({exc.code})",
                               resource=f"s3://{bucket}/{key}", code=exc.code,
                               fix=f"grant s3:ListBucket on arn:aws:s3:::{bucket} and "
                               "s3:GetObject on its releases/* (`invoke policy` prints the "
                               "whole policy)") from None
    except CloudError as exc:
        if exc.code in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("Metadata", {}).get("sha256") or ""


def check_bucket(s3: Any, bucket: str) -> None:
    """The bucket exists and the tool may use it (HeadBucket: s3:ListBucket)."""
    try:
        with calling(f"s3://{bucket}", "check artifact_bucket and the tool's permissions"):
            s3.head_bucket(Bucket=bucket)
    except PermissionDenied as exc:
        raise PermissionDenied(f"S3 refused HeadBucket ({exc.code})",
                               resource=f"s3://{bucket}", code=exc.code,
                               fix=f"grant s3:ListBucket on arn:aws:s3:::{bucket} (`invoke "
                               "policy` prints the whole policy)") from None
    except CloudError as exc:
        if exc.code in ("404", "NoSuchBucket", "NotFound"):
            raise CloudError("the artifact bucket does not exist", resource=f"s3://{bucket}",
                             code=exc.code, fix=f"create it once in the primary region (aws "
                             f"s3 mb s3://{bucket}), or fix artifact_bucket") from None
        raise


def upload_artifact(s3: Any, bucket: str, key: str, path: str, sha256: str) -> None:
    """Upload an artifact, recording its sha256 with it."""
    with calling(f"s3://{bucket}/{key}", "check artifact_bucket exists and you may write to it"):
        s3.upload_file(path, bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})


def download_artifact(s3: Any, bucket: str, key: str, path: str | Path) -> None:
    """Fetch a published artifact to a local file (written beside, then renamed)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with calling(f"s3://{bucket}/{key}",
                     "check the release was published and you may read it"):
            s3.download_file(bucket, key, str(partial))
    except CloudError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


def presign(s3: Any, bucket: str, key: str, expires: int = 900) -> str:
    """A short-lived GET URL; it is a credential: never log it or store it in state."""
    with calling(f"s3://{bucket}/{key}", "check the tool's AWS credentials"):
        return s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                         ExpiresIn=expires)
