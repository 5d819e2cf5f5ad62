"""A new fleet made live: candidates launched from an image, smoke-tested, promoted into
the target groups; the release recorded as live; the hosts it replaced retired."""

from __future__ import annotations

import time
from typing import Any

from deploylib import aws, ledger, parallel, smoke
from deploylib.catalog import step
from deploylib.context import Context
from deploylib.errors import CloudError, InputError, RemoteCommandError, StepFailed
from deploylib.plan import CANDIDATES
from deploylib.steps import servergroups, traffic
from deploylib.steps.bake import check_layers, network


@step("launch-candidates", undo="discard-candidates", launches=CANDIDATES)
def launch_candidates(ctx: Context) -> None:
    """Launch a fleet of candidates in every region, from the new or the live image."""
    env = ctx.env
    source = ctx.option.get("image", "baked")
    if source == "live":
        record = ctx.record()
        if not record or not record.get("images"):
            raise InputError(f"nothing is recorded as live in {env.name}",
                             resource=env.record_parameter,
                             fix="make a first release with `--mode immutable`")
        images = record["images"]
    else:  # baked by this run, or the previous ones (located by locate-previous)
        images = ctx.facts.images
    candidates = ctx.facts.candidates

    def one(region: str) -> list[str]:
        if region in candidates:
            return candidates[region]
        if region not in images:
            raise CloudError("no image is known for this region", resource=region,
                             fix="bake with `--mode immutable` so every region has an image")
        ec2 = ctx.aws.ec2(region)
        if source == "live":  # rebake-light: on an image still close to its bake
            check_layers(ctx, region, images[region])
        # An immutable release's images are its own bake's (or its handoff's: the run the
        # bake began): made by this run, holding its bytes. (A rollback's may be older
        # than the release they serve: a hotfix installs at boot over them.)
        baked = source == "baked" and ctx.state.mode == "immutable"
        aws.ec2.check_own_image(ec2, region, images[region], env.name, ctx.aws.account(),
                                digest=ctx.release.sha256 if baked else None,
                                run=ctx.state.run_id if baked else None)
        if env.server_groups:  # found again on resume by its name and tags
            return servergroups.launch(ctx, region, images[region])
        found = aws.ec2.find_tagged(ec2, region, {aws.TAG_RUN: ctx.state.run_id,
                                                  aws.TAG_ROLE: "candidate"})
        if found:
            return [i.instance_id for i in found]
        count = len(ctx.live_hosts(region)) or ctx.facts.fleet_size or env.fleet_size
        subnet, groups = network(ctx, region)
        return aws.ec2.launch(ec2, region=region, image_id=images[region], count=count,
                              instance_type=env.instance_type, subnet_id=subnet,
                              security_group_ids=groups, tag_list=ctx.tags("candidate"),
                              client_token=f"{ctx.state.run_id}-candidates-{region}",
                              key_name=env.key_name,
                              # Their SSM agent acts with it: Run Command reaches them.
                              instance_profile=env.instance_profile
                              if env.transport == "ssm" else None)

    regions = ctx.regions()
    ctx.per_region("launch-candidates", regions, one, candidates,
                   lambda region, ids: f"{len(ids)} candidate(s) in {region} from "
                   f"{images.get(region)}" + (f", server group {ctx.facts.server_groups[region]}"
                                              if region in ctx.facts.server_groups else ""))
    for region in regions:
        aws.ec2.wait_instances(ctx.aws.ec2(region), region, candidates[region], "running",
                               ctx.timeout("launch", 600))


@step("smoke-test")
def smoke_test(ctx: Context) -> None:
    """Every candidate answers its health path with the new release; then the team's
    smoke tests (pytest, `smoke_tests`) run against them. Both write JUnit XML."""
    env = ctx.env
    version = ctx.release.version
    instances = ctx.targets()
    out = smoke.junit_dir(env.state_dir, ctx.state.run_id)
    # One report per region: the regions test at the same time.
    suffix = f"-{ctx.region}" if ctx.region else ""
    began = time.monotonic()

    results = parallel.each(instances, lambda i: ctx.wait_serving(i, version),
                            key=lambda i: i.instance_id)
    took = time.monotonic() - began
    smoke.write_junit(out / f"smoke-health{suffix}.xml", "smoke-test.health", {
        f"{iid} reports {version}": (took, getattr(err, "problem", str(err)) if err else None)
        for iid, err in ((i, results.failed.get(i)) for i in results)})
    results.raise_for("smoke-test")
    if not env.smoke_tests:
        return
    targets = [{"instance_id": i.instance_id, "address": i.address,
                "url": f"http://{i.address}:{env.app_port}"} for i in instances]
    report = out / f"smoke-tests{suffix}.xml"
    outcome = smoke.run(env.smoke_tests, targets, version=version,
                        health_path=env.health_path, report=report,
                        timeout=ctx.timeout("smoke", 600), extra_env=env.smoke_env)
    ctx.log(f"  smoke tests: {outcome.summary}")
    if not outcome.passed:
        raise StepFailed("smoke-test", {"smoke tests": RemoteCommandError(
            f"pytest exited {outcome.exit_code}: {outcome.summary}", resource=env.smoke_tests,
            exit_status=outcome.exit_code)},
            fix=f"read the failures in {report}; the candidates are discarded")


