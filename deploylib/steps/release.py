"""The release itself: published once, found again for a rollback, installed on hosts.

install-release is the heart of the project: the same function puts a release on a
builder (immutable), on candidates (rebake-light) and on live hosts (in-place).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from deploylib import aws, render, tarball
from deploylib.catalog import step
from deploylib.config import Environment
from deploylib.context import Context
from deploylib.errors import InputError
from deploylib.facts import Release
from deploylib.plan import BATCH

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_s3 import S3Client

# What the install script's exit codes mean for the operator (deploylib/templates/install.sh.j2).
INSTALL_FIXES = {
    3: "the artifact on the host differs from the published one: publish the build again "
       "under a new version",
    4: "the archive could not be unpacked, or holds what a release may not (a device, a "
       "link out of it): check the tarball and the host's free disk space",
    5: "the release did not become healthy and the previous release was restored: read the "
       "service's log on the host",
    6: "the release did not become healthy and no previous release could be restored: read "
       "the service's log on the host",
}


def artifact_key(env_name: str, version: str) -> str:
    """Where a release lives in the artifact store: one key per version, whatever the
    file was called, so a version is published once."""
    return f"releases/{env_name}/{version}.tar.gz"


def from_store(env: Environment, s3: S3Client, version: str, sha256: str,
               version_id: str | None = None) -> Release:
    """A release the record names, as the install step needs it: the digest is the
    record's (whoever may overwrite the object also sets its metadata), the object the
    version the record names (or, a record without one, the version there now), and the
    store must still hold that release."""
    key = artifact_key(env.name, version)
    stored = aws.s3.published(s3, env.artifact_bucket, key, version_id)
    where = f"s3://{env.artifact_bucket}/{key}" + (f"?versionId={version_id}"
                                                   if version_id else "")
    if not stored or not stored.sha256:
        raise InputError(f"release {version} is not in the artifact store", resource=where,
                         fix=f"publish it again: `invoke deploy --mode in-place --version "
                         f"{version} --artifact PATH`")
    if stored.sha256 != sha256:
        raise InputError(f"the store's release {version} is not the one recorded live (sha256 "
                         f"{stored.sha256[:12]}…, recorded {sha256[:12]}…): it was "
                         "overwritten", resource=where,
                         fix="publish the recorded build again under its version (turn on "
                         "the bucket's versioning to restore it), or deploy another release")
    return Release(version=version, sha256=sha256, bucket=env.artifact_bucket, key=key,
                   version_id=stored.version_id)


@step("publish-release")
def publish_release(ctx: Context) -> None:
    """Put the release artifact in the artifact store (once per version and content)."""
    # start() read the archive through when the run began; here it must still be there.
    artifact = tarball.check_artifact(ctx.state.artifact, read_through=False)
    digest = tarball.sha256_file(artifact)
    checked = ctx.facts.artifact_sha256
    if checked and digest != checked:
        raise InputError(f"the artifact changed since the run started (sha256 {digest[:12]}…, "
                         f"checked {checked[:12]}…)", resource=str(artifact),
                         fix="start a new run with the build you mean to ship")
    key = artifact_key(ctx.env.name, ctx.state.version)
    s3 = ctx.aws.s3()
    bucket = ctx.env.artifact_bucket
    stored = aws.s3.published(s3, bucket, key)
    uploaded = stored is None
    if uploaded:
        try:
            aws.s3.upload_artifact(s3, bucket, key, str(artifact), digest)
        except aws.s3.AlreadyThere:
            uploaded = False  # another run published it meanwhile: it must be this build
        stored = aws.s3.published(s3, bucket, key)
    if stored is None or stored.sha256 != digest:
        raise InputError(
            f"release {ctx.state.version} was already published with different content",
            resource=f"s3://{bucket}/{key}",
            fix="releases are immutable: give the new build a new version")
    ctx.facts.release = Release(version=ctx.state.version, sha256=digest, bucket=bucket,
                                key=key, size=artifact.stat().st_size,
                                version_id=stored.version_id)
    ctx.log(f"  release {ctx.state.version} sha256 {digest[:12]}… "
            f"{'uploaded' if uploaded else 'already in the store'}"
            + (f" (version {stored.version_id})" if stored.version_id else ""))


@step("locate-previous")
def locate_previous(ctx: Context) -> None:
    """Find what the environment's record says was live before: release and images."""
    record = ctx.record() or {}
    previous = record.get("previous") or {}
    if not previous.get("release"):
        raise InputError(f"the record of {ctx.env.name} names no previous release",
                         resource=ctx.env.record_parameter,
                         fix="deploy the release you want with `invoke deploy`")
    if previous["release"] != ctx.state.version:
        raise InputError(f"the record changed since this rollback started: the previous "
                         f"release is now {previous['release']}, not {ctx.state.version}",
                         resource=ctx.env.record_parameter, fix="start `invoke rollback` again")
    ctx.facts.release = from_store(ctx.env, ctx.aws.s3(), previous["release"],
                                   previous["sha256"], previous.get("version_id"))
    ctx.facts.images.update(previous.get("images") or {})
    ctx.log(f"  rolling back {record.get('release')} -> {previous['release']} "
            f"({ctx.state.mode})")


