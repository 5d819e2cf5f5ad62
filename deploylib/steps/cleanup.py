"""After a failure: a rollout's failed batch put back on the live release, promoted
regions put back on the hosts they had, and what the run made and never made live
removed. The engine runs these (the plan names which); they are never planned stages."""

from __future__ import annotations

from deploylib import aws
from deploylib.catalog import step
from deploylib.context import Context
from deploylib.errors import CloudError
from deploylib.facts import Builder
from deploylib.steps import servergroups, traffic
from deploylib.steps.bake import image_name


def _discarded(ctx: Context, step_name: str, ids: list[str]) -> None:
    if ids:
        ctx.facts.discarded.setdefault(step_name, []).extend(ids)


@step("restore-batch")
def restore_batch(ctx: Context) -> None:
    """Put back the hosts of a failed batch that serve the live release again."""
    live = (ctx.record() or {}).get("release")
    env = ctx.env
    instances_by_region: dict[str, list[aws.ec2.Instance]] = {}
    for inst in ctx.targets():
        instances_by_region.setdefault(inst.region, []).append(inst)
    for region, instances in instances_by_region.items():
        serving = {i.instance_id: ctx.serving(i) for i in instances}
        good = [i for i, v in serving.items() if live and v == live]
        elb, group = ctx.aws.elbv2(region), ctx.target_group(region)
        # A graceful batch never left its target group: a host not back on the live
        # release leaves it now.
        aws.elb.leave(elb, region, group, [i for i in serving if i not in good], env.app_port)
        aws.elb.put_in(elb, region, group, good, env.app_port,
                       timeout=ctx.timeout("healthy", 300))
        for iid, version in serving.items():
            if iid in good:
                ctx.log(f"  {iid} serves the live release {live} again; back in the target group")
            else:
                # Never route traffic to a host that is not on the live release.
                ctx.log(f"  {iid} serves {version or 'nothing'}; left out of the target group")


@step("demote")
def demote(ctx: Context) -> None:
    """Put back the hosts a failed run's promotion replaced, in every region it promoted
    (they are still running: hosts are retired only once the release is recorded), and
    take its candidates out, so that every region serves the release it had."""
    env = ctx.env
    promoted, candidates = ctx.facts.promoted, ctx.facts.candidates
    record = ctx.record()
    if record and record.get("run_id") == ctx.state.run_id:
        return  # committed: this run's release is the live one

    def one(region: str) -> list[str]:
        elb, group = ctx.aws.elbv2(region), ctx.target_group(region)
        old = promoted[region]
        if not old:
            raise CloudError("nothing served here before this run: its candidates stay",
                             resource=region, fix=f"`invoke resume --run {ctx.state.run_id}` "
                             "finishes the release, or `invoke rollback`")
        if env.server_groups:
            servergroups.demote(ctx, region)  # the replaced group attached again first
            loose = [i for i in old if aws.elb.target_states(elb, region, group).get(i)
                     in (None, "draining")]
            aws.elb.put_in(elb, region, group, loose, env.app_port,
                           timeout=ctx.timeout("healthy", 300))
            # Detached: the group deregistered them; wait until they are idle.
            traffic.take_out(ctx, {region: candidates.get(region, [])},
                             deregister=False)
        else:
            aws.elb.put_in(elb, region, group, old, env.app_port,
                           timeout=ctx.timeout("healthy", 300))
            traffic.take_out(ctx, {region: candidates.get(region, [])})
        del promoted[region]  # the region is back as it was: nothing promoted there
        return old

    ctx.per_region("demote", sorted(promoted), one, {},
                   lambda region, old: f"{region}: {' '.join(old)} serve again; the "
                   "candidates are out")