@step("promote", undo="demote")
def promote(ctx: Context) -> None:
    """Make the candidates live: register them, wait until healthy, deregister the hosts
    they replace. Those keep running (draining) until the release is recorded: until
    then a failure elsewhere puts them back (demote); after it, retire removes them."""
    env = ctx.env
    candidates = ctx.facts.candidates
    promoted = ctx.facts.promoted

    def one(region: str) -> list[str]:
        if region in promoted:
            return promoted[region]
        if env.server_groups:
            return servergroups.promote(ctx, region)
        elb, group = ctx.aws.elbv2(region), ctx.target_group(region)
        new = candidates[region]
        # Targets already draining are on their way out (deregistering one again fails).
        old = sorted(i for i, st in aws.elb.target_states(elb, region, group).items()
                     if i not in new and st != "draining")
        aws.elb.put_in(elb, region, group, new, env.app_port,
                       timeout=ctx.timeout("healthy", 300))
        aws.ec2.mark_retiring(ctx.aws.ec2(region), region, old, ctx.state.run_id)
        aws.elb.deregister(elb, region, group, old, env.app_port)
        return old

    ctx.per_region("promote", ctx.regions(sorted(candidates)), one, promoted,
                   lambda region, old: f"{region}: {len(candidates[region])} live, "
                   f"{len(old)} draining {' '.join(old)}".rstrip())


@step("record")
def record(ctx: Context) -> None:
    """Write what is now live (release and image per region) to the environment's record.

    `images`: "run" records the images this run made live; "unchanged" keeps those the
    record had (the hosts changed in place, not their images)."""
    previous = ctx.record()
    if previous and previous.get("run_id") == ctx.state.run_id:
        return
    images = dict((previous or {}).get("images", {}))
    if ctx.option.get("images", "run") == "run":
        images.update(ctx.facts.images)
    groups = dict((previous or {}).get("server_groups") or {})
    groups.update(ctx.facts.server_groups)
    rel = ctx.release
    new = {
        "release": rel.version, "sha256": rel.sha256, "version_id": rel.version_id,
        "images": images, "procedure": ctx.state.mode, "run_id": ctx.state.run_id,
        "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # which take of the lock wrote it (the write itself asserted that take first)
        "fence": ctx.facts.lock_fence,
        "previous": {k: previous[k] for k in ("release", "sha256", "version_id", "images",
                                              "server_groups", "procedure", "run_id")
                     if previous.get(k) is not None} if previous else None,
    }
    if groups:
        # region -> the server group serving it (fleet = "server-groups"): what its
        # instances boot into the recorded release by (deploylib/templates/boot.sh.j2)
        new["server_groups"] = groups
    new["ledger"] = _ledger(ctx, previous, images, groups, str(new["recorded_at"]))
    if foundations := _foundations(ctx, previous):
        new["foundations"] = foundations
    aws.ssm.write_record(ctx.aws.ssm(), ctx.env.record_parameter, new)
    ctx.log(f"  {ctx.env.record_parameter}: release {rel.version}, images "
            + ", ".join(f"{r}={i}" for r, i in sorted(images.items())))


def _foundations(ctx: Context, previous: dict[str, Any] | None) -> dict[str, Any]:
    """Each region's foundation image a later bake may start from: the one this run made
    (cache-foundation), else the one the record named. The bake cache trusts these and
    only these: an image is a foundation by who made it, not by its tags, which anyone
    allowed to tag an image in the account could give."""
    kept = dict((previous or {}).get("foundations") or {})
    made = [ctx.facts.builder, *ctx.facts.builders.values()]
    for b in made:
        if b is not None and b.foundation_image and not b.cache_hit:
            kept[b.region] = {"image": b.foundation_image, "key": b.foundation}
    return kept


def _ledger(ctx: Context, previous: dict[str, Any] | None, images: dict[str, str],
            groups: dict[str, str], since: str) -> dict[str, Any]:
    """Each region's ledger entry once this release is recorded: what a new host of the
    region launches from (its server group's launch image, else the recorded image), the
    release that image carries, and what lies on top (deploylib.ledger)."""
    old = (previous or {}).get("ledger") or {}
    how = ledger.IN_PLACE if ctx.option.get("images", "run") == "unchanged" else ledger.BOOT
    version = ctx.release.version

    def one(region: str) -> dict[str, Any]:
        group = groups.get(region)
        image = servergroups.launch_image(ctx, region, group) if group else images.get(region)
        tags = aws.ec2.image_tags(ctx.aws.ec2(region), region, [image]) if image else {}
        entry = ledger.advance(
            ledger.Entry.model_validate(old[region]) if region in old else None,
            group=group, image=image, baked=tags.get(image or "", {}).get(aws.TAG_RELEASE),
            release=version, how=how, since=since)
        return entry.model_dump(mode="json", exclude_none=True)

    regions = [r for r in ctx.env.all_regions if r in images or r in groups]
    results = parallel.each(regions, one, key=lambda r: r)
    results.raise_for("record", kind="region")
    return {r: results[r] for r in regions}


@step("retire")
def retire(ctx: Context) -> None:
    """Once the release is recorded: let the replaced hosts finish what they have in
    flight, then terminate them."""
    promoted = ctx.facts.promoted
    retired = ctx.facts.retired

    def one(region: str) -> list[str]:
        old = promoted[region]
        # Deregistered at promotion: gone once idle, whatever the API still shows.
        traffic.take_out(ctx, {region: old}, deregister=False)
        if ctx.env.server_groups:
            kept = servergroups.retire(ctx, region)  # the replaced group kept
            there = aws.ec2.still_there(ctx.aws.ec2(region), region, old)
            loose = [i for i in old if i in there and i not in kept]
            aws.ec2.terminate(ctx.aws.ec2(region), region, loose)
            return old
        aws.ec2.terminate(ctx.aws.ec2(region), region, old)
        return old

    ctx.per_region("retire", [r for r in sorted(promoted) if r not in retired], one, retired,
                   lambda region, old: f"{region}: {len(old)} retired {' '.join(old)}".rstrip())