def _local_artifact(ctx: Context, rel: Release) -> Path:
    """The release as a file here, to push: the run's own artifact, or (a rollback, a
    switch-back) the release read back from the store, checked against its digest."""
    own = ctx.state.artifact
    if own and rel.version == ctx.state.version and Path(own).is_file():
        return Path(own)
    cached = Path(ctx.env.state_dir) / "artifacts" / f"{rel.version}.tar.gz"
    if not (cached.is_file() and tarball.sha256_file(cached) == rel.sha256):
        aws.s3.download_artifact(ctx.aws.s3(), rel.bucket, rel.key, cached, rel.version_id)
        if tarball.sha256_file(cached) != rel.sha256:
            cached.unlink()
            raise InputError(f"release {rel.version} in the store does not match its "
                             "published digest", resource=f"s3://{rel.bucket}/{rel.key}",
                             fix="publish that release again from its build")
    return cached


@step("install-release")
def install_release(ctx: Context) -> None:
    """Install the release on the stage's hosts: the same function in every procedure."""
    rel = ctx.release
    env = ctx.env
    push = env.artifact_transfer == "push"
    local = _local_artifact(ctx, rel) if push else None
    # Live hosts of a graceful rollout reload, still serving; builders and candidates
    # (nothing serving yet) always start afresh.
    graceful = env.reload == "graceful" and ctx.stage is not None and \
        ctx.stage.targets == BATCH
    restart_command = env.reload_command if graceful else env.restart_command
    # Presigned per stage, never stored: the URL is a credential while it lives.
    url = None if push else aws.s3.presign(ctx.aws.s3(), rel.bucket, rel.key,
                                           expires=int(ctx.timeout("presign", 900)),
                                           version_id=rel.version_id)

    def script_for(inst: aws.ec2.Instance) -> str:
        # Pushed over the host's own SSH connection first (push needs the ssh transport).
        pushed = ctx.connection(inst).put_private(str(local), inst.instance_id) \
            if local is not None else None
        return render.install_script(
            version=rel.version, sha256=rel.sha256, app_root=env.app_root,
            app_port=env.app_port, health_path=env.health_path,
            restart_command=restart_command, keep_releases=env.keep_releases,
            url=url, pushed_path=pushed, health_timeout=int(ctx.timeout("health", 60)),
            service=env.service, service_user=env.service_user, app=env.app.for_host(),
            health_check=env.health_check)

    results = ctx.run_as_root(script_for, timeout=ctx.timeout("install", 600),
                              fixes=INSTALL_FIXES)
    results.raise_for("install-release")
    ctx.log(f"  {rel.version} installed on {len(results)} host(s)")
