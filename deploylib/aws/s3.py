"""S3: the artifact store. One object per release version, its sha256 in its metadata."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploylib.aws import calling
from deploylib.errors import CloudError, PermissionDenied

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_s3 import S3Client


@dataclass(frozen=True)
class Stored:
    """An artifact as the store holds it: the sha256 it was published with ("" when it
    carries none) and its version (None when the bucket keeps no versions)."""

    sha256: str
    version_id: str | None


def published(s3: S3Client, bucket: str, key: str, version_id: str | None = None
              ) -> Stored | None:
    """The artifact at `key` (that version of it, when given), or None when nothing is
    there."""
    try:
        with calling(f"s3://{bucket}/{key}",
                     "check the artifact bucket exists and you may read it"):
            head = s3.head_object(Bucket=bucket, Key=key, VersionId=version_id) \
                if version_id else s3.head_object(Bucket=bucket, Key=key)
    except PermissionDenied as exc:
        # S3 answers a missing key 403, not 404, to whoever may not list the bucket: the
        # first publish of every release meets it.
        raise PermissionDenied(f"S3 refused to say whether {key} exists ({exc.code})",
                               resource=f"s3://{bucket}/{key}", code=exc.code,
                               fix=f"grant s3:ListBucket on arn:aws:s3:::{bucket} and "
                               "s3:GetObject, s3:GetObjectVersion on its releases/* (`invoke "
                               "policy` prints the whole policy)") from None
    except CloudError as exc:
        # A version id S3 does not know is a 400 to a HEAD (it has no body to say more).
        if exc.code in ("404", "NoSuchKey", "NotFound", "NoSuchVersion") or (
                version_id and exc.code == "400"):
            return None
        raise
    version = head.get("VersionId")
    return Stored(sha256=head.get("Metadata", {}).get("sha256") or "",
                  version_id=version if version and version != "null" else None)


def check_bucket(s3: S3Client, bucket: str) -> None:
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


def versioned(s3: S3Client, bucket: str) -> bool:
    """Whether the bucket keeps every version of its objects (s3:GetBucketVersioning)."""
    with calling(f"s3://{bucket}", "grant s3:GetBucketVersioning on the bucket (`invoke "
                 "policy` prints the whole policy)"):
        return s3.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"


class AlreadyThere(CloudError):
    """Something was published under the key since it was looked at (the upload is
    conditional: it never overwrites)."""


def upload_artifact(s3: S3Client, bucket: str, key: str, path: str, sha256: str) -> None:
    """Upload an artifact, recording its sha256 with it — only where nothing is yet: the
    write is conditional (If-None-Match: *, on the single PUT or on the multipart
    upload's completion), so a release once published is never overwritten, by this tool
    or a race of two. AlreadyThere when something was."""
    def only_if_new(params: dict[str, Any], **_: Any) -> None:
        if params.get("Bucket") == bucket and params.get("Key") == key:
            params["IfNoneMatch"] = "*"

    # boto3's transfer manager (parallel parts above 8 MB, retries, checksums) does not
    # pass If-None-Match through; the condition is put on its requests as they are built.
    events = s3.meta.events
    names = [f"before-parameter-build.s3.{op}" for op in ("PutObject",
                                                          "CompleteMultipartUpload")]
    # (botocore keeps one handler per unique id across every event name)
    for name in names:
        events.register(name, only_if_new, unique_id=f"deploylib-if-none-match:{name}:{key}")
    try:
        with calling(f"s3://{bucket}/{key}",
                     "check artifact_bucket exists and you may write to it"):
            s3.upload_file(path, bucket, key, ExtraArgs={"Metadata": {"sha256": sha256}})
    except CloudError as exc:
        if exc.code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409"):
            raise AlreadyThere(f"something was published at {key} meanwhile ({exc.code})",
                               resource=f"s3://{bucket}/{key}", code=exc.code,
                               fix="look at what is there: releases are immutable") from None
        raise
    finally:
        for name in names:
            events.unregister(name, unique_id=f"deploylib-if-none-match:{name}:{key}")


def download_artifact(s3: S3Client, bucket: str, key: str, path: str | Path,
                      version_id: str | None = None) -> None:
    """Fetch a published artifact (that version of it, when given) to a local file
    (written beside, then renamed)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with calling(f"s3://{bucket}/{key}",
                     "check the release was published and you may read it"):
            s3.download_file(bucket, key, str(partial),
                             ExtraArgs={"VersionId": version_id} if version_id else None)
    except CloudError:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, target)


def presign(s3: S3Client, bucket: str, key: str, expires: int = 900,
            version_id: str | None = None) -> str:
    """A short-lived GET URL (of that version, when given: what was published is what is
    fetched, whatever was put at the key since); it is a credential: never log it or
    store it in state."""
    params = {"Bucket": bucket, "Key": key, **({"VersionId": version_id} if version_id else {})}
    with calling(f"s3://{bucket}/{key}", "check the tool's AWS credentials"):
        return s3.generate_presigned_url("get_object", Params=params, ExpiresIn=expires)


class Superseded(CloudError):
    """The object was written by someone else since the writer last saw it (its
    conditional write, If-Match on the ETag it last wrote, was refused)."""


def put_text(s3: S3Client, bucket: str, key: str, text: str, *, after: str | None,
             fix: str) -> str:
    """Write a small text object only over the version the caller last saw (`after`, its
    ETag; None: only where nothing is yet). Returns the new ETag; Superseded when another
    writer came between."""
    condition = {"IfMatch": after} if after else {"IfNoneMatch": "*"}
    try:
        with calling(f"s3://{bucket}/{key}", fix):
            answer = s3.put_object(Bucket=bucket, Key=key, Body=text.encode(),
                                   ContentType="application/json", **condition)  # type: ignore[arg-type]
    except CloudError as exc:
        if exc.code in ("PreconditionFailed", "412", "ConditionalRequestConflict", "409",
                        "NoSuchKey"):
            raise Superseded(f"s3://{bucket}/{key} was written by another process since this "
                             f"one last wrote it ({exc.code})", resource=f"s3://{bucket}/{key}",
                             code=exc.code, fix=fix) from None
        raise
    return str(answer["ETag"])


def get_text(s3: S3Client, bucket: str, key: str, *, fix: str) -> tuple[str, str] | None:
    """A small text object and its ETag; None when there is none."""
    try:
        with calling(f"s3://{bucket}/{key}", fix):
            got = s3.get_object(Bucket=bucket, Key=key)
            return got["Body"].read().decode(), str(got["ETag"])
    except CloudError as exc:
        if exc.code in ("NoSuchKey", "404"):
            return None
        raise
