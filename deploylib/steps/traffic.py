"""Hosts taken out of their target groups: deregistered, then let go once each has
nothing in flight from the load balancer, as the host itself sees it.

An Application Load Balancer stops routing to a target the moment it is deregistered and
is done with it as soon as nothing is in flight, but DescribeTargetHealth shows it
`draining` until the deregistration delay (300 s by default) has passed. Waiting for the
API to stop listing it would cost every batch that delay for nothing; instead each host
is asked, over the run's SSH connection, until no connection from the balancer is open
and none has opened for `drain_quiet` seconds (deploylib/templates/idle.sh.j2, reading the
kernel's socket table). The delay is only the ceiling: by then the balancer has closed
whatever was left. A host that cannot be asked (unreachable) is waited for through the
API: until it is no longer listed.
"""

from __future__ import annotations

import threading

from deploylib import aws, render
from deploylib.context import Context
from deploylib.errors import HostError, RemoteCommandError
from deploylib.facts import HostRef

# idle.sh.j2's exit codes
_STILL_OPEN, _NO_TABLE = 8, 9


def take_out(ctx: Context, stage: str, by_region: dict[str, list[str]], *,
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
    through_api: dict[str, list[str]] = {}
    lock = threading.Lock()

    def one(inst: aws.ec2.Instance) -> str:
        ceiling = ceilings[inst.region]
        script = render.idle_script(app_port=env.app_port, quiet=env.drain_quiet,
                                    ceiling=ceiling)
        try:
            out = ctx.connection(inst).run_as_root(script, timeout=ceiling + 60).output
        except RemoteCommandError as exc:
            if exc.exit_status == _STILL_OPEN:
                return exc.output.strip().splitlines()[-1]
            why = "its socket table cannot be read" if exc.exit_status == _NO_TABLE \
                else exc.problem
        except HostError as exc:
            why = exc.problem
        else:
            return out.strip().splitlines()[-1] if out.strip() else "idle"
        # Whatever stops the host being asked, the load balancer's own word still holds.
        with lock:
            through_api.setdefault(inst.region, []).append(inst.instance_id)
        return f"cannot be asked ({why}): waiting until the load balancer lets it go"

    for iid, said in sorted(ctx.on_hosts(stage, one, instances).succeeded.items()):
        ctx.log(f"  {iid} {said}")
    for region, ids in through_api.items():
        aws.elb.wait_drained(ctx.aws.elbv2(region), region, ctx.target_group(region), ids,
                             ceilings[region] + 30)
