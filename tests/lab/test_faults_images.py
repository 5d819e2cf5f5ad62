"""Faults during the procedures that release images (immutable, rebake-light and the
rollback to the previous images), region by region: the regions already promoted are
put back, what the run made is removed, a failure after the record discards nothing,
and a resume finishes the job."""

from __future__ import annotations

import json

import pytest

from deploylib import aws
from tests.lab.checks import (
    assert_nothing_lost,
    assert_serving,
    balancer_versions,
    clear_faults,
    ended,
    failed_clearly,
    fault_hits,
    leftovers,
    live_hosts,
    lock_holder,
    record,
    release_that_cannot_start,
    set_faults,
    start_deploy,
    state_of,
    wait_for_stage,
)

# Regions are what these tests are about: a lab of two (the primary and one copy).
pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(regions=2),
              pytest.mark.xdist_group("two-regions")]  # one lab (tests/scheduling.py)


def last(lab) -> str:
    """The region whose image is copied (made) last."""
    return lab.env.all_regions[-1]


def copies_held(lab, state: str = "pending") -> None:
    set_faults(lab, *({"action": "DescribeImages", "region": r, "image_state": state}
                      for r in lab.env.copy_regions))


def test_aws_throttling_on_describe_and_copy_is_ridden_out(lab):
    set_faults(lab, {"action": "DescribeInstances", "error": "RequestLimitExceeded", "times": 3},
               {"action": "CopyImage", "error": "RequestLimitExceeded", "times": 2})
    proc = lab.cli("deploy --mode immutable --version 5.5.0")
    assert fault_hits(lab) == 5  # every injected throttle was met, and retried
    state = state_of(lab, proc)
    assert state["status"] == "done"
    assert_serving(lab, "5.5.0")
    assert leftovers(lab, state["run_id"]) == []


def test_an_image_copy_failing_in_one_region_removes_every_image_of_the_run(lab):
    before = record(lab)
    set_faults(lab, {"action": "CopyImage", "region": last(lab), "error": "InvalidParameter",
                     "message": "copy refused (injected)"})
    proc = lab.cli("deploy --mode immutable --version 5.6.0", check=False)
    failed_clearly(proc, "copy-image", last(lab))
    state = state_of(lab, proc)
    assert state["facts"]["cleanup"] == {"demote": "done", "discard-candidates": "done",
                                         "discard-images": "done", "discard-builder": "done"}
    assert record(lab) == before
    clear_faults(lab)
    assert_nothing_lost(lab, state, before["release"])


def test_a_failed_per_region_bake_in_one_region_leaves_nothing_of_the_run_anywhere(lab):
    before = record(lab)
    config = lab.write_config(name="per-region.toml", bake="per-region")
    set_faults(lab, {"action": "CreateImage", "region": last(lab), "error": "InvalidParameter",
                     "message": "image refused (injected)"})
    proc = lab.cli(f"deploy --mode immutable --version 5.6.1 --config {config}", check=False)
    failed_clearly(proc, last(lab))
    state = state_of(lab, proc)
    assert state["facts"]["cleanup"] == {"demote": "done", "discard-candidates": "done",
                                         "discard-images": "done", "discard-builder": "done"}
    assert state["facts"]["builders"] == {}  # every region's builder terminated, forgotten
    assert record(lab) == before
    clear_faults(lab)
    assert_nothing_lost(lab, state, before["release"])


