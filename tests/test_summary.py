"""The summary printed at a run's end: stage timings, time-to-live."""

from __future__ import annotations

from deploylib import summary
from deploylib.state import DONE, RunState, StageEntry, StageKey


def entry(start: float, end: float, live: bool = False) -> StageEntry:
    return StageEntry(status=DONE, started_at=start, ended_at=end, seconds=end - start,
                      live=live)


def test_time_to_live_ends_with_the_last_stage_that_made_the_release_live(tmp_path):
    state = RunState.create(tmp_path, env="lab", mode="immutable", version="1", artifact="")
    state.stages = {
        StageKey("publish-release"): entry(100.0, 101.0),
        StageKey("regions"): entry(101.0, 112.0),
        StageKey.in_region("regions", "us-east-1", "promote"): entry(103.0, 105.0, live=True),
        StageKey.in_region("regions", "eu-west-1", "promote"): entry(106.0, 110.0, live=True),
        StageKey("record"): entry(112.0, 113.0),
    }
    t = summary.timings(state)
    assert t["time_to_live"] == 10.0 and t["total"] == 13.0
    assert [s["name"] for s in t["stages"]] == ["publish-release", "regions", "record"]
    text = summary.text(state)
    assert "time to live: 10.00s   total: 13.00s" in text
    assert "    eu-west-1          promote 4.00s" in text


def test_a_rollouts_stages_are_summed_over_its_batches(tmp_path):
    state = RunState.create(tmp_path, env="lab", mode="in-place", version="1", artifact="")
    state.stages = {StageKey("rollout"): entry(0.0, 9.0, live=True),
                    StageKey.in_batch("rollout", 1, "drain"): entry(0.0, 1.0),
                    StageKey.in_batch("rollout", 2, "drain"): entry(4.0, 6.0)}
    text = summary.text(state)
    assert "    drain              x2         3.00s" in text
    assert "time to live: 9.00s" in text


def test_a_run_that_never_went_live_has_no_time_to_live(tmp_path):
    state = RunState.create(tmp_path, env="lab", mode="in-place", version="1", artifact="")
    state.stages = {StageKey("publish-release"): entry(0.0, 1.0)}
    assert summary.timings(state)["time_to_live"] is None
    assert "time to live" not in summary.text(state)
