"""The in-place rollout: a PER_BATCH group's steps, batch after batch, and what happens
when a batch fails.

A batch's last step may be its verification window (deploylib.steps.verify): a window
that fails stops the rollout as a failed step does, and always switches back.

A host that fails is restored to the live release by the install script and left out
of its target group; up to `max_failed_hosts` such hosts the rollout goes on without
them. Past that it stops: the group's `recover` step puts the failed batch's hosts that
serve the live release back, and (with `rollback_on_failure`) its `revert` step chooses
the hosts already updated, which the same per-batch steps then switch back to the live
release. The plan names both steps; this module only runs them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from deploylib.context import Context, by_region
from deploylib.errors import StateError, StepFailed, WindowFailed, error_line
from deploylib.facts import HostRef
from deploylib.plan import BATCH, Stage
from deploylib.state import DONE, FAILED, RUNNING, StageKey

# The lane the switch-back of updated hosts runs in: `rollback/<batch>/<stage>`.
SWITCH_BACK = "rollback"

Call = Callable[[Context, Stage, StageKey], None]


def _done(ctx: Context, group: Stage, n: int) -> bool:
    return all(ctx.state.is_done(StageKey.in_batch(group.name, n, m.name))
               for m in group.members)


def run(ctx: Context, group: Stage, *, call: Call, best_effort: Callable[..., bool],
        **_: Any) -> None:
    state = ctx.state
    key = StageKey(group.name)
    if state.is_done(key):
        ctx.log(f"= {group.name} (done already)")
        return
    batches = ctx.facts.batches
    if batches is None:
        raise StateError("the run has not selected its hosts", resource=state.run_id,
                         fix="run the select-hosts stage first")
    failed = ctx.facts.failed_hosts
    ctx.mark(key, RUNNING, step=f"{len(batches)} batch(es)")
    ctx.reporter.batch(group.name, sum(_done(ctx, group, n) for n in
                                       range(1, len(batches) + 1)), len(batches))
    began = time.monotonic()
    n, whole = 0, list[HostRef]()
    try:
        for n, whole in enumerate(batches, start=1):
            batch = [h for h in whole if h.instance_id not in failed]
            if batch and not _done(ctx, group, n):
                ctx.log(f"> batch {n}/{len(batches)}: " + "; ".join(
                    f"{region} {' '.join(ids)}" for region, ids in by_region(batch).items()))
            for stage in group.members:
                if not batch:
                    break
                batch = _tolerating(ctx, stage, StageKey.in_batch(group.name, n, stage.name),
                                    batch, call)
            ctx.reporter.batch(group.name, n, len(batches))
    except BaseException as exc:
        ctx.mark(key, FAILED, error=f"batch {n} failed")
        if group.recover:
            best_effort(ctx, group.recover, targets=BATCH, batch=list(whole))
            # Its hosts are back as they were (in, or left out): a resume redoes the
            # failed batch whole, drain first.
            state.rewind([StageKey.in_batch(group.name, n, m.name) for m in group.members],
                         group.recover)
        # A failed verification window switches back whatever rollback_on_failure says:
        # the release served, and users were hurt by it.
        if group.revert and (ctx.env.rollback_on_failure or isinstance(exc, WindowFailed)):
            _switch_back(ctx, group, [h for b in batches[:n] for h in b], call, best_effort)
        raise
    finally:
        ctx.batch = None
    ctx.mark(key, DONE, live=group.live)
    if failed:
        ctx.log(f"  {len(failed)} host(s) left out of their target group, on the live "
                f"release: {', '.join(sorted(failed))}")
    ctx.log(f"ok {group.name} {time.monotonic() - began:.1f}s")


def _tolerating(ctx: Context, stage: Stage, key: StageKey, batch: list[HostRef],
                call: Call) -> list[HostRef]:
    """Run a per-batch stage; drop hosts that fail while the failure budget allows."""
    failed = ctx.facts.failed_hosts
    while True:
        ctx.batch = batch
        try:
            call(ctx, stage, key)
            return batch
        except StepFailed as exc:
            if len(failed) + len(exc.failures) > ctx.env.max_failed_hosts:
                raise
            for iid, err in exc.failures.items():
                failed[iid] = error_line(err)
            ctx.log(f"  {len(exc.failures)} host(s) left out, {len(failed)} of "
                    f"max_failed_hosts={ctx.env.max_failed_hosts}: {', '.join(exc.failures)}")
            ctx.save()
            batch = [h for h in batch if h.instance_id not in failed]
            if not batch:
                return batch


def _switch_back(ctx: Context, group: Stage, reached: list[HostRef], call: Call,
                 best_effort: Callable[..., bool]) -> None:
    """Switch the hosts a stopped rollout already updated back to the live release, with
    the group's own per-batch steps (drain, install, health-check, put back)."""
    assert group.revert is not None
    if not best_effort(ctx, group.revert, targets=BATCH, batch=reached):
        return
    revert = ctx.facts.revert
    if revert is None or not revert.batches:
        return
    state = ctx.state
    ctx.installing = revert.release
    try:
        for n, batch in sorted(revert.batches.items()):
            # A switch-back is redone whole: an earlier attempt's entries are history.
            for old in [k for k in state.members(SWITCH_BACK) if k.batch == n]:
                del state.stages[old]
            ctx.log(f"> switching batch {n} back to {revert.release.version}")
            ctx.batch = batch
            try:
                for stage in group.members:
                    call(ctx, stage, StageKey.in_batch(SWITCH_BACK, n, stage.name))
            except Exception as exc:  # noqa: BLE001 - report, keep the original error
                ctx.log(f"x switching batch {n} back failed: {error_line(exc)}")
                continue
            ctx.facts.rolled_back.extend(h.instance_id for h in batch)
            ctx.save()
    finally:
        ctx.installing = None
        ctx.batch = None