def test_the_primary_region_goes_live_while_the_copies_are_pending(lab):
    """Each region waits only for its own image: with every copy held pending, the
    primary region is tested and promoted; the others follow when their copies land."""
    before = record(lab)["release"]
    copies_held(lab)
    proc = start_deploy(lab, "--mode", "immutable", "--version", "5.6.5")
    primary = lab.env.primary_region
    state = wait_for_stage(lab, proc, f"regions/{primary}/promote")
    clients = lab.clients()
    for region in lab.env.copy_regions:
        image = state["facts"]["images"][region]
        assert aws.ec2.images(clients.ec2(region), region, [image])[0]["State"] == "pending"
        assert state["stages"][f"regions/{region}/wait-image"]["status"] == "running"
        assert f"regions/{region}/launch-candidates" not in state["stages"]
    serving = {region: balancer_versions(lab, region) for region in lab.env.all_regions}
    assert serving[primary] == {"5.6.5"}
    assert all(serving[r] == {before} for r in lab.env.copy_regions), serving
    assert record(lab)["release"] == before  # committed only when every region is live
    # the hosts the primary's promotion replaced are out of its target group, still
    # running, and kept by gc while the run may put them back
    replaced = state["facts"]["promoted"][primary]
    assert len(replaced) == 2
    swept = json.loads(lab.cli("gc --older-than 0 --dry-run --json").stdout)
    kept = {k["id"]: k["reason"] for k in swept["kept"]}
    assert all("may put it back" in kept[i] for i in replaced), kept
    assert not {i["id"] for i in swept["would_remove"]} & set(replaced)
    clear_faults(lab)  # the copies land
    done = ended(proc)
    assert done.returncode == 0, done.stderr[-2000:]
    final = state_of(lab, state["run_id"])
    assert final["status"] == "done" and record(lab)["release"] == "5.6.5"
    assert_nothing_lost(lab, final, "5.6.5")


def test_a_copy_failing_after_the_primary_went_live_puts_the_primary_back(lab):
    """Until the release is recorded the replaced hosts keep running: a region that
    fails late gets every region back on the release it had, and nothing is left."""
    before = record(lab)
    copies_held(lab)
    proc = start_deploy(lab, "--mode", "immutable", "--version", "5.6.6")
    wait_for_stage(lab, proc, f"regions/{lab.env.primary_region}/promote")
    copies_held(lab, "failed")
    done = ended(proc)
    failed_clearly(done, "image is failed")
    state = state_of(lab, done)
    assert state["facts"]["cleanup"]["demote"] == "done"
    assert state["facts"]["promoted"] == {}
    assert record(lab) == before
    clear_faults(lab)
    assert_nothing_lost(lab, state, before["release"])


def test_keep_on_error_keeps_the_bake_and_resume_finishes_it(lab):
    set_faults(lab, {"action": "CopyImage", "region": last(lab), "error": "InvalidParameter"})
    proc = lab.cli("deploy --mode immutable --version 5.7.0 --keep-on-error", check=False)
    assert proc.returncode == 1
    state = state_of(lab, proc)
    assert state["facts"]["kept_on_error"] is True and lock_holder(lab) is None
    kept = set(lab.env.all_regions) - {last(lab)}
    assert set(state["facts"]["images"]) == kept
    clear_faults(lab)
    lab.cli(f"resume --run {state['run_id']}")
    final = state_of(lab, state["run_id"])
    assert final["status"] == "done"
    # the images already made were not made again
    assert {r: final["facts"]["images"][r] for r in kept} == \
        {r: state["facts"]["images"][r] for r in kept}
    assert_serving(lab, "5.7.0")


def test_a_failure_after_the_record_discards_nothing_and_a_resume_retires(lab):
    """The record commits the release: if retiring the replaced hosts fails, the new
    fleet stays live everywhere, and `invoke resume` finishes the retirement."""
    set_faults(lab, {"action": "TerminateInstances", "error": "OperationNotPermitted"})
    proc = lab.cli("deploy --mode rebake-light --version 5.7.6", check=False)
    failed_clearly(proc, "retire")
    state = state_of(lab, proc)
    assert state["stages"]["record"]["status"] == "done"
    assert state["facts"]["cleanup"] == {}  # nothing discarded
    assert record(lab)["release"] == "5.7.6" and lock_holder(lab) is None
    assert_serving(lab, "5.7.6")
    replaced = [i for ids in state["facts"]["promoted"].values() for i in ids]
    clear_faults(lab)
    lab.cli(f"resume --run {state['run_id']}")
    clients = lab.clients()
    for region, ids in state["facts"]["promoted"].items():
        gone = aws.ec2.describe(clients.ec2(region), region, ids)
        assert {i.state for i in gone} == {"terminated"}, region
    assert replaced and state_of(lab, state["run_id"])["status"] == "done"


