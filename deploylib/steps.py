"""The step library: one function per step, shared by all three procedures.

A step reads what earlier stages produced from the run state (`ctx.facts`), does its
work through the system modules, and writes what it produced back. Running a finished
step again changes nothing: each one first looks for what it would create.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploylib import aws, parallel, release, render, waits
from deploylib.catalog import step
from deploylib.errors import (
    CloudError,
    HostError,
    HostKeyError,
    InputError,
    RemoteCommandError,
    StepFailed,
)
from deploylib.plan import IN_PLACE_MODES
from deploylib.plan import batches as split

# -- helpers shared by several steps -----------------------------------------------------


def _tags(ctx: Any, role: str) -> list[dict[str, str]]:
    s = ctx.state
    return aws.tags(s.run_id, s.env, s.version, s.mode, role)


def _network(ctx: Any, region: str) -> tuple[str, list[str]]:
    subnet, group, _ = ctx.env.network(region)
    ec2 = ctx.aws.ec2(region)
    return (aws.resolve_subnet(ec2, subnet, region),
            [aws.resolve_security_group(ec2, group, region)])


def _target_group(ctx: Any, region: str) -> str:
    cache = ctx.facts.setdefault("target_groups", {})
    if region not in cache:
        _, _, name = ctx.env.network(region)
        cache[region] = aws.resolve_target_group(ctx.aws.elbv2(region), name, region)
    return cache[region]


def _by_region(refs: list[dict[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ref in refs:
        out.setdefault(ref["region"], []).append(ref["instance_id"])
    return out


def _raise_failures(stage: str, results: dict[str, Any], fix: str | None = None,
                    kind: str = "host") -> None:
    failures = {k: v for k, v in results.items() if isinstance(v, Exception)}
    if failures:
        raise StepFailed(stage, failures, fix=fix, kind=kind)


def _each_region(ctx: Any, stage: str, regions: list[str], fn: Any, into: dict[str, Any],
                 say: Any) -> None:
    """Run fn for every region at once; keep each success in `into` (run state) even when
    another region failed, so a resume redoes only the failed regions."""
    results = parallel.each(regions, fn, key=lambda r: r)
    for region, res in results.items():
        if not isinstance(res, Exception):
            into[region] = res
            ctx.log(f"  {say(region, res)}")
    ctx.save()
    _raise_failures(stage, results, kind="region")


def _image_name(ctx: Any) -> str:
    """One name per run: every region's image (and a retry's lookup) uses it."""
    return f"deploy-{ctx.state.env}-{ctx.state.version}-{ctx.state.run_id}"


def _record(ctx: Any) -> dict[str, Any] | None:
    return aws.read_record(ctx.aws.ssm(), ctx.env.record_parameter)


def _health(address: str, port: int, path: str, timeout: float = 2.0) -> dict[str, Any]:
    # Lab and real hosts are addressed directly; never through a proxy from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}:{port}{path}", timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def serving_version(address: str, port: int, path: str) -> str | None:
    """The release a host's app reports, or None when it does not answer."""
    try:
        return str(_health(address, port, path).get("version"))
    except (OSError, ValueError, urllib.error.URLError):
        return None


def _serving(ctx: Any, inst: aws.Instance, version: str) -> None:
    """One instance's app answers its health path with `version`, before the deadline."""
    env = ctx.env
    seen: list[str | None] = [None]

    def check() -> bool:
        seen[0] = serving_version(inst.address or "", env.app_port, env.health_path)
        return seen[0] == version

    waits.until(check, timeout=ctx.timeout("health", 60),
                what=f"the app to report release {version}",
                resource=f"{inst.instance_id} ({inst.address})",
                fix=lambda: f"it reports {seen[0] or 'nothing'}; check the service's "
                "log on the host")


def _wait_serving(ctx: Any, instances: list[aws.Instance], version: str, stage: str) -> None:
    """Every instance serves `version`, checked all at once."""
    _raise_failures(stage, parallel.each(instances, lambda i: _serving(ctx, i, version),
                                         key=lambda i: i.instance_id))


def artifact_key(env_name: str, version: str) -> str:
    """Where a release lives in the artifact store: one key per version, whatever the
    file was called, so a version is published once."""
    return f"releases/{env_name}/{version}.tar.gz"


# -- the steps ------------------------------------------------------------------------------


