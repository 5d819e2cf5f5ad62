"""The engine: a plan's stages run in order, hooks around each, the run's state and
timing saved after each, cleanup when the run fails, the deploy lock held around it all.

A stage of its own is run by `call`. A group stage is run by the executor its kind
names (PER_BATCH: engine.batches, PER_REGION: engine.regions), which runs `call`
for each of its members. Which stages there are, what cleans up and from where a
resume starts again are the plan's (deploylib.plan); the engine names none of them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from deploylib import catalog, lock, waits
from deploylib import plan as planning
from deploylib.context import Context
from deploylib.engine import batches, regions
from deploylib.errors import LockHeld, error_line
from deploylib.facts import HostRef
from deploylib.state import DONE, ENDED, FAILED, RUNNING, StageKey

Group = Callable[..., None]
_GROUPS: dict[str, Group] = {planning.PER_BATCH: batches.run, planning.PER_REGION: regions.run}


@contextmanager
def holding(ctx: Context, *, take: bool = True) -> Iterator[None]:
    """The run's lock around what follows: taken now (or, `take` false, renewed while
    still the run's), renewed by every stage and a heartbeat, released on the way out
    once the run has ended (kept for its next stage when not)."""
    env, state = ctx.env, ctx.state
    with lock.held(ctx.aws.dynamodb(), env.lock_table, env.name, state.run_id,
                   ttl=env.lock_ttl, ended=lambda: state.status in ENDED,
                   say=ctx.log, take=take, fence=state.facts.lock_fence) as lease:
        if lease.fence != state.facts.lock_fence:
            state.facts.lock_fence = lease.fence  # the run's later processes carry it
            state.save()
        ctx.lease = lease
        # Every write the run makes to AWS from here asserts the lock is still this take's,
        # and every wait ends once the heartbeat finds it gone.
        ctx.aws.guard = lease.renew
        waits.between_looks(lease.check)
        try:
            yield
        finally:
            waits.between_looks(None)
            ctx.aws.guard = None
            ctx.lease = None


def call(ctx: Context, stage: planning.Stage, key: StageKey) -> None:
    """Run one stage (with its hooks) unless the state says it is done already."""
    state = ctx.state
    if state.is_done(key):
        ctx.log(f"= {key} (done already)")
        return
    step = catalog.get(stage.step)
    if ctx.lease is not None:
        ctx.lease.renew()  # a run whose lock was broken and taken must not go on
    ctx.stage = stage
    ctx.mark(key, RUNNING, step=step.function)
    ctx.log(f"> {key}")
    began = time.monotonic()
    try:
        for fn in catalog.hooks("before", stage.name):
            fn(ctx)
        step.fn(ctx)
        for fn in catalog.hooks("after", stage.name):
            fn(ctx)
    except BaseException as exc:
        line = error_line(exc)
        ctx.mark(key, FAILED, error=line)
        ctx.log(f"x {key} failed after {time.monotonic() - began:.1f}s: {line}")
        raise
    finally:
        ctx.stage = None
    ctx.mark(key, DONE, live=stage.live)
    ctx.log(f"ok {key} {time.monotonic() - began:.1f}s")


def best_effort(ctx: Context, name: str, *, targets: str | None = None,
                batch: list[HostRef] | None = None) -> bool:
    """Run a recovery or cleanup step; its failure is logged and recorded, never raised
    over the failure that caused it."""
    ctx.stage = planning.Stage(name=name, step=name, targets=targets)
    ctx.batch = batch
    ctx.log(f"> {name} (after the failure)")
    try:
        catalog.get(name).fn(ctx)
        ctx.facts.cleanup[name] = "done"
        ctx.facts.cleaned_at[name] = round(time.time(), 3)
        return True
    except Exception as exc:  # noqa: BLE001 - report, keep the original error
        line = error_line(exc)
        ctx.facts.cleanup[name] = f"failed: {line}"
        ctx.log(f"x {name} failed: {line}")
        return False
    finally:
        ctx.stage = None
        ctx.batch = None
        ctx.save()


def run_stage(ctx: Context, stage: planning.Stage, region: str | None = None) -> None:
    """A stage of its own, or a group by the executor of its kind (a per-region group's
    one `region`, when given)."""
    group = _GROUPS.get(stage.kind)
    if group is None:
        call(ctx, stage, StageKey(stage.name))
    else:
        group(ctx, stage, call=call, best_effort=best_effort, region=region)


def clean_up(ctx: Context, plan: planning.Plan) -> None:
    """Remove what a failed run created and never made live; rewind the run so that a
    resume makes it again."""
    if ctx.state.is_done(plan.commit):
        # Committed: what the run made is what is live now; only its later stages
        # (retiring the replaced hosts) are left, and a resume does them.
        ctx.log("  the release is recorded as live: nothing to discard "
                f"(`invoke resume --run {ctx.state.run_id}` finishes the run)")
        return
    for name in plan.cleanup:
        ctx.facts.discarded.pop(name, None)
        if not best_effort(ctx, name):
            continue
        restart = plan.restart_after(name)
        if restart and ctx.facts.discarded.get(name):
            # Every stage from `restart` on runs again, with the group around it.
            later = plan.rerun_from(restart)
            ctx.state.rewind([k for k in ctx.state.stages if (k.group, k.stage) in later], name)


def execute(ctx: Context, plan: planning.Plan, *, phase: str | None = None,
            only: str | None = None, region: str | None = None,
            keep_on_error: bool = False) -> None:
    """Run the plan's stages in order (those of `phase`, or only the stage named `only`;
    of a per-region group, only its `region`'s lane when given), with the run's lock
    held.

    When a run fails or is interrupted, what it made and never made live is removed
    (unless `keep_on_error`) and it is marked failed. A single stage (`only`: the way
    Jenkins runs them, one process each) leaves that to the pipeline's cleanup stage.
    """
    state = ctx.state
    stages = [s for s in plan.stages if (only is None or s.name == only)
              and (phase is None or s.phase == phase)]
    if only is not None and all(state.is_done(s.name) for s in stages):
        ctx.log(f"= {only} (done already)")  # a replayed Jenkins stage: nothing to hold
        return
    # One stage of a run going on (a Jenkins stage) does not take a lock that was broken
    # since its last stage; a whole run (a deploy, a resume) takes it.
    with holding(ctx, take=only is None):
        state.status = RUNNING
        state.save()
        try:
            for stage in stages:
                run_stage(ctx, stage, region)
        except BaseException as exc:
            # The lock lost (broken, or taken since), however the failure reached here: a
            # region's or a host's LockHeld arrives inside the stage's own failure.
            lost = exc if isinstance(exc, LockHeld) else \
                ctx.lease.lost if ctx.lease is not None else None
            if only is None:
                _failed(ctx, plan, lock_lost=lost is not None, keep_on_error=keep_on_error)
            if lost is not None and lost is not exc:
                raise lost from exc  # exit 3: what stopped the run is the lock
            raise
        if all(state.is_done(s.name) for s in plan.stages):
            state.status = DONE
            state.save()


def _failed(ctx: Context, plan: planning.Plan, *, lock_lost: bool,
            keep_on_error: bool) -> None:
    """A whole run failed: mark it so, and remove what it made and never made live —
    unless it no longer holds the lock (another run may hold the environment now, and
    cleaning up under it could undo its work) or `keep_on_error`."""
    state = ctx.state
    state.status = FAILED
    if lock_lost:
        state.save()
        ctx.log(f"  the lock is another run's now: nothing is cleaned up; once that "
                f"run is done, `invoke cleanup --run {state.run_id}`")
        return
    if keep_on_error:
        state.facts.kept_on_error = True
        ctx.log("  --keep-on-error: what the run made is left as it is; "
                f"`invoke cleanup --run {state.run_id}` removes it")
    state.save()
    if not keep_on_error:
        clean_up(ctx, plan)


def discard(ctx: Context, plan: planning.Plan) -> None:
    """End a failed run (`invoke cleanup`, the pipeline's post-failure stage): remove what
    it made and never made live, and release its lock."""
    with holding(ctx):
        if ctx.state.status == DONE:
            ctx.log("  the run is done: nothing to clean up")
            return
        ctx.state.status = FAILED
        ctx.state.save()
        clean_up(ctx, plan)
