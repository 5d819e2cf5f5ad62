"""The release region by region: a PER_REGION group's steps run in every region at once,
each region's in order on its own thread, so a region goes on as soon as its own image
is there (the primary region is tested and promoted while copies are still on their way).

When a region fails, the others stop before their next stage (a stage under way
finishes); regions promoted by then are put back by the run's cleanup (`demote`).

One region's lane can also run alone (`invoke step regions --region R`: the pipeline's
parallel branches, one per region, each on an agent of its own): its stages only, in a
process of its own under the run's lock take, its state merged into the store's copy
(deploylib.runstore). Such a lane learns that another failed from the store, before each
of its stages. The group's own entry is left to the step without a region, which the
pipeline runs once every lane has ended: it finds every member done, and ends the group.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as all_done
from typing import Any

from deploylib.context import Context
from deploylib.errors import StateError, error_line
from deploylib.plan import Stage
from deploylib.state import DONE, FAILED, RUNNING, StageKey


class Stopped(StateError):
    """A region stopped because another one failed."""


def run(ctx: Context, group: Stage, *, call: Callable[[Context, Stage, StageKey], None],
        region: str | None = None, **_: Any) -> None:
    if region is not None:
        lane(ctx, group, region, call=call)
        return
    state = ctx.state
    key = StageKey(group.name)
    if state.is_done(key):
        ctx.log(f"= {group.name} (done already)")
        return
    regions = ctx.env.all_regions
    stop = ctx.stopping
    stop.clear()
    ctx.mark(key, RUNNING, step=f"{len(regions)} region(s)")
    began = time.monotonic()

    def chain(region: str) -> None:
        rctx = ctx.in_region(region)
        for stage in group.members:
            if stop.is_set():
                raise Stopped(f"stopped before {stage.name}: another region failed",
                              resource=region, fix="see the region that failed")
            try:
                call(rctx, stage, StageKey.in_region(group.name, region, stage.name))
            except BaseException:
                stop.set()
                raise

    with ThreadPoolExecutor(max_workers=len(regions)) as pool:
        futures = {r: pool.submit(chain, r) for r in regions}
        try:
            all_done(futures.values())
        except BaseException:
            # Ctrl-C: the regions stop at their next stage, then the run's cleanup runs.
            stop.set()
            ctx.mark(key, FAILED, error="interrupted")
            raise
    failures = {r: f.exception() for r, f in futures.items() if f.exception() is not None}
    if failures:
        # A region that failed says why (its stage's own error, exit code included); the
        # others only that they stopped.
        failed = [e for e in failures.values() if not isinstance(e, Stopped)]
        err = (failed or list(failures.values()))[0]
        assert err is not None
        ctx.mark(key, FAILED, error=f"{', '.join(failures)}: {error_line(err)}")
        raise err
    ctx.mark(key, DONE, live=group.live)
    ctx.log(f"ok {group.name} {time.monotonic() - began:.1f}s")


def lane(ctx: Context, group: Stage, region: str, *,
         call: Callable[[Context, Stage, StageKey], None]) -> None:
    """One region's stages, alone in this process (another runs each other region; the
    region is one of the environment's, as `invoke step` checked)."""
    rctx = ctx.in_region(region)
    for stage in group.members:
        key = StageKey.in_region(group.name, region, stage.name)
        if not ctx.state.is_done(key):
            failed = _failed_elsewhere(ctx, group, region)
            if failed:
                raise Stopped(f"stopped before {stage.name}: {failed} failed",
                              resource=region, fix=f"see the lane of {failed}")
        call(rctx, stage, key)


def _failed_elsewhere(ctx: Context, group: Stage, region: str) -> str | None:
    """Another lane of the group that failed, as the store has it now."""
    stored = ctx.state.stored()
    for key, entry in (stored.members(group.name) if stored else {}).items():
        if key.region != region and entry.status == FAILED:
            return key.region
    return None