@step("publish-release")
def publish_release(ctx: Any) -> None:
    """Put the release artifact in the artifact store (once per version and content)."""
    # start() read the archive through when the run began; here it must still be there.
    artifact = release.check_artifact(ctx.state.artifact, read_through=False)
    digest = release.sha256_file(artifact)
    key = artifact_key(ctx.env.name, ctx.state.version)
    s3 = ctx.aws.s3()
    published = aws.published_sha256(s3, ctx.env.artifact_bucket, key)
    if published is not None and published != digest:
        raise InputError(
            f"release {ctx.state.version} was already published with different content",
            resource=f"s3://{ctx.env.artifact_bucket}/{key}",
            fix="releases are immutable: give the new build a new version")
    uploaded = published is None
    if uploaded:
        aws.upload_artifact(s3, ctx.env.artifact_bucket, key, str(artifact), digest)
    ctx.facts["release"] = {"version": ctx.state.version, "sha256": digest,
                            "bucket": ctx.env.artifact_bucket, "key": key,
                            "size": artifact.stat().st_size}
    ctx.log(f"  release {ctx.state.version} sha256 {digest[:12]}… "
            f"{'uploaded' if uploaded else 'already in the store'}")


def release_facts(env: Any, s3: Any, version: str) -> dict[str, Any]:
    """A published release as the install step needs it, read back from the store."""
    key = artifact_key(env.name, version)
    digest = aws.published_sha256(s3, env.artifact_bucket, key)
    if not digest:
        raise InputError(f"release {version} is not in the artifact store",
                         resource=f"s3://{env.artifact_bucket}/{key}",
                         fix=f"publish it again: `invoke deploy --mode in-place --version "
                         f"{version} --artifact PATH`")
    return {"version": version, "sha256": digest, "bucket": env.artifact_bucket, "key": key}


@step("locate-previous")
def locate_previous(ctx: Any) -> None:
    """Find what the environment's record says was live before: release and images."""
    record = _record(ctx) or {}
    previous = record.get("previous") or {}
    if not previous.get("release"):
        raise InputError(f"the record of {ctx.env.name} names no previous release",
                         resource=ctx.env.record_parameter,
                         fix="deploy the release you want with `invoke deploy`")
    if previous["release"] != ctx.state.version:
        raise InputError(f"the record changed since this rollback started: the previous "
                         f"release is now {previous['release']}, not {ctx.state.version}",
                         resource=ctx.env.record_parameter, fix="start `invoke rollback` again")
    ctx.facts["release"] = release_facts(ctx.env, ctx.aws.s3(), previous["release"])
    ctx.facts["images"] = dict(previous.get("images") or {})
    ctx.facts["rolled_back_from"] = record.get("release")
    ctx.log(f"  rolling back {record.get('release')} -> {previous['release']} "
            f"({ctx.state.mode})")


def _provision_script(ctx: Any) -> str:
    return render.provision_script(packages=list(ctx.env.os_packages),
                                   service=ctx.env.service, app_root=ctx.env.app_root,
                                   app_port=ctx.env.app_port)


def foundation_key(base_image: str, script: str) -> str:
    """The bake cache's key: what a foundation image is made of (the base image and the
    provision script, which names the packages and the service unit)."""
    import hashlib

    return hashlib.sha256(f"{base_image}\n{script}".encode()).hexdigest()[:32]


@step("launch-builder")
def launch_builder(ctx: Any) -> None:
    """Launch the builder: from the foundation image when the bake cache has one for this
    base image and package list, else from the base image."""
    if ctx.facts.get("builder"):
        return
    region = ctx.env.primary_region
    ec2 = ctx.aws.ec2(region)
    existing = aws.find_tagged(ec2, region, {aws.TAG_RUN: ctx.state.run_id,
                                             aws.TAG_ROLE: "builder"})
    base = aws.find_base_image(ec2, region, ctx.env.base_image, ctx.env.base_image_owner)
    key = foundation_key(base, _provision_script(ctx))
    if existing:
        iid, source = existing[0].instance_id, existing[0].image_id
    else:
        cached = [i for i in aws.tagged_images(ec2, {aws.TAG_FOUNDATION: key})
                  if i.get("State") == "available"]
        source = max(cached, key=lambda i: i.get("CreationDate", ""))["ImageId"] \
            if cached else base
        subnet, groups = _network(ctx, region)
        iid = aws.launch(ec2, region=region, image_id=source, count=1,
                         instance_type=ctx.env.instance_type, subnet_id=subnet,
                         security_group_ids=groups, tag_list=_tags(ctx, "builder"),
                         client_token=f"{ctx.state.run_id}-builder",
                         key_name=ctx.env.key_name)[0]
    ctx.facts["builder"] = {"region": region, "instance_id": iid, "base_image": base,
                            "foundation": key, "cache_hit": source != base}
    ctx.save()
    ctx.log(f"  builder {iid} from {source} in {region}"
            + (" (foundation image: bake cache hit)" if source != base else ""))