def test_a_cleanup_step_that_fails_is_reported_and_invoke_cleanup_finishes_it(lab, tmp_path):
    """A release that cannot start, and the candidates cannot be terminated either: the
    run says both, keeps its own error, frees the lock; `invoke cleanup` later removes
    what is left."""
    before = record(lab)["release"]
    broken = release_that_cannot_start(tmp_path)
    set_faults(lab, {"action": "TerminateInstances", "error": "OperationNotPermitted"})
    quick = lab.write_config(name="quick.toml", timeouts={"health": 5})
    proc = lab.cli(f"deploy --mode rebake-light --version 5.7.7 --artifact {broken} "
                   f"--config {quick}", check=False)
    failed_clearly(proc, "install-release")  # its own error, not the cleanup's
    state = state_of(lab, proc)
    assert state["facts"]["cleanup"]["discard-candidates"].startswith("failed:")
    assert lock_holder(lab) is None
    assert leftovers(lab, state["run_id"])  # the candidates are still there
    clear_faults(lab)
    out = lab.cli(f"cleanup --run {state['run_id']} --config {quick}").stdout
    assert json.loads(out)["discard-candidates"] == "done"
    assert_nothing_lost(lab, state, before)


def test_a_failing_rollback_to_the_previous_images_leaves_the_live_release(lab):
    lab.cli("deploy --mode rebake-light --version 5.7.8")
    before, hosts = record(lab), live_hosts(lab)
    set_faults(lab, {"action": "RunInstances", "region": last(lab),
                     "error": "InsufficientInstanceCapacity"})
    proc = lab.cli("rollback", check=False)
    failed_clearly(proc, "launch-candidates", last(lab))
    state = state_of(lab, proc)
    assert state["mode"] == "rollback-image"
    assert state["facts"]["cleanup"] == {"demote": "done", "discard-candidates": "done"}
    assert record(lab) == before
    clear_faults(lab)
    assert_nothing_lost(lab, state, "5.7.8")
    assert live_hosts(lab) == hosts  # the same hosts serve, in every region


def test_the_builder_failing_during_provisioning_leaves_nothing(lab):
    before = record(lab)["release"]
    config = lab.write_config(name="bad-package.toml",
                              os_packages=["python3", "no-such-package"])
    proc = lab.cli(f"deploy --mode immutable --version 5.8.0 --config {config}", check=False)
    failed_clearly(proc, "provision")
    state = state_of(lab, proc)
    assert "Unable to locate package no-such-package" in json.dumps(state["stages"]["provision"])
    assert_nothing_lost(lab, state, before)


def test_a_candidate_whose_first_boot_fails_is_never_tested_or_promoted(lab):
    """cloud-init fails on the candidates of one region (their image carries the fault):
    wait-ssh says so with where to look, and every region keeps the release it had."""
    before = record(lab)
    region = lab.env.copy_regions[0]
    marker = (lab.cli.lab_dir / "images" / before["images"][region] / "etc/lab-faults"
              / "cloud-init-error")
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    try:
        proc = lab.cli("deploy --mode rebake-light --version 5.8.5", check=False)
    finally:
        marker.unlink()
    failed_clearly(proc, "wait-ssh", "cloud-init failed", "/var/log/cloud-init-output.log")
    state = state_of(lab, proc)
    assert f"regions/{region}/smoke-test" not in state["stages"]
    assert record(lab) == before
    assert_nothing_lost(lab, state, before["release"])
