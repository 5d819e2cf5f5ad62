"""Server groups when things go wrong, and what is left to see: a boot or any stage that
fails leaves nothing of the run, gc removes what a killed run left and nothing live,
rebake-light past max_layers is refused; status shows how each host got its release, and
fold closes the drift (fleet = "server-groups", in the lab)."""

from __future__ import annotations

import json
import os

import pytest

from deploylib import aws
from tests.conftest import REPO, Cli
from tests.lab import checks, traffic
from tests.lab.groups import (
    asg,
    assert_all_serve,
    boot_log,
    live_group,
    run_leftovers,
    settled,
    with_scale_out,
)

# One server-group lab per worker: these modules share it (and so one worker).
pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(fleet="server-groups"),
              pytest.mark.xdist_group("server-groups")]


def test_a_release_that_cannot_boot_fails_the_run_and_leaves_nothing(lab, tmp_path):
    live = checks.record(lab)["release"]
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    broken = checks.release_that_cannot_start(tmp_path)
    config = lab.write_config(name="quick-groups.toml",
                              fleet="server-groups", timeouts={"boot": 120, "health": 3})
    proc = lab.cli(f"deploy --mode rebake-light --version 4.6.0-broken --artifact {broken} "
                   f"--config {config}", check=False)
    error = checks.failed_clearly(proc, "failed their boot")
    assert "console output" in error
    run_id = checks.run_id_of(proc)
    assert run_leftovers(lab, run_id) == []
    assert {r: live_group(lab, r).name for r in lab.env.all_regions} == was
    assert checks.record(lab)["release"] == live
    assert_all_serve(lab, live, 2)


# A failure in launch-candidates (its group made, out of service) is the boot test's
# above; one after fold-template is one after promote too (rebake-light images after it).
@pytest.mark.parametrize("mode, anchor, version", [
    # its group in service, the live group detached and held, its images made and its
    # group launching from them (a second template version)
    ("rebake-light", "fold-template", "4.11.3"),
    ("immutable", "promote", "4.11.4"),  # a baked image, its template version, its group
])
def test_a_failure_at_any_stage_leaves_nothing_of_the_run(lab, mode, anchor, version):
    live = checks.record(lab)["release"]
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    with traffic.Stream(lab) as stream:
        proc = with_scale_out(lab, anchor, "deploy", "--mode", mode, "--version", version,
                               step="fail-here")
    assert proc.returncode == 1 and "failed here on purpose" in proc.stderr, proc.stderr[-3000:]
    assert run_leftovers(lab, checks.run_id_of(proc)) == [], proc.stderr[-4000:]
    assert checks.record(lab)["release"] == live
    for region in lab.env.all_regions:
        group = live_group(lab, region)
        # The live group serves again as it did: in service, scaling as it likes.
        assert group.name == was[region] and group.target_groups and not group.suspended
    assert_all_serve(lab, live, 2)
    report = stream.report(f"{mode} failed after {anchor}")
    assert report["failed"] == 0, report


def test_a_fold_failing_after_it_pointed_the_live_groups_puts_their_templates_back(lab):
    """fold-template points the live groups at the run's image; the run failing after it
    discards that image, so restore-templates (its declared undo) points each group at
    the version it launched from before: no instance launches from a discarded image."""
    lab.cli("hotfix --version 4.12.0")  # something to fold
    was = {r: (g.name, g.template_id, g.template_version)
           for r in lab.env.all_regions for g in [live_group(lab, r)]}
    proc = with_scale_out(lab, "fold-template", "fold", step="fail-here")
    assert proc.returncode == 1 and "failed here on purpose" in proc.stderr, proc.stderr[-3000:]
    state = checks.state_of(lab, proc)
    assert state["facts"]["cleanup"]["restore-templates"] == "done"
    assert state["facts"]["folded_from"] == {}
    for region in lab.env.all_regions:
        group = live_group(lab, region)
        assert (group.name, group.template_id, group.template_version) == was[region]
    assert run_leftovers(lab, checks.run_id_of(proc)) == []
    assert_all_serve(lab, "4.12.0", 2)