@step("wait-ssh")
def wait_ssh(ctx: Any) -> None:
    """Wait until the stage's instances run and accept SSH with a trusted host key."""
    refs = ctx.target_refs()
    for region, ids in _by_region(refs).items():
        aws.wait_instances(ctx.aws.ec2(region), region, ids, "running",
                           ctx.timeout("launch", 600))

    def one(inst: aws.Instance) -> None:
        last: list[str] = []

        def attempt() -> bool:
            # Ask for the trusted keys on every try: on EC2 they appear in the console
            # output a while after boot, and until then nothing is trusted.
            conn = ctx.connection(inst)
            try:
                conn.open(retry=False)  # this loop is the retry, with its own deadline
                return True
            except HostKeyError as exc:
                if not conn.endpoint.trusted_keys:
                    last[:] = [exc.problem]
                    return False
                raise  # a key that differs from the trusted one stops the run
            except HostError as exc:
                last[:] = [exc.problem]
                return False

        waits.until(attempt, timeout=ctx.timeout("ssh", 300), what="SSH to accept connections",
                    resource=f"{inst.instance_id} ({inst.address})",
                    fix=lambda: "check the instance booted and the security group allows "
                    "SSH from here" + (f"; last error: {last[0]}" if last else ""))

    _raise_failures("wait-ssh", parallel.each(ctx.targets(), one, key=lambda i: i.instance_id))


@step("provision")
def provision(ctx: Any) -> None:
    """Install the OS packages and the service unit (a rendered script, run once)."""
    if ctx.facts.get("builder", {}).get("cache_hit"):
        ctx.log("  the foundation image has them already: nothing to provision")
        return
    script = _provision_script(ctx)

    def one(inst: aws.Instance) -> str:
        return ctx.connection(inst).run("bash -s", stdin=script,
                                        timeout=ctx.timeout("provision", 900)).output

    results = parallel.each(ctx.targets(), one, key=lambda i: i.instance_id)
    _raise_failures("provision", results)
    for out in results.values():
        for line in str(out).strip().splitlines()[-3:]:
            ctx.log(f"  {line}")


# What the install script's exit codes mean for the operator (templates/install.sh.j2).
INSTALL_FIXES = {
    3: "the artifact on the host differs from the published one: publish the build again "
       "under a new version",
    4: "the archive could not be unpacked: check the tarball and the host's free disk space",
    5: "the release did not become healthy and the previous release was restored: read the "
       "service's log on the host",
    6: "the release did not become healthy and no previous release could be restored: read "
       "the service's log on the host",
}


@step("cache-foundation")
def cache_foundation(ctx: Any) -> None:
    """Start a foundation image of the provisioned builder (the bake cache); not waited
    for: it becomes available while the bake goes on."""
    b = ctx.facts["builder"]
    if b.get("cache_hit") or b.get("foundation_image"):
        return
    ec2 = ctx.aws.ec2(b["region"])
    name = f"deploy-foundation-{b['foundation'][:16]}-{ctx.state.run_id}"
    tags = [*_tags(ctx, "foundation"), {"Key": aws.TAG_FOUNDATION, "Value": b["foundation"]}]
    image = aws.find_image(ec2, name) or aws.create_image(
        ec2, b["region"], b["instance_id"], name, tags, no_reboot=True)
    b["foundation_image"] = image
    ctx.save()
    ctx.log(f"  foundation image {image} (base {b['base_image']} + packages) for later bakes")


def _local_artifact(ctx: Any, rel: dict[str, Any]) -> Path:
    own = ctx.state.artifact
    if own and rel["version"] == ctx.state.version and Path(own).is_file():
        return Path(own)
    cached = Path(ctx.env.state_dir) / "artifacts" / f"{rel['version']}.tar.gz"
    if not (cached.is_file() and release.sha256_file(cached) == rel["sha256"]):
        aws.download_artifact(ctx.aws.s3(), rel["bucket"], rel["key"], cached)
        if release.sha256_file(cached) != rel["sha256"]:
            cached.unlink()
            raise InputError(f"release {rel['version']} in the store does not match its "
                             "published digest", resource=f"s3://{rel['bucket']}/{rel['key']}",
                             fix="publish that release again from its build")
    return cached


