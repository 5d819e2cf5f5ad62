"""Verification windows on the lab: a release that hurts users is put back by each
procedure, judged on what the lab's balancers publish to its CloudWatch (as ALB does)
and on a team's alarm, with users' requests going on through every balancer, non-sticky
(each request may reach any host)."""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from deploylib import aws, waits
from tests.conftest import REPO
from tests.lab.checks import assert_nothing_lost, assert_serving, record, state_of, target_group
from tests.lab.traffic import Stream

pytestmark = pytest.mark.lab

# The lab's metrics: every second, a second late (deploylib/lab/environment.toml).
LAB_METRICS = {"period": 1, "delay": 1, "min_requests": 20}


def app_that(tmp_path: Path, **misbehave: float) -> Path:
    """The sample app, made to misbehave as examples/app/app.py reads it."""
    app = tmp_path / "app"
    shutil.copytree(REPO / "examples/app", app)
    (app / "misbehave.json").write_text(json.dumps(misbehave))
    return app


def watched(lab, tmp_path: Path, app: Path | None = None, **verify: object) -> Path:
    """A config with verification windows, beside the lab's own (its runs where the
    lab's checks look). No team smoke tests: they ask for the page, and a release failing
    a fifth of its requests may fail them before any window (as it should)."""
    return lab.write_config(name=f"{tmp_path.name}.toml",
                            app_source=str(app or REPO / "examples/app"), smoke_tests="",
                            verify={**LAB_METRICS, **verify})


def before_the_run(lab, seconds: float) -> None:
    """Users' requests in the lab's CloudWatch for `seconds` (what the judge compares a
    window with), in every region, none of them failed: an earlier test's bad release
    is out of what a window is compared with."""
    clients = lab.clients()

    def counted() -> bool:
        import time

        now = int(time.time()) - 1  # the period now closing is not in yet
        for region in lab.env.all_regions:
            src = aws.cloudwatch.source(clients.elbv2(region), region,
                                        target_group(lab, region))
            seen = aws.cloudwatch.traffic(clients.cloudwatch(region), src, now - seconds, now,
                                          "p90")
            if seen.requests < LAB_METRICS["min_requests"] or seen.errors:
                return False
        return True

    waits.until(counted, timeout=60, what="users' requests in CloudWatch",
                resource="the lab's balancers", fix="check the lab's metrics (lab.monitoring)")


def ended(stage: dict) -> float:
    return stage["started_at"] + stage["seconds"]


def test_a_release_failing_a_fifth_of_requests_fails_the_canary_window_and_is_switched_back(
        lab, tmp_path):
    before = record(lab)
    config = watched(lab, tmp_path, app_that(tmp_path, fail=0.2), canary_for=8, wave_for=2)
    with Stream(lab, sticky=False, path="/") as users:
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


def test_a_release_failing_requests_by_rebake_light_fails_its_window_and_nothing_is_left(
        lab, tmp_path):
    before = record(lab)["release"]
    config = watched(lab, tmp_path, app_that(tmp_path, fail=0.2), live_for=6)
    with Stream(lab, sticky=False, path="/") as users:
        before_the_run(lab, 8)
        proc = lab.cli(f"deploy --mode rebake-light --version 1.0.21 --config {config}",
                       check=False)
        # the previous hosts serve again: what users get from here on
        after = len(users.seen[lab.env.primary_region])
        waits.until(lambda: len(users.seen[lab.env.primary_region]) > after + 20, timeout=30,
                    what="more requests", resource="the lab's balancer", fix="-")
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "verify window failed" in proc.stderr
    state = state_of(lab, proc)
    assert [(w["stage"], w["passed"]) for w in state["facts"]["windows"]] == [("verify", False)]
    assert "create-image" not in state["stages"]  # nothing imaged from a failed release
    assert_nothing_lost(lab, state, before)
    assert all(status == 200 and version == before
               for status, version in users.seen[lab.env.primary_region][after:])


def test_a_slow_release_by_immutable_fails_its_window_on_latency(lab, tmp_path):
    before = record(lab)["release"]
    config = watched(lab, tmp_path, app_that(tmp_path, slower=3), live_for=4,
                     min_latency_rise=0.01)
    with Stream(lab, sticky=False, path="/"):
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
        with Stream(lab, sticky=False, path="/"):
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
