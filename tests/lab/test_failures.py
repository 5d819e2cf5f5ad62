"""A release that cannot start, in each procedure: the run fails with a clear message,
the live fleet keeps serving the live release, and nothing the run made is left behind."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploylib import aws
from tests.lab.checks import (
    assert_serving,
    live_hosts,
    record,
    registered,
    release_that_cannot_start,
    state_of,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def broken(tmp_path_factory) -> Path:
    return release_that_cannot_start(tmp_path_factory.mktemp("broken"))


def deploy_broken(lab, mode: str, version: str, broken: Path) -> dict:
    quick = lab.write_config(name="quick.toml", timeouts={"health": 5})
    proc = lab.cli(f"deploy --mode {mode} --version {version} --artifact {broken} "
                   f"--config {quick}", check=False)
    assert proc.returncode == 1, proc.stderr
    last = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(last) == 1 and "Fix:" in last[0]
    return state_of(lab, proc)


def run_instances(lab, run_id: str) -> list[aws.ec2.Instance]:
    clients = lab.clients()
    return [i for region in lab.env.all_regions
            for i in aws.ec2.find_tagged(clients.ec2(region), region, {aws.TAG_RUN: run_id})]


def test_rebake_light_discards_its_candidates_and_the_fleet_keeps_serving(lab, broken):
    before = record(lab)
    state = deploy_broken(lab, "rebake-light", "9.0.1-broken", broken)
    assert state["status"] == "failed"
    assert state["facts"]["cleanup"] == {"demote": "done", "discard-candidates": "done",
                                         "discard-images": "done", "restore-templates": "done"}
    assert run_instances(lab, state["run_id"]) == []
    # a resume launches new candidates: the stages that made them are pending again, in
    # every region, with the group around them
    for region in lab.env.all_regions:
        assert state["stages"][f"regions/{region}/launch-candidates"]["status"] == "pending"
    assert "failed" in {state["stages"].get(f"regions/{r}/install-release", {}).get("was")
                        for r in lab.env.all_regions}
    assert state["stages"]["regions"]["status"] == "pending"
    assert record(lab) == before
    assert_serving(lab, before["release"])


def test_in_place_puts_a_restored_host_back_and_stops(lab, broken):
    before = record(lab)
    state = deploy_broken(lab, "in-place", "9.0.2-broken", broken)
    assert state["stages"]["rollout/1/install-release"]["was"] == "failed"
    assert "rollout/2/drain" not in state["stages"]  # the rollout stopped at batch 1
    assert state["facts"]["cleanup"] == {"restore-batch": "done", "locate-live": "done",
                                        "resume-scaling": "done"}
    assert state["facts"]["rolled_back"] == []  # the failed host was the only one touched
    assert record(lab) == before
    # the failed host went back to the live release and is in the target group again
    assert_serving(lab, before["release"])


def test_immutable_discards_its_builder(lab, broken):
    before = record(lab)
    state = deploy_broken(lab, "immutable", "9.0.3-broken", broken)
    assert state["stages"]["install-release"]["was"] == "failed"
    # a builder has no previous release to go back to
    error = state["stages"]["install-release"]["error"]
    assert "exited 6" in error and "read the service's log" in error
    assert state["facts"]["cleanup"]["discard-builder"] == "done"
    assert run_instances(lab, state["run_id"]) == []
    assert state["stages"]["launch-builder"]["status"] == "pending"
    assert record(lab) == before
    assert_serving(lab, before["release"])


def test_ctrl_c_during_a_bake_leaves_nothing_behind(lab):
    """SIGINT at whatever stage the bake has reached: exit 130, and no instance of the run
    is left unless it is serving (registered in a target group)."""
    import signal
    import subprocess
    import sys

    from deploylib import waits
    from tests.conftest import REPO

    runs_before = set(Path(lab.env.state_dir).glob("*.json"))
    def as_from_a_terminal() -> None:
        # An operator's shell delivers Ctrl-C; a test worker's inherited signal state
        # (disposition, mask) must not decide whether this process hears it.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    inherited = (signal.getsignal(signal.SIGINT),
                 signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set()))
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "deploy", "--mode", "immutable",
                             "--version", "9.1.0"], cwd=REPO, env=lab.cli.env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)

    def builder_launched():
        new = set(Path(lab.env.state_dir).glob("*.json")) - runs_before
        if not new:
            return None
        state = json.loads(next(iter(new)).read_text())
        return state if state["stages"].get("launch-builder", {}).get("status") == "done" \
            else None

    state = waits.until(builder_launched, timeout=60, what="the bake to launch its builder",
                        resource="test", fix="-", first=0.02, longest=0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"(this worker's SIGINT handler, blocked: {inherited})\n{err}"
    assert "interrupted" in err and "invoke resume --run" in err
    final = json.loads((Path(lab.env.state_dir) / f"{state['run_id']}.json").read_text())
    assert final["status"] == "failed"
    assert set(final["facts"]["cleanup"]) == {"demote", "discard-builder",
                                              "discard-candidates", "discard-images"}
    clients = lab.clients()
    for region in lab.env.all_regions:
        assert aws.ec2.tagged_images(clients.ec2(region), region,
                                     {aws.TAG_RUN: state["run_id"]}) == []
    for inst in run_instances(lab, state["run_id"]):
        assert inst.instance_id in registered(lab, inst.region), inst


@pytest.mark.parametrize("pinned", [True, False])
def test_a_rollback_of_a_release_overwritten_in_the_store(lab, pinned):
    """The digest a rollback installs is the record's, not the store's: whoever may
    overwrite the object also sets its metadata. With the object's version in the record
    (a versioned bucket), the rollback fetches that version and the overwrite changes
    nothing; a record without one (a bucket without versions) meets the object replaced
    (its metadata forged to match itself) and is refused before any host is touched, in
    one line."""
    import hashlib
    import secrets

    lab.cli(f"deploy --mode in-place --version 8.8.{secrets.randbelow(10**6)}")
    live = record(lab)
    previous = live["previous"]["release"]
    assert live["version_id"] and live["previous"]["version_id"]  # the lab is versioned
    if not pinned:
        aws.ssm.write_record(lab.clients().ssm(), lab.env.record_parameter, {
            **live, "previous": {k: v for k, v in live["previous"].items()
                                 if k != "version_id"}})
    s3, bucket = lab.clients().s3(), lab.env.artifact_bucket
    key = f"releases/lab/{previous}.tar.gz"
    original = s3.get_object(Bucket=bucket, Key=key)
    body, metadata = original["Body"].read(), original["Metadata"]
    forged = b"a release someone else built"
    s3.put_object(Bucket=bucket, Key=key, Body=forged,
                  Metadata={"sha256": hashlib.sha256(forged).hexdigest()})
    try:
        before = sorted(i.instance_id for hosts in live_hosts(lab).values() for i in hosts)
        proc = lab.cli("rollback", check=False)
        if pinned:
            assert proc.returncode == 0, proc.stderr[-2000:]
            assert record(lab)["release"] == previous
            assert_serving(lab, previous)
            return
        assert proc.returncode == 2, proc.stderr
        errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and "not the one recorded live" in errors[0], proc.stderr
        assert record(lab)["release"] == live["release"]
        assert sorted(i.instance_id for hosts in live_hosts(lab).values()
                      for i in hosts) == before
        assert_serving(lab, live["release"])
    finally:
        s3.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)