@step("install-release")
def install_release(ctx: Any) -> None:
    """Install the release on the stage's hosts: the same function in every procedure."""
    rel = ctx.release
    env = ctx.env
    push = env.artifact_transfer == "push"
    # What to push: the run's own artifact, or (a rollback) the release read back from
    # the store into the run's artifact cache, checked against its digest.
    local = _local_artifact(ctx, rel) if push else None
    # Presigned per stage, never stored: the URL is a credential while it lives.
    url = None if push else aws.presign(ctx.aws.s3(), rel["bucket"], rel["key"],
                                        expires=int(ctx.timeout("presign", 900)))

    def one(inst: aws.Instance) -> str:
        conn = ctx.connection(inst)
        pushed = None
        if push:
            pushed = f"/tmp/deploylib-{ctx.state.run_id}-{inst.instance_id}.tar.gz"
            conn.put(str(local), pushed)
        script = render.install_script(
            version=rel["version"], sha256=rel["sha256"], app_root=env.app_root,
            app_port=env.app_port, health_path=env.health_path,
            restart_command=env.restart_command, keep_releases=env.keep_releases,
            url=url, pushed_path=pushed, health_timeout=int(ctx.timeout("health", 60)))
        try:
            out = conn.run("bash -s", stdin=script, timeout=ctx.timeout("install", 600)).output
        except RemoteCommandError as exc:
            if exc.exit_status in INSTALL_FIXES:
                exc.fix = INSTALL_FIXES[exc.exit_status]
                exc.args = (exc.line(),)
            raise
        return out.strip().splitlines()[-1] if out.strip() else ""

    results = parallel.each(ctx.targets(), one, key=lambda i: i.instance_id)
    installed = ctx.facts.setdefault("installed", {})
    for iid, res in results.items():
        installed[iid] = "ok" if not isinstance(res, Exception) else "failed"
    ctx.save()
    _raise_failures("install-release", results)
    ctx.log(f"  {rel['version']} installed on {len(results)} host(s)")


@step("stop-builder")
def stop_builder(ctx: Any) -> None:
    """Stop the builder so its disk is consistent for the image."""
    b = ctx.facts["builder"]
    ec2 = ctx.aws.ec2(b["region"])
    state = aws.describe(ec2, b["region"], [b["instance_id"]])[0].state
    if state != "stopped":
        aws.stop(ec2, b["region"], [b["instance_id"]])
    aws.wait_instances(ec2, b["region"], [b["instance_id"]], "stopped",
                       ctx.timeout("stop", 600))


@step("create-image")
def create_image(ctx: Any) -> None:
    """Create an image from the builder, or from one candidate in each region."""
    images = ctx.facts.setdefault("images", {})
    refs = ctx.target_refs()
    # One source per region: the builder, or the first candidate there.
    sources: dict[str, str] = {}
    for ref in refs:
        sources.setdefault(ref["region"], ref["instance_id"])
    live_source = ctx.stage.targets != "builder"

    def one(region: str) -> str:
        ec2 = ctx.aws.ec2(region)
        name = _image_name(ctx)
        image_id = images.get(region) or aws.find_image(ec2, name)
        if not image_id:
            # A live candidate is imaged without a reboot so it keeps serving.
            image_id = aws.create_image(ec2, region, sources[region], name,
                                        _tags(ctx, "image"), no_reboot=live_source)
        aws.wait_image(ec2, region, image_id, ctx.timeout("image", 3600))
        aws.tag_snapshots(ec2, image_id, _tags(ctx, "image"))
        return image_id

    _each_region(ctx, "create-image", sorted(sources), one, images,
                 lambda region, image: f"image {image} in {region}")


@step("terminate-builder")
def terminate_builder(ctx: Any) -> None:
    """Terminate the builder once its image exists."""
    b = ctx.facts["builder"]
    aws.terminate(ctx.aws.ec2(b["region"]), b["region"], [b["instance_id"]])
    b["terminated"] = True
    ctx.save()


@step("copy-image")
def copy_image(ctx: Any) -> None:
    """Start copying the image to every other region, all at once. Nothing waits for the
    copies here: each region waits for its own (wait-image), so the primary region is
    tested and promoted while the copies are on their way."""
    env = ctx.env
    images = ctx.facts.setdefault("images", {})
    source = images[env.primary_region]
    name = _image_name(ctx)

    def one(region: str) -> str:
        ec2 = ctx.aws.ec2(region)
        image_id = images.get(region) or aws.find_image(ec2, name)
        if not image_id:
            image_id = aws.copy_image(ec2, source_region=env.primary_region,
                                      dest_region=region, image_id=source, name=name,
                                      tag_list=_tags(ctx, "image"),
                                      client_token=f"{ctx.state.run_id}-{region}")
        return image_id

    _each_region(ctx, "copy-image", env.copy_regions, one, images,
                 lambda region, image: f"copying to {region} as {image}")


@step("wait-image")
def wait_image(ctx: Any) -> None:
    """Wait until the run's image is available in the region (a copy can take longer
    than everything else in the run)."""
    images = ctx.facts["images"]

    def one(region: str) -> str:
        ec2 = ctx.aws.ec2(region)
        what = "image" if region == ctx.env.primary_region else "copy"
        aws.wait_image(ec2, region, images[region], ctx.timeout(what, 7200))
        aws.tag_snapshots(ec2, images[region], _tags(ctx, "image"))
        return images[region]

    _each_region(ctx, "wait-image", ctx.regions(sorted(images)), one, {},
                 lambda region, image: f"image {image} available in {region}")


