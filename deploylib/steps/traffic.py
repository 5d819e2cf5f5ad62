"""Hosts taken out of their target groups: deregistered, then let go once each has
nothing in flight from the load balancer, as the host itself sees it.

An Application Load Balancer stops routing to a target the moment it is deregistered and
is done with it as soon as nothing is in flight, but DescribeTargetHealth shows it
`draining` until the deregistration delay (300 s by default) has passed. Waiting for the
API to stop listing it would cost every batch that delay for nothing; instead each host
is asked (over the run's SSH connection, or by Run Command) until no connection from the
balancer is open and none has opened for `drain_quiet` seconds
(deploylib/templates/idle.sh.j2, reading the kernel's socket table). The delay is only
the ceiling: by then the balancer has closed whatever was left. A host that cannot be
asked (unreachable) is waited for through the API: until it is no longer listed.
"""

from __future__ import annotations

from deploylib import aws, render
from deploylib.context import Context
from deploylib.errors import RemoteCommandError
from deploylib.facts import HostRef

# idle.sh.j2's exit codes
_STILL_OPEN, _NO_TABLE = 8, 9


def take_out(ctx: Context, by_region: dict[str, list[str]], *,
             deregister: bool = True) -> None:
    """Deregister the hosts (those not already on their way out) and return once every
    one is idle. `deregister=False`: they were deregistered earlier (promote)."""
    env = ctx.env
    by_region = {region: ids for region, ids in by_region.items() if ids}
    if not by_region:
        return
    ceilings: dict[str, float] = {}
    for region, ids in by_region.items():
        if deregister:
            aws.elb.leave(ctx.aws.elbv2(region), region, ctx.target_group(region), ids,
                          env.app_port)
        ceilings[region] = min(ctx.deregistration_delay(region), ctx.timeout("drain", 600))
    instances = ctx.targets([HostRef(region=r, instance_id=i)
                             for r, ids in by_region.items() for i in ids])
    region_of = {i.instance_id: i.region for i in instances}
    through_api: dict[str, list[str]] = {}

    scripts = {region: render.idle_script(app_port=env.app_port, quiet=env.drain_quiet,
                                          ceiling=ceiling)
               for region, ceiling in ceilings.items()}
    said = ctx.run_as_root(lambda inst: scripts[inst.region], instances=instances,
                           timeout=max(ceilings.values()) + 60)
    for iid, answer in sorted(said.items()):
        if isinstance(answer, RemoteCommandError) and answer.exit_status == _STILL_OPEN:
            answer = answer.output
        if isinstance(answer, str):
            ctx.log(f"  {iid} {answer.strip().splitlines()[-1] if answer.strip() else 'idle'}")
            continue
        # Whatever stops the host being asked, the load balancer's own word still holds.
        why = "its socket table cannot be read" if isinstance(answer, RemoteCommandError) \
            and answer.exit_status == _NO_TABLE else getattr(answer, "problem", str(answer))
        through_api.setdefault(region_of[iid], []).append(iid)
        ctx.log(f"  {iid} cannot be asked ({why}): waiting until the load balancer lets it go")
    for region, ids in through_api.items():
        aws.elb.wait_drained(ctx.aws.elbv2(region), region, ctx.target_group(region), ids,
                             ceilings[region] + 30)
