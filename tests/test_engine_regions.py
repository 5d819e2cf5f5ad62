"""The release region by region: every region's steps on a thread of its own, in
order; a region that fails stops the others before their next stage."""

from __future__ import annotations

import threading

import pytest

from deploylib import plan as planning
from deploylib.engine import runner
from deploylib.errors import CloudError
from deploylib.state import DONE, FAILED, StageKey
from tests.engine import SCRIPT, make_context


def group() -> planning.Stage:
    return planning.Stage(name="regions", step="regions", kind=planning.PER_REGION,
                          members=(planning.Stage(name="t-one", step="t-one"),
                                   planning.Stage(name="t-two", step="t-two", live=True)))


@pytest.fixture
def ctx(aws_clients, tmp_path):
    return make_context(aws_clients, tmp_path)


def test_each_region_runs_the_steps_in_order_and_each_goes_live(ctx):
    runner.run_stage(ctx, group())
    for region in ctx.env.all_regions:
        mine = [c for c in SCRIPT.calls if c.endswith(f"@{region}")]
        assert mine == [f"t-one@{region}", f"t-two@{region}"]
        assert ctx.state.stages[StageKey.in_region("regions", region, "t-two")].live
    assert ctx.state.stages[StageKey("regions")].status == DONE


def test_a_region_that_fails_stops_the_others_before_their_next_stage(ctx):
    failing, *others = ctx.env.all_regions
    started = threading.Barrier(len(ctx.env.all_regions), timeout=30)

    def one(c):
        started.wait()  # every region is in its first stage
        if c.region == failing:
            raise CloudError("copy failed", resource=failing, fix="none")
        # the others are still in their first stage when the region fails
        assert c.stopping.wait(timeout=30), "the failing region never said so"

    SCRIPT.actions["t-one"] = one
    with pytest.raises(CloudError, match="copy failed"):
        runner.run_stage(ctx, group())
    assert not any(c.startswith("t-two") for c in SCRIPT.calls)
    entry = ctx.state.stages[StageKey("regions")]
    assert entry.status == FAILED and "copy failed" in entry.error
    for region in others:  # they finished the stage they were in
        assert ctx.state.is_done(StageKey.in_region("regions", region, "t-one"))