def _healthy(elb: Any, group: str) -> list[str]:
    return sorted(i for i, s in aws.target_states(elb, group).items() if s == "healthy")


def live_hosts_in(clients: aws.AwsClients, env: Any, region: str) -> list[str]:
    """Instances registered and healthy in the region's target group (outside a run)."""
    _, _, name = env.network(region)
    elb = clients.elbv2(region)
    return _healthy(elb, aws.resolve_target_group(elb, name, region))


def live_hosts(ctx: Any, region: str) -> list[str]:
    """The same, inside a run, with the target group resolved once per run."""
    return _healthy(ctx.aws.elbv2(region), _target_group(ctx, region))


@step("launch-candidates")
def launch_candidates(ctx: Any) -> None:
    """Launch a fleet of candidates in every region, from the new or the live image."""
    env = ctx.env
    source = ctx.option.get("image", "baked")
    if source == "previous":
        images = ctx.facts["images"]  # located by locate-previous
    elif source == "live":
        record = _record(ctx)
        if not record or not record.get("images"):
            raise InputError(f"nothing is recorded as live in {env.name}",
                             resource=env.record_parameter,
                             fix="make a first release with `--mode immutable`")
        images = record["images"]
    else:
        images = ctx.facts["images"]
    candidates = ctx.facts.setdefault("candidates", {})

    def one(region: str) -> list[str]:
        if region in candidates:
            return candidates[region]
        if region not in images:
            raise CloudError("no image is known for this region", resource=region,
                             fix="bake with `--mode immutable` so every region has an image")
        ec2 = ctx.aws.ec2(region)
        found = aws.find_tagged(ec2, region, {aws.TAG_RUN: ctx.state.run_id,
                                              aws.TAG_ROLE: "candidate"})
        if found:
            return [i.instance_id for i in found]
        count = len(live_hosts(ctx, region)) or ctx.facts.get("fleet_size") or env.fleet_size
        subnet, groups = _network(ctx, region)
        return aws.launch(ec2, region=region, image_id=images[region], count=count,
                          instance_type=env.instance_type, subnet_id=subnet,
                          security_group_ids=groups, tag_list=_tags(ctx, "candidate"),
                          client_token=f"{ctx.state.run_id}-candidates-{region}",
                          key_name=env.key_name)

    regions = ctx.regions()
    _each_region(ctx, "launch-candidates", regions, one, candidates,
                 lambda region, ids: f"{len(ids)} candidate(s) in {region} from "
                 f"{images.get(region)}")
    for region in regions:
        aws.wait_instances(ctx.aws.ec2(region), region, candidates[region], "running",
                           ctx.timeout("launch", 600))


def junit_dir(ctx: Any) -> Path:
    """Where a run's JUnit XML goes (Jenkins' `junit` step reads it)."""
    return Path(ctx.env.state_dir) / ctx.state.run_id / "junit"


def _junit(path: Path, suite: str, cases: dict[str, tuple[float, str | None]]) -> None:
    import xml.etree.ElementTree as ET

    root = ET.Element("testsuite", name=suite, tests=str(len(cases)),
                      failures=str(sum(1 for _, err in cases.values() if err)))
    for name, (seconds, error) in cases.items():
        case = ET.SubElement(root, "testcase", classname=suite, name=name,
                             time=f"{seconds:.3f}")
        if error:
            ET.SubElement(case, "failure", message=error[:500]).text = error
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="unicode", xml_declaration=True)


@step("smoke-test")
def smoke_test(ctx: Any) -> None:
    """Every candidate answers its health path with the new release; then the team's
    smoke tests (pytest, `smoke_tests`) run against them. Both write JUnit XML."""
    import os
    import subprocess
    import sys

    instances = ctx.targets()
    out = junit_dir(ctx)
    # One report per region: the regions test at the same time.
    suffix = f"-{ctx.region}" if ctx.region else ""
    began = time.monotonic()
    results = parallel.each(instances, lambda i: _serving(ctx, i, ctx.state.version),
                            key=lambda i: i.instance_id)
    took = time.monotonic() - began
    _junit(out / f"smoke-health{suffix}.xml", "smoke-test.health", {
        f"{iid} reports {ctx.state.version}": (took, None if not isinstance(r, Exception)
                                                else getattr(r, "problem", str(r)))
        for iid, r in results.items()})
    _raise_failures("smoke-test", results)
    if not ctx.env.smoke_tests:
        return
    targets = [{"instance_id": i.instance_id, "address": i.address,
                "url": f"http://{i.address}:{ctx.env.app_port}"} for i in instances]
    report = out / f"smoke-tests{suffix}.xml"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"--junitxml={report}", ctx.env.smoke_tests],
        env=dict(os.environ, DEPLOY_SMOKE_TARGETS=json.dumps(targets),
                 DEPLOY_SMOKE_VERSION=ctx.state.version, DEPLOY_SMOKE_HEALTH=ctx.env.health_path),
        capture_output=True, text=True, timeout=ctx.timeout("smoke", 600))
    summary = (proc.stdout.strip().splitlines() or [""])[-1]
    ctx.log(f"  smoke tests: {summary}")
    if proc.returncode != 0:
        raise StepFailed("smoke-test", {"smoke tests": RemoteCommandError(
            f"pytest exited {proc.returncode}: {summary}", resource=ctx.env.smoke_tests,
            exit_status=proc.returncode)},
            fix=f"read the failures in {report}; the candidates are discarded")


