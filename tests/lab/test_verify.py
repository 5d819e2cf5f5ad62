"""Verification windows on the lab: a release that hurts users is put back by each
procedure, judged on what the lab's balancers publish to its CloudWatch (as ALB does)
and on a team's alarm, with users' requests going on through every balancer, non-sticky
(each request may reach any host)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from deploylib import waits
from tests.lab.checks import assert_nothing_lost, assert_serving, record, state_of
from tests.lab.windows import app_that, before_the_run, watched
from tests.lab.windows import users as users_of

pytestmark = pytest.mark.lab

def ended(stage: dict) -> float:
    return stage["started_at"] + stage["seconds"]


def test_a_release_failing_a_fifth_of_requests_fails_the_canary_window_and_is_switched_back(
        lab, tmp_path):
    before = record(lab)
    config = watched(lab, tmp_path, app_that(tmp_path, fail=0.2), canary_for=10, wave_for=2)
    with users_of(lab) as users:
        before_the_run(lab, 10)
        proc = lab.cli(f"deploy --mode in-place --version 1.0.20 --config {config}",
                       check=False)
    assert proc.returncode == 4, proc.stderr[-2000:]
    error = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][0]
    assert "rollout/1/verify window failed" in error and "5xx" in error, error
    state = state_of(lab, proc)
    facts, stages = state["facts"], state["stages"]
    canary = {h["instance_id"] for h in facts["batches"][0]}
    # No wave started; every updated host (the canary) switched back; nothing recorded.
    assert not [k for k in stages if k.startswith("rollout/2/")]
    assert set(facts["rolled_back"]) == canary
    assert [(w["stage"], w["passed"]) for w in facts["windows"]] == [("rollout/1/verify", False)]
    assert_serving(lab, before["release"])
    assert record(lab)["release"] == before["release"]
    # The failures users saw came only from the canary, from when it took traffic until
    # it was taken out to switch back.
    assert users.failed, "the bad release failed no request"
    went_in = stages["rollout/1/put-back"]["started_at"]
    came_out = ended(stages["rollback/1/drain"])
    assert {target for _, target, _ in users.failed} <= canary
    assert all(went_in <= when <= came_out for _, _, when in users.failed)


@pytest.mark.parametrize(("mode", "version"), [("rebake-light", "1.0.21"),
                                             ("immutable", "1.0.24")])
def test_a_release_failing_requests_by_image_fails_its_window_and_nothing_is_left(
        lab, tmp_path, mode, version):
    before = record(lab)["release"]
    config = watched(lab, tmp_path, app_that(tmp_path, fail=0.2), live_for=6)
    with users_of(lab) as users:
        before_the_run(lab, 8)
        proc = lab.cli(f"deploy --mode {mode} --version {version} --config {config}",
                       check=False)
        # the previous hosts serve again: what users get from here on
        after = len(users.seen[lab.env.primary_region])
        waits.until(lambda: len(users.seen[lab.env.primary_region]) > after + 20, timeout=30,
                    what="more requests", resource="the lab's balancer", fix="-")
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "verify window failed" in proc.stderr
    state = state_of(lab, proc)
    assert [(w["stage"], w["passed"]) for w in state["facts"]["windows"]] == [("verify", False)]
    if mode == "rebake-light":  # nothing imaged from a failed release
        assert "create-image" not in state["stages"]
    assert_nothing_lost(lab, state, before)
    assert all(status == 200 and version == before
               for status, version in users.seen[lab.env.primary_region][after:])


def test_a_slow_release_by_immutable_fails_its_window_on_latency(lab, tmp_path):
    before = record(lab)["release"]
    config = watched(lab, tmp_path, app_that(tmp_path, slower=3), live_for=4,
                     min_latency_rise=0.01, max_latency_ratio=1.5)
    with users_of(lab):
        before_the_run(lab, 6)
        proc = lab.cli(f"deploy --mode immutable --version 1.0.22 --config {config}",
                       check=False)
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "p90 latency" in proc.stderr
    assert_nothing_lost(lab, state_of(lab, proc), before)


def test_a_team_alarm_in_alarm_during_a_wave_stops_the_rollout_there_and_switches_back(
        lab, tmp_path):
    before = record(lab)["release"]
    region = lab.env.primary_region
    cloudwatch = lab.clients().cloudwatch(region)
    cloudwatch.put_metric_alarm(
        AlarmName="lab-team-checkout", Namespace="Team/Shop", MetricName="CheckoutErrors",
        Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=5,
        ComparisonOperator="GreaterThanThreshold")
    config = watched(lab, tmp_path, canary_for=2, wave_for=4, alarms=["lab-team-checkout"])
    runs = Path(lab.cfg.environment("lab").state_dir)
    fired = threading.Event()

    def fire_in_wave_two() -> None:
        # As a team's own alarm would, once the second wave is taking traffic.
        def in_wave_two() -> bool:
            return any('"rollout/2/verify"' in p.read_text() for p in runs.glob("*.json")
                       if p.stat().st_mtime > started)
        waits.until(in_wave_two, timeout=120, what="wave 2's window", resource="the run",
                    fix="-")
        cloudwatch.set_alarm_state(AlarmName="lab-team-checkout", StateValue="ALARM",
                                   StateReason="checkout errors above 5 a minute")
        fired.set()

    import time

    started = time.time()
    try:
        with users_of(lab):
            watcher = threading.Thread(target=fire_in_wave_two, daemon=True)
            watcher.start()
            proc = lab.cli(f"deploy --mode in-place --version 1.0.23 --config {config}",
                           check=False)
            watcher.join(timeout=10)
    finally:
        cloudwatch.delete_alarms(AlarmNames=["lab-team-checkout"])
    assert fired.is_set()
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "alarm lab-team-checkout" in proc.stderr and "checkout errors" in proc.stderr
    state = state_of(lab, proc)
    windows = [(w["stage"], w["passed"]) for w in state["facts"]["windows"]]
    assert windows == [("rollout/1/verify", True), ("rollout/2/verify", False)]
    assert set(state["facts"]["rolled_back"]) == {
        h["instance_id"] for b in state["facts"]["batches"] for h in b}
    assert_serving(lab, before)
    status = lab.cli("status").stdout
    assert "window rollout/2/verify" in status and "FAILED: alarm lab-team-checkout" in status
