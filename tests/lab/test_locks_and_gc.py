"""One deploy per environment at a time, and what crashed runs leave behind: taken by
gc, which never touches what is live, a rollback target, the bake cache, or another
environment's resources."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from deploylib import aws, lock, waits
from tests.conftest import REPO, Cli
from tests.lab.checks import (
    assert_serving,
    clear_faults,
    ended,
    leftovers,
    live_hosts,
    record,
    set_faults,
    start_deploy,
    state_of,
    wait_for_stage,
)

pytestmark = pytest.mark.lab


def test_two_concurrent_deploys_one_is_refused_naming_the_holder(lab):
    before = record(lab)["release"]
    procs = [subprocess.Popen([sys.executable, "-m", "invoke", "hotfix", "--version", v],
                              cwd=REPO, env=lab.cli.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for v in ("6.0.1", "6.0.2")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results
    refused = next(err for code, err in results if code == 3).strip()
    assert "\n" not in refused and "is locked by run" in refused and "Fix:" in refused
    winner = "6.0.1" if results[0][0] == 0 else "6.0.2"
    assert record(lab)["release"] == winner != before
    assert_serving(lab, winner)


def test_a_stale_lock_of_a_crashed_run_is_taken_over(lab):
    ddb = lab.clients().dynamodb()
    # a run that crashed an hour after taking the lock, which expired since
    lock.acquire(ddb, lab.env.lock_table, "lab", "20261127T000000-dead00", ttl=60,
                 clock=lambda: time.time() - 3600)
    status = lab.cli("lock.status").stdout
    assert "20261127T000000-dead00" in status and "stale" in status
    lab.cli("hotfix --version 6.1.5")
    assert_serving(lab, "6.1.5")


def test_a_live_lock_of_a_dead_run_is_broken_by_the_operator(lab):
    ddb = lab.clients().dynamodb()
    lock.acquire(ddb, lab.env.lock_table, "lab", "20261127T000000-dead01", ttl=3600)
    proc = lab.cli("hotfix --version 6.2.0", check=False)
    assert proc.returncode == 3 and "20261127T000000-dead01" in proc.stderr
    assert "lock of run 20261127T000000-dead01" in lab.cli("lock.break --env lab").stdout
    assert lock.read(ddb, lab.env.lock_table, "lab") is None
    lab.cli("hotfix --version 6.2.0")
    assert_serving(lab, "6.2.0")


def test_a_run_waiting_longer_than_lock_ttl_keeps_its_lock_until_it_is_broken(lab):
    """The first run is held in its image wait (the image it makes kept pending)
    longer than `lock_ttl`: its heartbeat keeps the lock, so a second deploy is refused
    within the TTL and past it (exit 3). Broken by the operator, the lock stops the first
    run — in its wait, before its next write: no candidate is launched, nothing is
    cleaned up without the lock, and a cleanup under the lock afterwards leaves nothing."""
    ttl = 30
    short = Cli(config=lab.write_config(name="short-ttl.toml",
                                        lock_ttl=ttl), lab_dir=lab.cli.lab_dir)
    before = record(lab)
    set_faults(lab, *({"action": "DescribeImages", "region": r, "image_state": "pending"}
                      for r in lab.env.all_regions))
    first = start_deploy(lab, "--mode", "immutable", "--version", "7.0.0", cli=short)
    waiting = wait_for_stage(lab, first, "create-image", "running")
    run_id = waiting["run_id"]
    ddb, table = lab.clients().dynamodb(), lab.env.lock_table
    taken = lock.read(ddb, table, "lab")
    assert taken["run_id"] == run_id

    def refused() -> None:
        second = short("hotfix --version 7.0.1", check=False)
        assert second.returncode == 3, second.stderr[-2000:]
        assert f"is locked by run {run_id}" in second.stderr

    refused()  # within the TTL
    # Past the TTL the lease taken first would have ended: the heartbeat has renewed it.
    past = taken["acquired_at"] + ttl + 5
    held = waits.until(lambda: time.time() > past and lock.read(ddb, table, "lab"),
                       timeout=ttl + 30, first=1, what="the lock held past its TTL",
                       resource=table, fix="read the first run's stderr")
    assert (held["run_id"], held["fence"], held["stale"]) == (run_id, taken["fence"], False)
    assert held["expires_at"] > taken["acquired_at"] + ttl  # the heartbeat renewed it
    refused()  # and past it
    assert first.poll() is None
    assert "lock of run " + run_id in short("lock.break --env lab").stdout
    # The image is still pending: the run's heartbeat finds the lock gone and its wait
    # ends there, rather than when the image lands.
    done = ended(first)
    assert done.returncode == 3, done.stderr[-2000:]
    assert "lock on lab was broken" in done.stderr
    assert "nothing is cleaned up" in done.stderr
    clear_faults(lab)
    state = state_of(lab, run_id)
    assert state["status"] == "failed" and state["facts"]["candidates"] == {}
    assert not [k for k in state["stages"] if k.endswith("launch-candidates")]
    assert record(lab) == before and lock.read(ddb, table, "lab") is None
    cleaned = short(f"cleanup --run {run_id}")
    assert leftovers(lab, run_id) == [], cleaned.stderr + cleaned.stdout + done.stderr
    assert_serving(lab, before["release"])


def orphan(lab, run_id: str, env: str = "lab", tags: list | None = None) -> str:
    """An instance a crashed run of `env` left behind, in the primary region (or, with
    `tags`, any instance tagged so)."""
    clients = lab.clients()
    region = lab.env.primary_region
    ec2 = clients.ec2(region)
    tags = tags or aws.tags(run_id, env, "0.0.1", "immutable", "candidate")
    found = aws.ec2.describe_subnet(ec2, lab.env.subnet, region)
    subnet = found["SubnetId"]
    group = aws.ec2.resolve_security_group(ec2, lab.env.security_group, region, found["VpcId"])
    return aws.ec2.launch(ec2, region=region, image_id=record(lab)["images"][region], count=1,
                          instance_type="t3.micro", subnet_id=subnet,
                          security_group_ids=[group], tag_list=tags,
                          client_token=f"crash-{run_id}-{env}")[0]


def test_gc_removes_a_crashed_runs_orphans_and_nothing_live(lab):
    clients = lab.clients()
    region = lab.env.primary_region
    ec2 = clients.ec2(region)
    live_before = {r: sorted(i.instance_id for i in v) for r, v in live_hosts(lab).items()}
    left = orphan(lab, "20261120T000000-c0ffee")
    dry = json.loads(lab.cli("gc --older-than 0 --dry-run --json").stdout)
    assert left in [i["id"] for i in dry["would_remove"]]
    live_images = set(record(lab)["images"].values())
    assert not live_images & {i["id"] for i in dry["would_remove"]}
    assert aws.ec2.find_tagged(ec2, region, {aws.TAG_RUN: "20261120T000000-c0ffee"})  # dry
    out = json.loads(lab.cli("gc --older-than 0 --json").stdout)
    assert {"kind": "instance", "region": region, "id": left, "run": "20261120T000000-c0ffee",
            "result": "removed"} in out["removed"]
    assert aws.ec2.find_tagged(ec2, region, {aws.TAG_RUN: "20261120T000000-c0ffee"}) == []
    # Host keys are kept for the hosts that still exist, and go with those that do not.
    kept = {n.rsplit("/", 1)[1] for r in lab.env.all_regions for n in aws.ssm.names_under(
        clients.ssm(), f"{lab.env.host_keys_path}{r}/")}
    assert {i for ids in live_before.values() for i in ids} <= kept
    existing = {i.instance_id for r in lab.env.all_regions for i in aws.ec2.find_tagged(
        clients.ec2(r), r, {})}
    assert kept <= existing  # nothing kept for an instance that is gone
    # the live fleet, its images and the rollback targets are untouched
    assert {r: sorted(i.instance_id for i in v) for r, v in live_hosts(lab).items()} == \
        live_before
    for r, image_id in record(lab)["images"].items():
        assert aws.ec2.images(clients.ec2(r), r, [image_id])
    assert_serving(lab, record(lab)["release"])


def test_gc_keeps_the_rollback_targets_and_never_sees_another_environment(lab):
    """With keep_images = 1 the newest image per region is kept anyway; the record's
    previous images (what `invoke rollback` launches) are kept for being named there;
    an orphan of another environment is not this one's to remove."""
    lab.cli("deploy --mode rebake-light --version 6.4.0")
    lab.cli("deploy --mode rebake-light --version 6.4.1")
    rec = record(lab)
    previous = rec["previous"]["images"]
    theirs = orphan(lab, "20261120T000000-0b0b0b", env="staging")
    # a team's own instance that merely shares the environment's tag: not the tool's
    unrelated = orphan(lab, "unrelated", tags=[{"Key": aws.TAG_ENV, "Value": "lab"},
                                                {"Key": "Name", "Value": "team-bastion"}])
    tight = lab.write_config(name="keep-one.toml", keep_images=1)
    out = json.loads(lab.cli(f"gc --older-than 0 --json --config {tight}").stdout)
    removed = {i["id"] for i in out["removed"]}
    kept = {i["id"]: i["reason"] for i in out["kept"]}
    for region, image in previous.items():
        assert image not in removed and "rollback target" in kept[image], region
    for image in rec["images"].values():
        assert "record names it" in kept[image]
    for other in (theirs, unrelated):  # not listed at all: not ours
        assert other not in removed and other not in kept
    region = lab.env.primary_region
    for other in (theirs, unrelated):
        assert aws.ec2.describe(lab.clients().ec2(region), region,
                                [other])[0].state == "running"
    aws.ec2.terminate(lab.clients().ec2(region), region, [theirs, unrelated])
    lab.cli("rollback")  # and the kept targets are what it needs
    assert_serving(lab, "6.4.0")