@step("promote")
def promote(ctx: Any) -> None:
    """Make the candidates live: register them, wait until healthy, deregister the hosts
    they replace. Those keep running (draining) until the release is recorded: until
    then a failure elsewhere puts them back (demote); after it, retire removes them."""
    env = ctx.env
    candidates = ctx.facts["candidates"]
    promoted = ctx.facts.setdefault("promoted", {})

    def one(region: str) -> list[str]:
        if region in promoted:
            return promoted[region]
        elb = ctx.aws.elbv2(region)
        group = _target_group(ctx, region)
        new = candidates[region]
        # Targets already draining are on their way out (deregistering one again fails).
        old = sorted(i for i, st in aws.target_states(elb, group).items()
                     if i not in new and st != "draining")
        aws.register(elb, group, new, env.app_port)
        aws.wait_healthy(elb, group, new, region, ctx.timeout("healthy", 300))
        aws.mark_retiring(ctx.aws.ec2(region), old, ctx.state.run_id)
        aws.deregister(elb, group, old, env.app_port)
        return old

    _each_region(ctx, "promote", ctx.regions(sorted(candidates)), one, promoted,
                 lambda region, old: f"{region}: {len(candidates[region])} live, "
                 f"{len(old)} draining {' '.join(old)}".rstrip())


@step("retire")
def retire(ctx: Any) -> None:
    """Once the release is recorded: let the replaced hosts finish draining, then
    terminate them."""
    promoted = ctx.facts.get("promoted", {})
    retired = ctx.facts.setdefault("retired", {})

    def one(region: str) -> list[str]:
        old = promoted[region]
        elb = ctx.aws.elbv2(region)
        aws.wait_drained(elb, _target_group(ctx, region), old, region,
                         ctx.timeout("drain", 600))
        aws.terminate(ctx.aws.ec2(region), region, old)
        return old

    _each_region(ctx, "retire", [r for r in sorted(promoted) if r not in retired], one,
                 retired, lambda region, old: f"{region}: {len(old)} retired "
                 f"{' '.join(old)}".rstrip())


@step("record")
def record(ctx: Any) -> None:
    """Write what is now live (release and image per region) to the environment's record."""
    ssm = ctx.aws.ssm()
    previous = _record(ctx)
    if previous and previous.get("run_id") == ctx.state.run_id:
        return
    images = dict((previous or {}).get("images", {}))
    if ctx.state.mode not in IN_PLACE_MODES:
        images.update(ctx.facts.get("images", {}))
    rel = ctx.facts["release"]
    new = {
        "release": rel["version"], "sha256": rel["sha256"], "images": images,
        "procedure": ctx.state.mode, "run_id": ctx.state.run_id,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "previous": {k: previous[k] for k in ("release", "sha256", "images", "procedure",
                                              "run_id")
                     if k in previous} if previous else None,
    }
    aws.write_record(ssm, ctx.env.record_parameter, new)
    ctx.log(f"  {ctx.env.record_parameter}: release {rel['version']}, images "
            + ", ".join(f"{r}={i}" for r, i in sorted(images.items())))


@step("select-hosts")
def select_hosts(ctx: Any) -> None:
    """Choose the live hosts to update, check each accepts SSH, split them into batches.

    Every connection is opened here, all at once, before any host is drained: a host
    that cannot be reached stops the run while the whole fleet still serves.
    """
    if ctx.facts.get("batches") is not None:
        return
    batches: list[list[dict[str, str]]] = []
    for region in ctx.env.all_regions:
        hosts = live_hosts(ctx, region)
        size = ctx.env.batch_count(len(hosts))
        batches.extend([{"region": region, "instance_id": i} for i in b]
                       for b in split(hosts, size))
    if not batches:
        raise InputError(f"no live hosts in {ctx.env.name}", resource=ctx.env.target_group,
                         fix="make a first release with `--mode immutable`")
    instances = ctx.targets([h for b in batches for h in b])
    _raise_failures("select-hosts", parallel.each(
        instances, lambda i: ctx.connection(i).open(), key=lambda i: i.instance_id),
        fix="no host was touched: repair SSH on those hosts (or take them out of the "
        "target group), then `invoke resume`")
    ctx.facts["batches"] = batches
    ctx.facts["batches_done"] = 0
    ctx.save()
    ctx.log(f"  {len(instances)} host(s) reachable, in {len(batches)} batch(es)")


