"""The in-place rollout's policy: batch after batch, a failure budget, and when it
stops, the plan's recover step on the failed batch and its revert step, whose hosts the
same per-batch steps then switch back to the live release."""

from __future__ import annotations

import pytest

from deploylib import plan as planning
from deploylib.engine import runner
from deploylib.errors import HostError, StepFailed
from deploylib.facts import HostRef, Release, Revert
from deploylib.state import DONE, FAILED, StageKey
from tests.engine import SCRIPT, make_context

MEMBERS = ("t-drain", "t-install", "t-back")
LIVE = Release(version="1.0.0", sha256="0" * 64, bucket="artifacts",
              key="releases/lab/1.0.0.tar.gz")


def group() -> planning.Stage:
    return planning.Stage(name="rollout", step="rollout", kind=planning.PER_BATCH,
                          recover="t-recover", revert="t-revert", live=True,
                          members=tuple(planning.Stage(name=n, step=n,
                                                       targets=planning.BATCH)
                                        for n in MEMBERS))


def hosts(*ids: str) -> list[HostRef]:
    return [HostRef(region="us-east-1", instance_id=i) for i in ids]


@pytest.fixture
def ctx(aws_clients, tmp_path):
    return make_context(aws_clients, tmp_path)


def start(ctx, *batches: list[HostRef]) -> None:
    ctx.facts.batches = list(batches)
    ctx.facts.release = Release(version="2.0.0", sha256="1" * 64, bucket="artifacts",
                                key="releases/lab/2.0.0.tar.gz")


def fails_on(*ids: str):
    def install(c):
        bad = [h.instance_id for h in c.batch if h.instance_id in ids]
        if bad:
            raise StepFailed("t-install", {i: HostError("unhealthy", resource=i) for i in bad})
    return install


def test_every_batch_runs_every_step_in_order(ctx):
    start(ctx, hosts("i-00000001"), hosts("i-00000002", "i-00000003"))
    runner.run_stage(ctx, group())
    assert SCRIPT.calls == [f"{s}@i-00000001" for s in MEMBERS] + \
        [f"{s}@i-00000002,i-00000003" for s in MEMBERS]
    entry = ctx.state.stages[StageKey("rollout")]
    assert entry.status == DONE and entry.live
    assert ctx.state.is_done(StageKey.in_batch("rollout", 2, "t-back"))


def test_within_the_budget_a_failed_host_is_left_out_and_the_rollout_goes_on(aws_clients,
                                                                             tmp_path):
    ctx = make_context(aws_clients, tmp_path, max_failed_hosts=1)
    start(ctx, hosts("i-00000001", "i-00000002"), hosts("i-00000003"))
    SCRIPT.actions["t-install"] = fails_on("i-00000002")
    runner.run_stage(ctx, group())
    assert list(ctx.facts.failed_hosts) == ["i-00000002"]
    # the failed host's batch went on without it
    assert "t-back@i-00000001" in SCRIPT.calls and "t-back@i-00000003" in SCRIPT.calls
    assert not any("t-recover" in c or "t-revert" in c for c in SCRIPT.calls)


def test_past_the_budget_it_recovers_the_batch_and_switches_the_updated_hosts_back(ctx):
    start(ctx, hosts("i-00000001"), hosts("i-00000002"), hosts("i-00000003"))
    SCRIPT.actions["t-install"] = fails_on("i-00000002")

    def revert(c):
        # the hosts the rollout reached, as the revert step is given them
        assert [h.instance_id for h in c.batch] == ["i-00000001", "i-00000002"]
        c.facts.revert = Revert(release=LIVE, batches={1: hosts("i-00000001")})

    installed: list[str] = []
    SCRIPT.actions["t-revert"] = revert
    SCRIPT.actions["t-back"] = lambda c: installed.append(c.release.version)
    with pytest.raises(StepFailed):
        runner.run_stage(ctx, group())
    assert "t-recover@i-00000002" in SCRIPT.calls  # the failed batch, whole
    assert SCRIPT.calls[-3:] == ["t-drain@i-00000001", "t-install@i-00000001", "t-back@i-00000001"]
    assert installed == ["2.0.0", "1.0.0"]  # forward, then the live release back
    assert ctx.facts.rolled_back == ["i-00000001"]
    assert ctx.state.is_done(StageKey.in_batch("rollback", 1, "t-back"))
    assert ctx.state.stages[StageKey("rollout")].status == FAILED
    assert "t-drain@i-00000003" not in SCRIPT.calls  # it stopped at the failed batch
    assert ctx.installing is None  # the switch-back's release is not left in place


def test_without_rollback_on_failure_the_updated_hosts_stay(aws_clients, tmp_path):
    ctx = make_context(aws_clients, tmp_path, rollback_on_failure=False)
    start(ctx, hosts("i-00000001"), hosts("i-00000002"))
    SCRIPT.actions["t-install"] = fails_on("i-00000002")
    with pytest.raises(StepFailed):
        runner.run_stage(ctx, group())
    assert "t-recover@i-00000002" in SCRIPT.calls
    assert not any(c.startswith("t-revert") for c in SCRIPT.calls)
    assert ctx.facts.rolled_back == []


def test_a_resumed_rollout_skips_the_batches_done_and_redoes_the_failed_one_whole(ctx):
    start(ctx, hosts("i-00000001"), hosts("i-00000002"))
    SCRIPT.actions["t-install"] = fails_on("i-00000002")
    with pytest.raises(StepFailed):
        runner.run_stage(ctx, group())
    SCRIPT.actions.clear()
    SCRIPT.calls.clear()
    runner.run_stage(ctx, group())
    # batch 2's hosts were put back by the recover step: drained again before the install
    assert SCRIPT.calls == ["t-drain@i-00000002", "t-install@i-00000002", "t-back@i-00000002"]