def test_gc_removes_what_a_killed_run_left_and_nothing_live(lab):
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    config = lab.write_config(name="holding.toml", fleet="server-groups",
                              timeouts={"boot": 120}, plugins=["scale_out"],
                              extra_stages=[{"step": "hold", "after": "launch-candidates"}])
    cli = Cli(config=config, lab_dir=lab.cli.lab_dir)
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(REPO / "tests" / "plugins")  # the run's own environment
    try:
        proc = checks.start_deploy(lab, "--mode", "rebake-light", "--version", "4.7.0",
                                   cli=cli)
        state = checks.state_when(lab, proc, lambda s: all(
            s.get("stages", {}).get(f"regions/{r}/hold", {}).get("status") == "running"
            for r in lab.env.all_regions), "every region held after its launch")
        proc.kill()
        checks.ended(proc)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    run_id = state["run_id"]
    assert len(run_leftovers(lab, run_id)) >= len(lab.env.all_regions)
    lab.cli("lock.break --env lab")
    dry = json.loads(lab.cli("gc --older-than 0 --dry-run --json").stdout)
    kept = {i["id"]: i["reason"] for i in dry["kept"]}
    for region in lab.env.all_regions:
        assert "live" in kept[was[region]]
    lab.cli("gc --older-than 0 --json")
    assert run_leftovers(lab, run_id) == []
    # The live groups never left service: the fleet is whole.
    for region in lab.env.all_regions:
        assert live_group(lab, region).name == was[region]
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_status_shows_how_each_host_got_its_release_and_fold_closes_the_drift(lab):
    lab.cli("hotfix --version 4.8.1")
    lab.cli("lab.scale --region us-east-1 --desired 3")
    settled(lab, "us-east-1", 3)
    rows = json.loads(lab.cli("status --json").stdout)["instances"]
    assert {r["running_release"] for r in rows} == {"4.8.1"} and all(r["drift"] for r in rows)
    hows = {r["instance_id"]: r["how"] for r in rows}
    assert sorted(hows.values()).count("boot") == 1, hows  # the scale-out's instance
    assert all(r["server_group"] == live_group(lab, r["region"]).name for r in rows)
    before = {r: live_group(lab, r) for r in lab.env.all_regions}
    # The record's ledger: each live group, the image it launches from, the release that
    # image carries, and the hotfix on top of it.
    hotfixed = checks.record(lab)
    table = lab.cli("status").stdout
    for region in lab.env.all_regions:
        entry = hotfixed["ledger"][region]
        assert entry["group"] == before[region].name
        assert entry["baked"] != "4.8.1"
        assert entry["layers"][-1] == {"release": "4.8.1", "how": "in-place",
                                       "since": hotfixed["recorded_at"]}
        assert f"{region}: {entry['group']} launches from {entry['image']}" in table
    proc = lab.cli("fold")
    assert "launches from" in proc.stderr
    record = checks.record(lab)
    assert record["release"] == "4.8.1" and record["procedure"] == "in-place"
    # Imaged: in each region a clean instance from the live image, the release installed
    # on it, gone after — never a host that served.
    builders = checks.state_of(lab, proc)["facts"]["builders"]
    assert sorted(builders) == sorted(lab.env.all_regions)
    for region, b in builders.items():
        assert b["from_live"] and b["source_image"] == hotfixed["images"][region]
        assert b["instance_id"] not in before[region].in_service and b["terminated"]
    for region in lab.env.all_regions:
        group = live_group(lab, region)
        # The same group, its hosts untouched, its launch template version the folded one.
        assert group.name == before[region].name
        assert group.template_version != before[region].template_version
        assert set(group.in_service) == set(before[region].in_service)
        version = next(v for v in aws.ec2.launch_template(
            lab.clients().ec2(region), region, lab.env.group_prefix).versions
            if str(v.version) == group.template_version)
        assert version.image_id == record["images"][region]
        tags = aws.ec2.image_tags(lab.clients().ec2(region), region, [version.image_id])
        assert tags[version.image_id][aws.TAG_RELEASE] == "4.8.1"
        assert record["ledger"][region] == {"group": group.name, "image": version.image_id,
                                            "baked": "4.8.1", "layers": [], "dropped": 0}
    rows = json.loads(lab.cli("status --json").stdout)["instances"]
    assert not any(r["drift"] for r in rows), rows
    # A new instance now boots on the image: nothing to install.
    lab.cli("lab.scale --region us-east-1 --desired 4")
    new = set(settled(lab, "us-east-1", 4)) - set(before["us-east-1"].in_service)
    assert len(new) == 1
    assert "already live; nothing to do" in boot_log(lab, new.pop())
    lab.cli("lab.scale --region us-east-1 --desired 2")
    assert_all_serve(lab, "4.8.1", 2)


