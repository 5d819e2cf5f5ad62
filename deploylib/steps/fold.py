"""Fold-back (fleet = "server-groups"): the drift a hotfix or a rebake-light leaves —
hosts running a release their group's image lacks, which new instances get only at boot —
closed without replacing a host: in each region a clean instance launched from the live
image, the live release installed on it (the install every procedure runs), its image put
in the live groups' launch templates. New instances then boot already on the release.

Never an image of a live host: one that has served traffic carries what serving left on
its disk (its /var/tmp, what anything that reached it planted, its own /etc/app.env),
which every instance launched from that image would then start with."""

from __future__ import annotations

from deploylib import aws, ledger
from deploylib.catalog import step
from deploylib.context import Context
from deploylib.errors import InputError, StateError
from deploylib.facts import HostRef
from deploylib.steps import servergroups
from deploylib.steps.release import from_store


@step("locate-release")
def locate_release(ctx: Context) -> None:
    """The release the record says is live, and in each region the live group, serving
    it: what is folded (a region whose group is gone, or serves nothing, is refused)."""
    record = ctx.record() or {}
    if not ctx.env.server_groups or not record.get("server_groups"):
        raise InputError(f"{ctx.env.name} has no server groups to fold into",
                         resource=ctx.env.record_parameter,
                         fix='set fleet = "server-groups" and deploy with `--mode immutable`')
    if record.get("release") != ctx.state.version:
        raise InputError(f"the record changed since this fold started: {record.get('release')} "
                         f"is live now, not {ctx.state.version}",
                         resource=ctx.env.record_parameter, fix="start `invoke fold` again")
    ctx.facts.release = from_store(ctx.env, ctx.aws.s3(), record["release"], record["sha256"],
                                   record.get("version_id"))
    for region in ctx.regions():
        group = servergroups.live_group(ctx, region, record)
        if group is None:
            raise StateError(f"the server group the record names in {region} is gone",
                             resource=region, fix="deploy the release again, then fold")
        hosts = ctx.targets([HostRef(region=region, instance_id=i) for i in group.in_service])
        serving = [h for h in hosts if ctx.serving(h) == record["release"]]
        if not serving:
            raise StateError(f"no live host in {region} serves {record['release']}",
                             resource=region, fix="deploy the release again, then fold")
        ctx.log(f"  {region}: {group.name} serves {record['release']}; folding it into "
                "an image of a clean instance")
    ctx.save()


@step("fold-template", undo="restore-templates")
def fold_template(ctx: Context) -> None:
    """Each region's group launches from the image carrying the release: a new launch
    template version with it, the group pointed at that version. The run's own group
    (rebake-light, once its image is made), else the live one (a fold)."""
    if not ctx.env.server_groups:
        return  # a fleet of instances: no launch template; the record names the images
    record = ctx.record() or {}

    def one(region: str) -> str:
        mine = ctx.facts.server_groups.get(region)
        group = aws.autoscaling.describe(ctx.aws.autoscaling(region), region, mine) \
            if mine else servergroups.live_group(ctx, region, record)
        if group is None:
            raise StateError(f"the server group {mine or 'the record names'} is gone",
                             resource=region, fix="deploy again with `--mode immutable`")
        version = servergroups.template_version(ctx, region, group.name,
                                                ctx.facts.images[region], purpose="fold")
        if region not in ctx.facts.folded_from and \
                (group.template_id, group.template_version) != (version.template_id,
                                                                str(version.version)):
            # What restore-templates puts back if the run fails before its record: the
            # run's image is discarded then, and no group may launch from it.
            ctx.facts.folded_from[region] = [group.name, group.template_id,
                                             group.template_version]
            ctx.save()
        aws.autoscaling.use_template(ctx.aws.autoscaling(region), region, group.name,
                                     version.template_id, version.version)
        return f"{group.name} launches from {ctx.facts.images[region]} (version " \
            f"{version.version})"

    ctx.per_region("fold-template", ctx.regions(sorted(ctx.facts.images)), one, {},
                   lambda region, text: f"{region}: {text}")


@step("record-images")
def record_images(ctx: Context) -> None:
    """The record's images: the folded ones (its release and its history unchanged)."""
    record = ctx.record()
    if record is None:
        raise StateError("nothing is recorded", resource=ctx.env.record_parameter,
                         fix="deploy with `--mode immutable` first")
    images = dict(record.get("images") or {})
    if all(images.get(r) == i for r, i in ctx.facts.images.items()):
        return
    images.update(ctx.facts.images)
    # The folded regions' drift is closed: their groups launch from the live release.
    entries = dict(record.get("ledger") or {})
    for region, image in ctx.facts.images.items():
        before = ledger.Entry.model_validate(entries[region]) if region in entries else None
        entries[region] = ledger.folded(before, image=image, release=record["release"]
                                        ).model_dump(mode="json", exclude_none=True)
    aws.ssm.write_record(ctx.aws.ssm(), ctx.env.record_parameter,
                         {**record, "images": images, "ledger": entries,
                          "fence": ctx.facts.lock_fence})
    ctx.log(f"  {ctx.env.record_parameter}: images "
            + ", ".join(f"{r}={i}" for r, i in sorted(images.items())))
