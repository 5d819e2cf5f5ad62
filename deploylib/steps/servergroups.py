"""The fleet as server groups (fleet = "server-groups"): what launch-candidates, promote,
demote, retire and discard-candidates do when each region's fleet is an Auto Scaling
group from a launch template version.

Red/black, as Spinnaker does it: a run that launches makes the next group
(`<service>-<env>-vNNN`) with the live group's capacity, out of service until it is
promoted (attached to the target group; the group registers its instances as they go in
service); then the previous group is detached (its instances drain), kept scaled to 0
(`keep_server_groups` of them), the older ones deleted with their launch template
versions. While a run works on a group, the group neither scales in nor replaces
instances underneath it (aws.autoscaling.HELD); it may scale out, and every instance it
launches boots into the right release by itself (deploylib/templates/boot.sh.j2): the record's
release while its group is the live one, else the release the group was made with.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deploylib import aws, render, waits
from deploylib.context import Context
from deploylib.errors import CloudError
from deploylib.facts import HostRef, Release
from deploylib.steps.bake import network
from deploylib.steps.release import artifact_key

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_autoscaling import AutoScalingClient


def live_group(ctx: Context, region: str, record: dict[str, Any] | None = None
               ) -> aws.autoscaling.ServerGroup | None:
    """The server group the record names live in a region, as it is now (None: none)."""
    record = ctx.record() if record is None else record
    name = ((record or {}).get("server_groups") or {}).get(region)
    if not name:
        return None
    return aws.autoscaling.describe(ctx.aws.autoscaling(region), region, name)


def launch_image(ctx: Context, region: str, name: str) -> str | None:
    """The image a server group launches new instances from now (its template version's)."""
    group = aws.autoscaling.describe(ctx.aws.autoscaling(region), region, name)
    if group is None:
        return None
    return aws.ec2.template_images(ctx.aws.ec2(region), region, ctx.env.group_prefix).get(
        group.template_version)


def user_data(ctx: Context, group: str, rel: Release) -> bytes:
    """The boot script of `group`'s instances, as user data (compressed)."""
    env = ctx.env
    return aws.ec2.packed_user_data(render.boot_script(
        group=group, hook=aws.autoscaling.BOOT_HOOK, version=rel.version, sha256=rel.sha256,
        version_id=rel.version_id, record_parameter=env.record_parameter,
        record_region=env.primary_region, bucket=env.artifact_bucket,
        key_prefix=artifact_key(env.name, "")[: -len(".tar.gz")],
        store_region=env.primary_region, app_root=env.app_root, app_port=env.app_port,
        health_path=env.health_path, health_check=env.health_check, service=env.service,
        service_user=env.service_user, app=env.app.for_host(),
        restart_command=env.restart_command, keep_releases=env.keep_releases,
        fetch_timeout=int(ctx.timeout("install", 300)),
        health_timeout=int(ctx.timeout("health", 30))),
        what=f"server group {group}'s boot script")


def template_version(ctx: Context, region: str, group: str, image_id: str, *,
                     purpose: str = "launch") -> aws.ec2.TemplateVersion:
    """The run's version of the environment's launch template in a region: what `group`'s
    instances launch with (the image, and user data that boots them into the release).
    One per purpose (`launch`, `fold`): made once, found again on resume."""
    env = ctx.env
    _, security_groups = network(ctx, region)
    return aws.ec2.put_template_version(
        ctx.aws.ec2(region), region=region, name=env.group_prefix, image_id=image_id,
        instance_type=env.instance_type, security_group_ids=security_groups,
        tag_list=ctx.tags("candidate"), user_data=user_data(ctx, group, ctx.release),
        instance_profile=env.instance_profile or None, key_name=env.key_name,
        client_token=f"{ctx.state.run_id}-{region}" + ("" if purpose == "launch"
                                                        else f"-{purpose}"))


def launch(ctx: Context, region: str, image_id: str) -> list[str]:
    """The run's server group in a region, made (or found again, on resume) and its
    instances in service; returns them."""
    env = ctx.env
    asg = ctx.aws.autoscaling(region)
    groups = ctx.facts.server_groups
    # Groups AWS is still deleting count for the next name only: theirs is taken.
    every = aws.autoscaling.server_groups(asg, region, env.group_prefix, deleting=True)
    existing = [g for g in every if not g.deleting]
    mine = next((g for g in existing if g.name == groups.get(region)
                 or g.tags.get(aws.TAG_RUN) == ctx.state.run_id), None)
    live = live_group(ctx, region)
    # What the team set on the live group goes with it to the next (and back to the kept
    # one on a rollback).
    team = aws.autoscaling.settings(asg, live) if live is not None \
        else aws.autoscaling.Settings()
    if live is not None:
        low, high, desired = live.min_size, live.max_size, max(live.desired, 1)
    else:
        desired = ctx.facts.fleet_size or env.fleet_size
        low, high = desired, env.max_size or 2 * desired
    kept = _kept(ctx, region, existing) if ctx.option.get("image") == "previous" else None
    if kept is not None:
        # A rollback: the group the previous release served from is still kept (at 0):
        # scaled up again, it is the candidates — one boot, not a bake or a new group.
        groups[region] = kept.name
        ctx.save()
        aws.autoscaling.hold(asg, region, kept.name)
        if live is not None and live.name != kept.name:
            aws.autoscaling.carry(asg, region, kept.name, team)
        aws.autoscaling.release(asg, region, kept.name, aws.autoscaling.KEPT)
        aws.autoscaling.set_capacity(asg, region, kept.name, min_size=low,
                                     max_size=max(high, kept.max_size), desired=desired)
        ctx.log(f"  {region}: re-enabling {kept.name}")
        return aws.autoscaling.wait_in_service(asg, region, kept.name, desired,
                                               ctx.timeout("launch", 600)
                                               + ctx.timeout("boot", 900),
                                               console=_console(ctx, region))
    name = mine.name if mine else aws.autoscaling.next_name(
        env.group_prefix, [g.name for g in every])
    groups[region] = name
    ctx.save()  # before anything is made: a crash leaves it findable by name and tag
    ec2 = ctx.aws.ec2(region)
    # the group spans its subnets (one per zone): AWS spreads its instances across them
    subnets = [aws.ec2.describe_subnet(ec2, subnet, region)["SubnetId"]
               for subnet in env.group_subnets(region)]
    version = template_version(ctx, region, name, image_id)
    tags = [t for t in ctx.tags("server-group") if t["Key"] != "Name"]
    grace = aws.elb.first_healthy_within(ctx.aws.elbv2(region), region,
                                         ctx.target_group(region))
    aws.autoscaling.create(asg, region=region, name=name, template_id=version.template_id,
                           version=version.version, subnet_ids=subnets, tag_list=tags,
                           min_size=low, max_size=high, desired=desired,
                           hook_timeout=int(ctx.timeout("boot", 900)), grace=grace, kept=team)
    if team.said():
        ctx.log(f"  {region}: {name} keeps {live.name if live else 'the live group'}'s "
                f"{team.said()}")
    aws.autoscaling.hold(asg, region, name)
    return aws.autoscaling.wait_in_service(asg, region, name, desired,
                                           ctx.timeout("launch", 600) + ctx.timeout("boot", 900),
                                           console=_console(ctx, region))


def _console(ctx: Context, region: str) -> Callable[[str], str]:
    """An instance's console output (what its boot printed), for the waits on a group:
    the latest (Nitro instance types); nothing where EC2 keeps only what a state change
    buffered (older types: the hook's timeout is then the wait's only end)."""
    ec2 = ctx.aws.ec2(region)

    def read(instance_id: str) -> str:
        try:
            return aws.ec2.console_output(ec2, region, instance_id, latest=True)
        except CloudError:
            return ""

    return read


def _kept(ctx: Context, region: str, existing: list[aws.autoscaling.ServerGroup]
          ) -> aws.autoscaling.ServerGroup | None:
    """The server group the record's previous release served from, if it is still kept
    out of service (or is this run's already)."""
    previous = ((ctx.record() or {}).get("previous") or {}).get("server_groups") or {}
    name = ctx.facts.server_groups.get(region) or previous.get(region)
    found = next((g for g in existing if g.name == name), None)
    if found is None or (found.target_groups and name != ctx.facts.server_groups.get(region)):
        return None
    return found


def promote(ctx: Context, region: str) -> list[str]:
    """Put the run's group in service and take the live one out; returns the instances
    taken out (draining until retire)."""
    env = ctx.env
    asg, elb, group_arn = ctx.aws.autoscaling(region), ctx.aws.elbv2(region), \
        ctx.target_group(region)
    name = ctx.facts.server_groups[region]
    aws.autoscaling.attach(asg, region, name, [group_arn])
    new = ctx.facts.candidates[region]
    aws.elb.wait_healthy(elb, region, group_arn, new, ctx.timeout("healthy", 300))
    live = live_group(ctx, region)
    old: list[str] = []
    if live is not None and live.name != name:
        aws.autoscaling.hold(asg, region, live.name)
        aws.autoscaling.detach(asg, region, live.name, [group_arn])
        ctx.facts.replaced_groups[region] = live.name
        old = live.counted
    # Hosts in the target group that no group owns (a fleet from before server groups)
    # go out too, as with loose instances.
    loose = sorted(i for i, st in aws.elb.target_states(elb, region, group_arn).items()
                   if i not in new and i not in old and st != "draining")
    aws.elb.deregister(elb, region, group_arn, loose, env.app_port)
    old = sorted(set(old) | set(loose))
    aws.ec2.mark_retiring(ctx.aws.ec2(region), region, old, ctx.state.run_id)
    return old


def demote(ctx: Context, region: str) -> None:
    """Put the group the run replaced back in service; take the run's group out."""
    asg, elb, group_arn = ctx.aws.autoscaling(region), ctx.aws.elbv2(region), \
        ctx.target_group(region)
    previous = ctx.facts.replaced_groups.get(region)
    if previous:
        aws.autoscaling.attach(asg, region, previous, [group_arn])
        group = aws.autoscaling.describe(asg, region, previous)
        if group is not None:
            aws.elb.wait_healthy(elb, region, group_arn, group.in_service,
                                 ctx.timeout("healthy", 300))
        aws.autoscaling.release(asg, region, previous)
        del ctx.facts.replaced_groups[region]
    mine = ctx.facts.server_groups.get(region)
    if mine:
        aws.autoscaling.detach(asg, region, mine, [group_arn])


def discard(ctx: Context, region: str) -> list[str]:
    """Delete the run's server group in a region (its instances with it) and its launch
    template version; returns the group's name, if there was one."""
    asg, ec2 = ctx.aws.autoscaling(region), ctx.aws.ec2(region)
    env = ctx.env
    names = {ctx.facts.server_groups.get(region)} | {
        g.name for g in aws.autoscaling.server_groups(asg, region, env.group_prefix)
        if g.tags.get(aws.TAG_RUN) == ctx.state.run_id}
    gone = sorted(n for n in names if n)
    for name in gone:
        group = aws.autoscaling.describe(asg, region, name)
        if group is not None and group.tags.get(aws.TAG_RUN) != ctx.state.run_id:
            # A kept group a rollback re-enabled: kept again, at 0, out of service.
            aws.autoscaling.detach(asg, region, name, list(group.target_groups))
            aws.autoscaling.set_capacity(asg, region, name, min_size=0,
                                         max_size=group.max_size, desired=0)
            aws.autoscaling.release(asg, region, name)
            aws.autoscaling.keep_quiet(asg, region, name)
            continue
        aws.autoscaling.delete(asg, region, name)
    template = aws.ec2.launch_template(ec2, region, env.group_prefix)
    if template is not None:
        ours = [v.version for v in template.versions
                if v.tags.get(aws.TAG_RUN) == ctx.state.run_id]
        if ours and len(ours) == len(template.versions):
            aws.ec2.delete_template(ec2, region, template.template_id)  # the run made it
        elif ours:
            aws.ec2.delete_template_versions(ec2, region, template.template_id,
                                             [v for v in ours if v != template.default])
    ctx.facts.server_groups.pop(region, None)
    return gone


def retire(ctx: Context, region: str) -> set[str]:
    """Once the release is recorded: the replaced group kept out of service, scaled to 0
    or at its capacity (`kept_capacity`: what a rollback re-enables); the groups beyond
    `keep_server_groups` deleted with their launch template versions; the run's group let
    scale as it likes again. Returns the instances the kept group keeps running."""
    asg = ctx.aws.autoscaling(region)
    mine = ctx.facts.server_groups.get(region)
    previous = ctx.facts.replaced_groups.get(region)
    kept: set[str] = set()
    if previous:
        group = aws.autoscaling.describe(asg, region, previous)
        if group is not None:
            aws.autoscaling.release(asg, region, previous)
            aws.autoscaling.keep_quiet(asg, region, previous)
            if ctx.env.kept_capacity == "zero":
                aws.autoscaling.set_capacity(asg, region, previous, min_size=0,
                                             max_size=group.max_size, desired=0)
            else:
                kept = set(group.instances)
    if mine:
        aws.autoscaling.release(asg, region, mine)
    prune(ctx, region, keep={n for n in (mine,) if n})
    return kept  # the instances the kept group keeps running


def prune(ctx: Context, region: str, keep: set[str]) -> list[str]:
    """Delete the environment's out-of-service server groups beyond the newest
    `keep_server_groups` (and never one in `keep`), with their launch template versions."""
    env = ctx.env
    asg = ctx.aws.autoscaling(region)
    groups = aws.autoscaling.server_groups(asg, region, env.group_prefix)
    idle = [g for g in groups if g.name not in keep and not g.target_groups]
    doomed = idle[: max(0, len(idle) - env.keep_server_groups)]
    for g in doomed:
        aws.autoscaling.delete(asg, region, g.name)
    drop_versions(ctx, region, [g for g in groups if g not in doomed])
    if doomed:
        ctx.log(f"  {region}: server groups {' '.join(g.name for g in doomed)} deleted")
    return [g.name for g in doomed]


def drop_versions(ctx: Context, region: str, groups: list[aws.autoscaling.ServerGroup], *,
                  run_only: bool = False) -> list[int]:
    """Delete the launch template versions none of `groups` launches from (`run_only`:
    only the run's own); the default version stays, as EC2 deletes it only with the
    template. Returns what was deleted."""
    ec2 = ctx.aws.ec2(region)
    template = aws.ec2.launch_template(ec2, region, ctx.env.group_prefix)
    if template is None:
        return []
    used = {g.template_version for g in groups}
    unused = [v.version for v in template.versions
              if str(v.version) not in used and v.version != template.default
              and (not run_only or v.tags.get(aws.TAG_RUN) == ctx.state.run_id)]
    aws.ec2.delete_template_versions(ec2, region, template.template_id, unused)
    return unused


def hold_live(ctx: Context, *, held: bool) -> list[str]:
    """An in-place rollout's live groups: held (no scale-in, no replacement: an instance
    the rollout drained or restarts is neither terminated nor replaced under it) or let
    scale as they like again. Scale-out goes on: what launches boots into the record's
    release and catch-up gives it the new one. Returns the groups, as region/name."""
    names = (ctx.record() or {}).get("server_groups") or {}
    change = aws.autoscaling.hold if held else aws.autoscaling.release
    out = []
    for region in ctx.regions():
        asg = ctx.aws.autoscaling(region)
        name = names.get(region)
        if name and aws.autoscaling.describe(asg, region, name) is not None:
            change(asg, region, name)
            out.append(f"{region}/{name}")
    return out


def newcomers(ctx: Context, version: str, rolled: set[str]) -> list[HostRef]:
    """The live groups' instances a rollout did not reach that do not serve `version`:
    launched while it was under way, they booted into the release recorded then. Waits
    first until no instance of those groups is still booting (it would read the record
    as it is now, this run's release in it)."""
    out: list[HostRef] = []
    record = ctx.record()
    for region in ctx.regions():
        asg = ctx.aws.autoscaling(region)
        name = ((record or {}).get("server_groups") or {}).get(region)
        if not name:
            continue

        def booted(name: str = name, region: str = region, asg: AutoScalingClient = asg
                   ) -> aws.autoscaling.ServerGroup | None:
            group = aws.autoscaling.describe(asg, region, name)
            if group is None:
                return None
            pending = [i for i, st in group.instances.items() if st.startswith("Pending")]
            return None if pending else group

        group = waits.until(booted, timeout=ctx.timeout("boot", 900),
                            what=f"the instances of {name} booting to be in service",
                            resource=f"server group {name} in {region}",
                            fix="read the instances' console output (their boot's log)")
        fresh = [i for i in group.in_service if i not in rolled]
        for inst in ctx.targets([HostRef(region=region, instance_id=i) for i in fresh]):
            if ctx.serving(inst) != version:
                out.append(HostRef(region=region, instance_id=inst.instance_id))
    return out