@step("drain")
def drain(ctx: Any) -> None:
    """Take the batch out of its target groups and wait for in-flight requests."""
    for region, ids in _by_region(ctx.target_refs()).items():
        elb, group = ctx.aws.elbv2(region), _target_group(ctx, region)
        registered = {i for i, st in aws.target_states(elb, group).items() if st != "draining"}
        aws.deregister(elb, group, [i for i in ids if i in registered], ctx.env.app_port)
        aws.wait_drained(elb, group, ids, region, ctx.timeout("drain", 600))


@step("health-check")
def health_check(ctx: Any) -> None:
    """Every host of the batch answers its health path with the release installed."""
    _wait_serving(ctx, ctx.targets(), ctx.release["version"], "health-check")


@step("put-back")
def put_back(ctx: Any) -> None:
    """Register the batch again and wait until the load balancer finds it healthy."""
    for region, ids in _by_region(ctx.target_refs()).items():
        elb, group = ctx.aws.elbv2(region), _target_group(ctx, region)
        aws.register(elb, group, ids, ctx.env.app_port)
        aws.wait_healthy(elb, group, ids, region, ctx.timeout("healthy", 300))



@step("notify")
def notify(ctx: Any) -> None:
    """Record the in-place release in Jenkins (its record job); never fails the run.

    When Jenkins cannot be reached the notice stays in this run's state, and the next
    notify (or `invoke jenkins.notify`) sends it, with any other run's left unsent."""
    from deploylib import jenkins
    from deploylib import state as states
    from deploylib.errors import DeployError

    env = ctx.env
    if ctx.facts.get("notice", {}).get("sent"):
        return
    if ctx.jenkins is None:
        ctx.log("  Jenkins is not configured: the hotfix is recorded in SSM only")
        return
    hosts = [h["instance_id"] for b in ctx.facts.get("batches", []) for h in b
             if h["instance_id"] not in ctx.facts.get("failed_hosts", {})]
    ctx.facts["notice"] = {"job": env.jenkins.record_job, "sent": False, "parameters": {
        "ENV": env.name, "RELEASE": ctx.release["version"], "RUN_ID": ctx.state.run_id,
        "HOSTS": " ".join(hosts)}}
    ctx.save()
    pending = [ctx.state] + [s for s in states.runs_with_pending_notice(env.state_dir)
                             if s.run_id != ctx.state.run_id]
    for run in pending:
        notice = run.facts["notice"]
        try:
            jenkins.send_notice(ctx.jenkins, notice)
        except DeployError as exc:
            ctx.log(f"  Jenkins did not take the notice of run {run.run_id} ({exc.problem}); "
                    f"it is kept in the run state: `invoke jenkins.notify` sends it later")
            break
        run.save()
        ctx.log(f"  recorded in Jenkins: {notice['job']} queue item {notice['queue_item']} "
                f"(run {run.run_id})")


# -- recovery and cleanup: run when a stage fails, never as a planned stage ----------------


def _discarded(ctx: Any, step_name: str, ids: list[str]) -> None:
    if ids:
        ctx.facts.setdefault("discarded", {}).setdefault(step_name, []).extend(ids)


@step("restore-batch")
def restore_batch(ctx: Any) -> None:
    """Put back the hosts of a failed batch that serve the live release again."""
    live = (_record(ctx) or {}).get("release")
    env = ctx.env
    instances_by_region: dict[str, list[aws.Instance]] = {}
    for inst in ctx.targets():
        instances_by_region.setdefault(inst.region, []).append(inst)
    for region, instances in instances_by_region.items():
        serving = {i.instance_id: serving_version(i.address or "", env.app_port,
                                                  env.health_path) for i in instances}
        good = [i for i, v in serving.items() if live and v == live]
        elb, group = ctx.aws.elbv2(region), _target_group(ctx, region)
        aws.register(elb, group, good, env.app_port)
        aws.wait_healthy(elb, group, good, region, ctx.timeout("healthy", 300))
        for iid, version in serving.items():
            if iid in good:
                ctx.log(f"  {iid} serves the live release {live} again; back in the target group")
            else:
                # Never route traffic to a host that is not on the live release.
                ctx.log(f"  {iid} serves {version or 'nothing'}; left out of the target group")


