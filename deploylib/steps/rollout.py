"""A release put on the live hosts in place, batch by batch: the hosts chosen and checked
reachable, each batch drained, installed (steps.release), checked and put back; what a
stopped rollout switches back; the notice to Jenkins."""

from __future__ import annotations

from deploylib import aws
from deploylib.catalog import step
from deploylib.context import Context, by_region
from deploylib.errors import DeployError, InputError
from deploylib.facts import HostRef, Revert
from deploylib.plan import PER_BATCH, waves
from deploylib.plan import batches as split
from deploylib.steps import servergroups, traffic
from deploylib.steps.release import from_store


@step("select-hosts", undo="resume-scaling")
def select_hosts(ctx: Context) -> None:
    """Choose the live hosts to update, check each can be reached (SSH, or its SSM
    agent online), split them into batches:
    each region's by `batch_size`, rolled as `rollout` says (waves: a canary in the primary
    region, then batch i of every region at once).

    Every host is reached here, all at once, before any host is drained: a host
    that cannot be reached stops the run while the whole fleet still serves.
    """
    env = ctx.env
    if env.server_groups:
        # Before a host is chosen, and on resume too (a failed run let them go).
        held = servergroups.hold_live(ctx, held=True)
        ctx.log(f"  no scale-in or replacement in {' '.join(held)} until the rollout ends"
                if held else "  no live server group to hold")
    if ctx.facts.batches is not None:
        return
    per_region: dict[str, list[list[HostRef]]] = {}
    for region in env.all_regions:
        hosts = ctx.live_hosts(region)
        per_region[region] = [[HostRef(region=region, instance_id=i) for i in b]
                              for b in split(hosts, env.batch_count(len(hosts)))]
    if env.rollout == "waves":
        batches = waves(per_region, env.primary_region)
    else:  # regions-in-turn
        batches = [b for region in env.all_regions for b in per_region[region]]
    if not batches:
        raise InputError(f"no live hosts in {ctx.env.name}", resource=ctx.env.target_group,
                         fix="make a first release with `--mode immutable`")
    instances = ctx.targets([h for b in batches for h in b])
    how_reached = "SSH" if ctx.transport == "ssh" else "their SSM agent"
    ctx.reach("select-hosts", instances,
              fix=f"no host was touched: repair {how_reached} on those hosts (or take them "
              "out of the target group), then `invoke resume`")
    ctx.facts.batches = batches
    ctx.save()
    how = "a canary, then waves across regions" if env.rollout == "waves" and \
        len([r for r, b in per_region.items() if b]) > 1 else "in turn"
    ctx.log(f"  {len(instances)} host(s) reachable, in {len(batches)} batch(es), {how}")


@step("drain")
def drain(ctx: Context) -> None:
    """Take the batch out of its target groups; go on once each host has nothing in
    flight from the load balancer (seen on the host; steps.traffic)."""
    traffic.take_out(ctx, by_region(ctx.target_refs()))


@step("health-check")
def health_check(ctx: Context) -> None:
    """Every host of the batch answers its health path with the release installed."""
    version = ctx.release.version
    ctx.on_hosts("health-check", lambda i: ctx.wait_serving(i, version))


@step("put-back")
def put_back(ctx: Context) -> None:
    """Register the batch again and wait until the load balancer finds it healthy."""
    for region, ids in by_region(ctx.target_refs()).items():
        aws.elb.put_in(ctx.aws.elbv2(region), region, ctx.target_group(region), ids,
                       ctx.env.app_port, timeout=ctx.timeout("healthy", 300))


@step("catch-up")
def catch_up(ctx: Context) -> None:
    """Server groups: once the release is recorded, the instances the live groups launched
    while the rollout was under way (they booted into the release recorded then) get it
    too, as one more batch of the rollout's own steps. Nothing to do for a fleet of
    instances: nothing launches hosts there but the tool. Then the live groups, held
    since select-hosts, scale as they like again."""
    if not ctx.env.server_groups or ctx.facts.batches is None:
        return
    try:
        _catch_up(ctx)
    finally:
        # The rollout is over (recorded: nothing after it cleans up): the live groups
        # scale as their policies say again.
        servergroups.hold_live(ctx, held=False)


def _catch_up(ctx: Context) -> None:
    from dataclasses import replace

    from deploylib import catalog, runs

    version = ctx.release.version
    batches = ctx.facts.batches or []
    rolled = {h.instance_id for b in batches for h in b}
    late = servergroups.newcomers(ctx, version, rolled)
    if not late:
        ctx.log("  no instance came up during the rollout without the release")
        return
    ctx.log(f"  {len(late)} instance(s) came up during the rollout: "
            + " ".join(h.instance_id for h in late))
    rollout = next(s for s in runs.env_plan(ctx.env, ctx.state.mode).stages
                   if s.kind == PER_BATCH)
    for member in rollout.members:
        catalog.get(member.step).fn(replace(ctx, stage=member, batch=late))
    ctx.facts.batches = [*batches, late]
    ctx.save()


@step("locate-live")
def locate_live(ctx: Context) -> None:
    """Choose what a stopped rollout switches back: the release the record says is live,
    and, of the batches it reached (the stage's hosts), the hosts that do not serve it."""
    ctx.facts.revert = None
    record = ctx.record() or {}
    live = record.get("release")
    if not live or live == ctx.release.version:
        ctx.log("  no other release is live: nothing to switch back")
        return
    rel = from_store(ctx.env, ctx.aws.s3(), live, record["sha256"], record.get("version_id"))
    facts = ctx.facts
    reached = {h.instance_id for h in ctx.target_refs()}
    skip = set(facts.failed_hosts) | set(facts.rolled_back)
    # Hosts on the live release already (the failed batch's, restored) stay as they are.
    updated = {i.instance_id for i in ctx.targets() if i.instance_id not in skip and
               ctx.serving(i) != live}
    batches = {n: [h for h in b if h.instance_id in reached & updated]
               for n, b in enumerate(facts.batches or [], start=1)}
    facts.revert = Revert(release=rel, batches={n: b for n, b in batches.items() if b})
    ctx.save()
    ctx.log(f"  {len(updated & reached)} host(s) to switch back to {live}")


@step("notify")
def notify(ctx: Context) -> None:
    """Record the in-place release in Jenkins (its record job); never fails the run.

    When Jenkins cannot be reached the notice stays in this run's state, and the next
    notify (or `invoke jenkins.notify`) sends it, with any other run's left unsent."""
    from deploylib import jenkins
    from deploylib import state as states

    env = ctx.env
    if ctx.facts.notice and ctx.facts.notice.sent:
        return
    if ctx.jenkins is None:
        ctx.log("  Jenkins is not configured: the hotfix is recorded in SSM only")
        return
    ctx.facts.notice = jenkins.notice_of(env, ctx.state)
    ctx.save()
    pending = [ctx.state] + [s for s in states.runs_with_pending_notice(env.state_dir)
                             if s.run_id != ctx.state.run_id]
    for run in pending:
        try:
            notice = jenkins.send_notice(ctx.jenkins, env, run)
        except DeployError as exc:
            ctx.log(f"  Jenkins did not take the notice of run {run.run_id} ({exc.problem}); "
                    f"it is kept in the run state: `invoke jenkins.notify` sends it later")
            break
        if notice is None:
            continue
        run.save()
        ctx.log(f"  recorded in Jenkins: {notice.job} queue item {notice.queue_item} "
                f"(run {run.run_id})")
