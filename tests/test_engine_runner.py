"""The engine: stages in order, cleanup on failure, the rewind a resume starts from,
and the deploy lock held around it all, released however the run ends."""

from __future__ import annotations

import pytest

from deploylib import lock
from deploylib import plan as planning
from deploylib.engine import runner
from deploylib.errors import CloudError, LockHeld
from deploylib.state import DONE, FAILED, PENDING, RUNNING, StageKey
from tests.engine import SCRIPT, make_context


def stages(*names: str) -> tuple[planning.Stage, ...]:
    return tuple(planning.Stage(name=n, step=n) for n in names)


def a_plan(*names: str, cleanup: tuple[str, ...] = ("t-undo-a", "t-undo-b"),
           commit: str = "t-commit", restart: tuple = ()) -> planning.Plan:
    return planning.Plan(mode="test", stages=stages(*names), cleanup=cleanup, commit=commit,
                         restart_from=restart)


@pytest.fixture
def ctx(aws_clients, tmp_path):
    return make_context(aws_clients, tmp_path)


def holder(ctx):
    held = lock.read(ctx.aws.dynamodb(), ctx.env.lock_table, "lab")
    return held["run_id"] if held else None


def fail(ctx):
    raise CloudError("it broke", resource="test", fix="none")


def test_a_run_goes_in_order_ends_done_and_frees_the_lock(ctx):
    runner.execute(ctx, a_plan("t-make", "t-check", "t-commit"))
    assert SCRIPT.calls == ["t-make", "t-check", "t-commit"]
    assert ctx.state.status == DONE and holder(ctx) is None
    assert [ctx.state.stages[StageKey(n)].step for n in ("t-make", "t-check")] == [
        "tests.engine:t_make", "tests.engine:t_check"]


def test_a_failed_run_is_cleaned_up_in_the_plans_order_and_frees_the_lock(ctx):
    SCRIPT.actions["t-fail"] = fail
    with pytest.raises(CloudError, match="it broke"):
        runner.execute(ctx, a_plan("t-make", "t-fail", "t-commit"))
    assert SCRIPT.calls == ["t-make", "t-fail", "t-undo-a", "t-undo-b"]
    assert ctx.facts.cleanup == {"t-undo-a": "done", "t-undo-b": "done"}
    assert ctx.state.status == FAILED and holder(ctx) is None
    assert ctx.state.stages[StageKey("t-fail")].error.startswith("test: it broke")


def test_a_cleanup_step_that_fails_is_recorded_and_the_run_keeps_its_own_error(ctx):
    SCRIPT.actions["t-fail"] = fail
    SCRIPT.actions["t-undo-a"] = lambda c: (_ for _ in ()).throw(CloudError("undo broke"))
    with pytest.raises(CloudError, match="it broke"):
        runner.execute(ctx, a_plan("t-make", "t-fail"))
    assert ctx.facts.cleanup["t-undo-a"] == "failed: undo broke."
    assert ctx.facts.cleanup["t-undo-b"] == "done"  # the next one still runs
    assert holder(ctx) is None


def test_after_the_commit_stage_nothing_is_discarded(ctx):
    SCRIPT.actions["t-fail"] = fail
    with pytest.raises(CloudError):
        runner.execute(ctx, a_plan("t-make", "t-commit", "t-fail"))
    assert SCRIPT.calls == ["t-make", "t-commit", "t-fail"]
    assert ctx.facts.cleanup == {} and holder(ctx) is None


def test_a_discard_rewinds_the_run_and_a_resume_succeeds_from_the_restart_stage(ctx):
    def discard(c):
        c.facts.discarded.setdefault("t-undo-a", []).append("i-made")

    SCRIPT.actions.update({"t-fail": fail, "t-undo-a": discard})
    plan = a_plan("t-one", "t-make", "t-fail", "t-commit", cleanup=("t-undo-a",),
                  restart=(("t-undo-a", "t-make"),))
    with pytest.raises(CloudError):
        runner.execute(ctx, plan)
    entries = ctx.state.stages
    assert entries[StageKey("t-one")].status == DONE  # before the restart stage: kept
    assert (entries[StageKey("t-make")].status, entries[StageKey("t-make")].was) == (PENDING,
                                                                                      DONE)
    assert entries[StageKey("t-fail")].was == FAILED
    del SCRIPT.actions["t-fail"]
    SCRIPT.calls.clear()
    runner.execute(ctx, plan)  # the resume
    assert SCRIPT.calls == ["t-make", "t-fail", "t-commit"]
    assert ctx.state.status == DONE and holder(ctx) is None


def test_keep_on_error_leaves_everything_and_frees_the_lock(ctx):
    SCRIPT.actions["t-fail"] = fail
    with pytest.raises(CloudError):
        runner.execute(ctx, a_plan("t-make", "t-fail"), keep_on_error=True)
    assert SCRIPT.calls == ["t-make", "t-fail"] and ctx.facts.kept_on_error
    assert holder(ctx) is None