@step("discard-builder")
def discard_builder(ctx: Any) -> None:
    """Terminate the builder of a failed bake; forget it unless its image is kept."""
    b = ctx.facts.get("builder")
    if not b:
        return
    if not b.get("terminated"):
        aws.terminate(ctx.aws.ec2(b["region"]), b["region"], [b["instance_id"]])
        ctx.log(f"  builder {b['instance_id']} terminated")
    b["terminated"] = True
    if b["region"] not in ctx.facts.get("images", {}):
        ctx.facts.pop("builder")
        _discarded(ctx, "discard-builder", [b["instance_id"]])
    ctx.save()


@step("discard-images")
def discard_images(ctx: Any) -> None:
    """Delete the images (and their snapshots) of a failed bake that never went live."""
    images = ctx.facts.get("images") or {}
    if ctx.facts.get("promoted"):
        # Some region serves them already: they are live, and a resume finishes the rest.
        ctx.log("  images kept: a region already serves them (`invoke resume` finishes)")
        return
    name = _image_name(ctx)
    regions = sorted(set(images) | set(ctx.env.all_regions))

    def one(region: str) -> list[str]:
        ec2 = ctx.aws.ec2(region)
        # Also what a crash left unrecorded: a copy started but not yet in the state.
        ids = {images.get(region)} | {i["ImageId"] for i in aws.tagged_images(
            ec2, {aws.TAG_RUN: ctx.state.run_id, aws.TAG_ROLE: "image"})}
        ids |= {aws.find_image(ec2, name)}
        gone = []
        for image_id in sorted(i for i in ids if i):
            aws.delete_image(ec2, region, image_id)
            gone.append(image_id)
        return gone

    results = parallel.each(regions, one, key=lambda r: r)
    for region, res in results.items():
        if not isinstance(res, Exception):
            images.pop(region, None)
            if res:
                _discarded(ctx, "discard-images", res)
                ctx.log(f"  {region}: image {' '.join(res)} and its snapshots deleted")
    ctx.save()
    _raise_failures("discard-images", results, kind="region")
    ctx.facts.pop("images", None)
    ctx.save()


@step("demote")
def demote(ctx: Any) -> None:
    """Put back the hosts a failed run's promotion replaced, in every region it promoted
    (they are still running: hosts are retired only once the release is recorded), and
    take its candidates out, so that every region serves the release it had."""
    env = ctx.env
    promoted = ctx.facts.get("promoted") or {}
    candidates = ctx.facts.get("candidates") or {}
    record = _record(ctx)
    if record and record.get("run_id") == ctx.state.run_id:
        return  # committed: this run's release is the live one

    def one(region: str) -> list[str]:
        elb, group = ctx.aws.elbv2(region), _target_group(ctx, region)
        old = promoted[region]
        if not old:
            raise CloudError("nothing served here before this run: its candidates stay",
                             resource=region, fix=f"`invoke resume --run {ctx.state.run_id}` "
                             "finishes the release, or `invoke rollback`")
        aws.register(elb, group, old, env.app_port)
        aws.wait_healthy(elb, group, old, region, ctx.timeout("healthy", 300))
        aws.deregister(elb, group, candidates.get(region, []), env.app_port)
        aws.wait_drained(elb, group, candidates.get(region, []), region,
                         ctx.timeout("drain", 600))
        del promoted[region]  # the region is back as it was: nothing promoted there
        return old

    _each_region(ctx, "demote", sorted(promoted), one, {},
                 lambda region, old: f"{region}: {' '.join(old)} serve again; the "
                 "candidates are out")


@step("discard-candidates")
def discard_candidates(ctx: Any) -> None:
    """Terminate the candidates of a failed run that never went live."""
    candidates = ctx.facts.get("candidates") or {}
    promoted = ctx.facts.get("promoted") or {}
    for region in sorted(candidates):
        if region in promoted:
            continue
        ids = candidates[region]
        elb, group = ctx.aws.elbv2(region), _target_group(ctx, region)
        states = aws.target_states(elb, group)
        old_serving = [i for i, st in states.items() if i not in ids and st == "healthy"]
        registered = [i for i in ids if states.get(i) not in (None, "draining")]
        if registered and not old_serving:
            ctx.log(f"  {region}: the candidates are the only hosts serving; kept")
            continue
        aws.deregister(elb, group, registered, ctx.env.app_port)
        aws.terminate(ctx.aws.ec2(region), region, ids)
        del candidates[region]
        _discarded(ctx, "discard-candidates", ids)
        ctx.log(f"  {region}: candidates {' '.join(ids)} terminated")
    ctx.save()