def test_rebake_light_past_max_layers_is_refused_and_changes_nothing(lab):
    strict = lab.write_config(name="layers.toml", fleet="server-groups",
                              timeouts={"boot": 120}, max_layers=1)
    record = checks.record(lab)
    region = lab.env.primary_region
    tags = aws.ec2.image_tags(lab.clients().ec2(region), region, [record["images"][region]])
    layers = int(tags[record["images"][region]].get(aws.TAG_LAYERS, "0"))
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    proc = lab.cli(f"deploy --mode rebake-light --version 4.9.0 --config {strict}",
                   check=False)
    if layers >= 1:
        checks.failed_clearly(proc, "max_layers", "immutable")
        assert checks.record(lab)["release"] == record["release"]
        assert run_leftovers(lab, checks.run_id_of(proc)) == []
    else:  # a bake's own image: one rebake-light is allowed, the next is not
        assert proc.returncode == 0, proc.stderr[-2000:]
        again = lab.cli(f"deploy --mode rebake-light --version 4.9.1 --config {strict}",
                        check=False)
        checks.failed_clearly(again, "max_layers", "immutable")
        assert run_leftovers(lab, checks.run_id_of(again)) == []
    assert {r: live_group(lab, r).name for r in lab.env.all_regions} == was or \
        proc.returncode == 0
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_a_first_server_group_that_fails_leaves_no_launch_template(lab, tmp_path):
    # Groups of another name (and their own launch template): nothing of them exists yet.
    # The first is made, then its smoke test fails.
    (tmp_path / "test_refuses.py").write_text("def test_refuses():\n    assert False\n")
    other = lab.write_config(name="other-groups.toml",
                             fleet="server-groups", server_group_prefix="other-lab",
                             timeouts={"boot": 120}, smoke_tests=str(tmp_path))
    from deploylib import config, render

    env = config.load(other).environment("lab")
    checks.hold_to_policy(lab, render.iam_policy(env), render.instance_policy(env))
    proc = lab.cli(f"deploy --mode rebake-light --version 4.10.0 --config {other}",
                   check=False)
    checks.failed_clearly(proc, "smoke")
    assert "server group other-lab-v001 deleted" in proc.stderr
    for region in lab.env.all_regions:
        ec2 = lab.clients().ec2(region)
        assert aws.ec2.launch_template(ec2, region, "other-lab") is None, region
        assert not aws.autoscaling.server_groups(asg(lab, region), region, "other-lab")
    assert run_leftovers(lab, checks.run_id_of(proc)) == []
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_a_boot_the_group_will_not_let_in_service_fails_the_run_at_once(lab):
    # Every CompleteLifecycleAction refused, the boot's ABANDON too: the instances stay
    # held by the hook. The wait reads their console and ends on the boot's failure line,
    # not at the hook's timeout (10 minutes here; the command's own timeout is 5).
    live = checks.record(lab)["release"]
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    config = lab.write_config(name="slow-hook.toml",
                              fleet="server-groups", timeouts={"boot": 600})
    checks.set_faults(lab, {"action": "CompleteLifecycleAction", "error": "ValidationError"})
    try:
        proc = lab.cli(f"deploy --mode rebake-light --version 4.6.1 --config {config}",
                       check=False)
    finally:
        checks.clear_faults(lab)
    error = checks.failed_clearly(proc, "failed its boot and is still held by the lifecycle hook")
    # the boot's own line: its lifecycle action refused (exit 11), then abandoning
    assert "[boot " in error and "failed (11)" in error
    assert run_leftovers(lab, checks.run_id_of(proc)) == []
    assert {r: live_group(lab, r).name for r in lab.env.all_regions} == was
    assert checks.record(lab)["release"] == live
    assert_all_serve(lab, live, 2)


def test_a_launch_aws_refuses_fails_the_run_at_once_in_aws_words(lab):
    # A launch refused (here the instance profile, as a first deploy meets it while IAM
    # propagates) makes no instance: only the group's scaling activities say why. The
    # wait reads them and ends on AWS's reason, not at the boot timeout (10 minutes here;
    # the command's own timeout is 5).
    live = checks.record(lab)["release"]
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    config = lab.write_config(name="slow-hook.toml",
                              fleet="server-groups", timeouts={"boot": 600})
    why = ("Value (deploy-instance) for parameter iamInstanceProfile.name is invalid. "
           "Invalid IAM Instance Profile name")
    checks.set_faults(lab, {"action": "LaunchInstance", "message": why})
    try:
        proc = lab.cli(f"deploy --mode rebake-light --version 4.6.2 --config {config}",
                       check=False)
    finally:
        checks.clear_faults(lab)
    checks.failed_clearly(proc, "the group could not launch an instance", why)
    assert run_leftovers(lab, checks.run_id_of(proc)) == []
    assert {r: live_group(lab, r).name for r in lab.env.all_regions} == was
    assert checks.record(lab)["release"] == live
    assert_all_serve(lab, live, 2)


def test_a_fold_launches_only_from_an_image_of_the_environments_own(lab):
    """The record's image is what a fold's clean instance launches from: one that is not
    this account's (a record rewritten) is refused before anything is launched, and the
    groups are left as they were."""
    region = lab.env.primary_region
    before = checks.record(lab)
    version = live_group(lab, region).template_version
    foreign = lab.clients().ec2(region).describe_images(Owners=["amazon"])["Images"][0]
    ssm = lab.clients().ssm()
    aws.ssm.write_record(ssm, lab.env.record_parameter, {
        **before, "images": {**before["images"], region: foreign["ImageId"]}})
    try:
        proc = lab.cli("fold", check=False)
    finally:
        aws.ssm.write_record(ssm, lab.env.record_parameter, before)
    assert proc.returncode != 0
    assert "is not one of this account's own" in proc.stderr, proc.stderr[-2000:]
    state = checks.state_of(lab, proc)
    assert not any(b.get("instance_id") for b in state["facts"]["builders"].values())
    assert live_group(lab, region).template_version == version