def test_ctrl_c_cleans_up_too(ctx):
    def interrupt(c):
        raise KeyboardInterrupt

    SCRIPT.actions["t-fail"] = interrupt
    with pytest.raises(KeyboardInterrupt):
        runner.execute(ctx, a_plan("t-make", "t-fail"))
    assert ctx.facts.cleanup == {"t-undo-a": "done", "t-undo-b": "done"}
    assert holder(ctx) is None


def test_one_stage_at_a_time_the_lock_stays_the_runs_until_it_ends(ctx):
    plan = a_plan("t-make", "t-fail", "t-commit")
    # `invoke start` took it; each stage (its own process in Jenkins) holds it on
    lock.acquire(ctx.aws.dynamodb(), ctx.env.lock_table, "lab", ctx.state.run_id, ttl=600)
    runner.execute(ctx, plan, only="t-make")
    assert holder(ctx) == ctx.state.run_id and ctx.state.status == RUNNING
    SCRIPT.actions["t-fail"] = fail
    with pytest.raises(CloudError):
        runner.execute(ctx, plan, only="t-fail")
    # the pipeline's cleanup stage does that, under the same lock
    assert SCRIPT.calls == ["t-make", "t-fail"] and holder(ctx) == ctx.state.run_id
    runner.discard(ctx, plan)
    assert ctx.facts.cleanup == {"t-undo-a": "done", "t-undo-b": "done"}
    assert ctx.state.status == FAILED and holder(ctx) is None


def test_a_stage_of_a_run_whose_lock_was_broken_between_stages_does_not_start(ctx):
    ddb = ctx.aws.dynamodb()
    lock.acquire(ddb, ctx.env.lock_table, "lab", ctx.state.run_id, ttl=600)
    runner.execute(ctx, a_plan("t-make", "t-check"), only="t-make")
    lock.break_lock(ddb, ctx.env.lock_table, "lab")
    with pytest.raises(LockHeld, match="was broken"):
        runner.execute(ctx, a_plan("t-make", "t-check"), only="t-check")
    assert SCRIPT.calls == ["t-make"] and holder(ctx) is None


def test_a_run_whose_lock_was_taken_stops_and_cleans_nothing_up_under_the_other(ctx):
    def taken(c):
        ddb = c.aws.dynamodb()
        lock.break_lock(ddb, c.env.lock_table, "lab")
        lock.acquire(ddb, c.env.lock_table, "lab", "20261201T000000-0ther0", ttl=600)

    SCRIPT.actions["t-make"] = taken
    with pytest.raises(LockHeld):
        runner.execute(ctx, a_plan("t-make", "t-check"))
    assert SCRIPT.calls == ["t-make"] and ctx.facts.cleanup == {}
    assert holder(ctx) == "20261201T000000-0ther0"  # theirs, untouched


def test_a_lock_lost_inside_a_stages_own_failure_stops_the_run_with_exit_3_uncleaned(ctx):
    """A write in a region or on a host meets the broken lock inside the stage, whose own
    failure (StepFailed naming the regions) is what reaches the engine: the run still
    stops as one whose lock is gone — LockHeld, nothing cleaned up without the lock."""
    from deploylib.errors import StepFailed

    def broken_then_written(c):
        lock.break_lock(c.aws.dynamodb(), c.env.lock_table, "lab")
        try:
            c.lease.renew()  # the write a region's thread would make
        except LockHeld as exc:
            raise StepFailed("t-make", {"us-east-1": exc}, kind="region") from None

    SCRIPT.actions["t-make"] = broken_then_written
    with pytest.raises(LockHeld, match="was broken") as stopped:
        runner.execute(ctx, a_plan("t-make", "t-check"))
    assert stopped.value.exit_code == 3
    assert isinstance(stopped.value.__cause__, StepFailed)  # the stage's own, kept
    assert SCRIPT.calls == ["t-make"] and ctx.facts.cleanup == {}
    assert ctx.state.status == FAILED and holder(ctx) is None


def test_a_jenkins_stage_that_loses_the_lock_inside_its_failure_exits_3_too(ctx):
    from deploylib.errors import StepFailed

    def broken_then_written(c):
        lock.break_lock(c.aws.dynamodb(), c.env.lock_table, "lab")
        try:
            c.lease.renew()
        except LockHeld as exc:
            raise StepFailed("t-make", {"i-0123456789abcdef0": exc}) from None

    lock.acquire(ctx.aws.dynamodb(), ctx.env.lock_table, "lab", ctx.state.run_id, ttl=600)
    SCRIPT.actions["t-make"] = broken_then_written
    with pytest.raises(LockHeld, match="was broken"):
        runner.execute(ctx, a_plan("t-make", "t-check"), only="t-make")


def test_a_stage_done_already_is_not_run_again(ctx):
    plan = a_plan("t-make", "t-check")
    runner.execute(ctx, plan)
    SCRIPT.calls.clear()
    runner.execute(ctx, plan)
    assert SCRIPT.calls == []