@step("discard-candidates")
def discard_candidates(ctx: Context) -> None:
    """Terminate the candidates of a failed run that never went live."""
    candidates, promoted = ctx.facts.candidates, ctx.facts.promoted
    if ctx.env.server_groups:
        # Also a region whose group was made but never came up (no candidates yet).
        for region in sorted(set(ctx.facts.server_groups) - set(promoted)):
            gone = servergroups.discard(ctx, region)
            ids = candidates.pop(region, [])
            _discarded(ctx, "discard-candidates", ids)
            ctx.log(f"  {region}: server group {' '.join(gone) or '(none)'} deleted with "
                    f"its instances {' '.join(ids)}".rstrip())
        ctx.save()
        return
    for region in sorted(candidates):
        if region in promoted:
            continue
        ids = candidates[region]
        elb, group = ctx.aws.elbv2(region), ctx.target_group(region)
        states = aws.elb.target_states(elb, region, group)
        old_serving = [i for i, st in states.items() if i not in ids and st == "healthy"]
        registered = [i for i in ids if states.get(i) not in (None, "draining")]
        if registered and not old_serving:
            ctx.log(f"  {region}: the candidates are the only hosts serving; kept")
            continue
        aws.elb.deregister(elb, region, group, registered, ctx.env.app_port)
        aws.ec2.terminate(ctx.aws.ec2(region), region, ids)
        del candidates[region]
        _discarded(ctx, "discard-candidates", ids)
        ctx.log(f"  {region}: candidates {' '.join(ids)} terminated")
    ctx.save()


@step("discard-images")
def discard_images(ctx: Context) -> None:
    """Delete the images (and their snapshots) of a failed bake that never went live."""
    images = ctx.facts.images
    if ctx.facts.promoted:
        # Some region serves them already: they are live, and a resume finishes the rest.
        ctx.log("  images kept: a region already serves them (`invoke resume` finishes)")
        return
    name = image_name(ctx)
    regions = sorted(set(images) | set(ctx.env.all_regions))

    def one(region: str) -> list[str]:
        ec2 = ctx.aws.ec2(region)
        # Also what a crash left unrecorded: a copy started but not yet in the state.
        ids = {images.get(region), aws.ec2.find_image(ec2, region, name)}
        ids |= {i["ImageId"] for i in aws.ec2.tagged_images(
            ec2, region, {aws.TAG_RUN: ctx.state.run_id, aws.TAG_ROLE: "image"})}
        gone = sorted(i for i in ids if i)
        for image_id in gone:
            aws.ec2.delete_image(ec2, region, image_id, just_made=True)
        images.pop(region, None)
        _discarded(ctx, "discard-images", gone)
        return gone

    ctx.per_region("discard-images", regions, one, {}, lambda region, gone: (
        f"{region}: image {' '.join(gone)} and its snapshots deleted" if gone
        else f"{region}: no image of the run"))


@step("discard-builder")
def discard_builder(ctx: Context) -> None:
    """Terminate the builders of a failed bake (the one, or every region's); forget each
    unless its image is kept."""
    facts = ctx.facts
    lanes: list[tuple[str | None, Builder]] = ([(None, facts.builder)] if facts.builder else [])
    lanes += sorted(facts.builders.items())
    for region, b in lanes:
        if not b.terminated:
            aws.ec2.terminate(ctx.aws.ec2(b.region), b.region, [b.instance_id])
            ctx.log(f"  builder {b.instance_id} terminated in {b.region}")
        b.terminated = True
        if b.region not in facts.images:
            if region is None:
                facts.builder = None
            else:
                del facts.builders[region]
            _discarded(ctx, "discard-builder", [b.instance_id])
    ctx.save()


@step("restore-templates")
def restore_templates(ctx: Context) -> None:
    """Server groups: each group fold-template pointed at the run's image launches from
    the version it had again (that image is about to be discarded), and the version the
    run made for it goes."""
    for region, (group, template_id, version) in sorted(ctx.facts.folded_from.items()):
        asg = ctx.aws.autoscaling(region)
        if aws.autoscaling.describe(asg, region, group) is None:
            ctx.log(f"  {region}: {group} is gone")  # the run's own, discarded already
        else:
            aws.autoscaling.use_template(asg, region, group, template_id, version)
            ctx.log(f"  {region}: {group} launches from version {version} again")
        groups = aws.autoscaling.server_groups(asg, region, ctx.env.group_prefix)
        servergroups.drop_versions(ctx, region, groups, run_only=True)
        del ctx.facts.folded_from[region]
        ctx.save()


@step("resume-scaling")
def resume_scaling(ctx: Context) -> None:
    """Server groups: a failed in-place rollout lets the live groups it held (select-hosts)
    scale in and replace instances again. Nothing to do for a fleet of instances."""
    if ctx.env.server_groups:
        for name in servergroups.hold_live(ctx, held=False):
            ctx.log(f"  {name} scales as its policies say again")
