"""Fleets as server groups (fleet = "server-groups"), end to end in the lab: no instance
a group launches — a scale-out, a replacement, during a deploy or after it — ever serves
a release that was replaced, and users see no failed request meanwhile."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from deploylib import aws, waits
from tests.conftest import REPO, Cli, write_config
from tests.lab import checks, traffic

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def groups_lab(lab):
    """The worker's lab started afresh with its fleet as server groups (1.0.0 baked, group
    v001 live), for this module; afterwards afresh as it was."""
    plain = lab.config_path
    config = write_config(plain.parent, name="server-groups.toml", fleet="server-groups",
                          timeouts={"boot": 120})
    saved = os.environ.get("DEPLOY_CONFIG")
    lab.config_path = lab.cli.config = config
    os.environ["DEPLOY_CONFIG"] = str(config)
    lab.up()
    try:
        yield lab
    finally:
        lab.config_path = lab.cli.config = plain
        os.environ["DEPLOY_CONFIG"] = saved or str(plain)
        lab.up()


def asg(lab, region: str):
    return lab.clients().autoscaling(region)


def live_group(lab, region: str) -> aws.autoscaling.ServerGroup:
    name = checks.record(lab)["server_groups"][region]
    return aws.autoscaling.describe(asg(lab, region), region, name)


def groups(lab, region: str) -> list[aws.autoscaling.ServerGroup]:
    return aws.autoscaling.server_groups(asg(lab, region), region, lab.env.group_prefix)


def settled(lab, region: str, count: int) -> list[str]:
    """Wait until the live group has `count` instances in service, each registered and
    healthy in the target group and nothing else registered; returns them."""
    def look() -> list[str] | None:
        group = live_group(lab, region)
        registered = checks.registered(lab, region)
        serving = group.in_service
        if len(serving) == count and len(group.instances) == count and \
                registered == dict.fromkeys(serving, "healthy"):
            return serving
        return None

    return waits.until(look, timeout=120, what=f"{count} instances in service",
                       resource=region, fix="read the instances' cloud-init-output.log")


def boot_log(lab, instance_id: str) -> str:
    return (checks.host_root(lab, instance_id) / "var/log/cloud-init-output.log").read_text()


def scale_all(lab, desired: int) -> None:
    for region in lab.env.all_regions:
        lab.cli(f"lab.scale --region {region} --desired {desired}")


def assert_all_serve(lab, version: str, count: int) -> None:
    for region in lab.env.all_regions:
        ids = settled(lab, region, count)
        for inst in aws.ec2.describe(lab.clients().ec2(region), region, ids):
            assert checks.serving(lab, inst) == version, (region, inst.instance_id)


def assert_no_failed_request(stream: traffic.Stream, version: str) -> None:
    report = stream.report("server groups")
    for region, r in report["regions"].items():
        assert r["failed"] == 0, (region, [x for x in stream.seen[region] if x[0] != 200][:5])
        assert r["versions"] == [version], (region, r["versions"])


def test_after_a_hotfix_new_and_replaced_instances_serve_the_hotfix(groups_lab):
    lab = groups_lab
    lab.cli("hotfix --version 4.0.1")
    before = {r: set(live_group(lab, r).in_service) for r in lab.env.all_regions}
    # Requests that may go to any target: a new instance is asked the moment it is
    # registered; not one may answer with the release its image carries.
    with traffic.Stream(lab, sticky=False) as stream:
        scale_all(lab, 4)
        assert_all_serve(lab, "4.0.1", 4)
    assert_no_failed_request(stream, "4.0.1")
    # An instance lost (terminated from outside: what it had in flight is lost with it,
    # as on AWS): the group replaces it, and the replacement boots into the hotfix.
    region = lab.env.primary_region
    victim = sorted(before[region])[0]
    aws.ec2.terminate(lab.clients().ec2(region), region, [victim])
    waits.until(lambda: victim not in live_group(lab, region).instances and
                len(live_group(lab, region).in_service) == 4, timeout=120,
                what="a replacement", resource=region, fix="read the lab's daemon.log")
    assert_all_serve(lab, "4.0.1", 4)
    for region in lab.env.all_regions:
        new = set(live_group(lab, region).in_service) - before[region]
        # (more, if a boot under load was abandoned and its instance replaced)
        assert len(new) >= (3 if region == lab.env.primary_region else 2)
        for iid in new:
            log = boot_log(lab, iid)
            # Its image carries 1.0.0; its boot fetched the recorded release and put it
            # on before the group put it in service.
            assert "switched current to 4.0.1" in log and "in service on 4.0.1" in log, log
    scale_all(lab, 2)
    assert_all_serve(lab, "4.0.1", 2)


def test_after_rebake_light_a_scale_out_serves_its_release(groups_lab):
    lab = groups_lab
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    lab.cli("deploy --mode rebake-light --version 4.1.0")
    for region in lab.env.all_regions:
        now = live_group(lab, region)
        assert now.name != was[region] and now.target_groups
        old = aws.autoscaling.describe(asg(lab, region), region, was[region])
        # Kept for a rollback: out of service, scaled to nothing.
        assert old is not None and old.desired == 0 and not old.target_groups
    with traffic.Stream(lab, sticky=False) as stream:
        scale_all(lab, 3)
        assert_all_serve(lab, "4.1.0", 3)
    assert_no_failed_request(stream, "4.1.0")
    scale_all(lab, 2)
    assert_all_serve(lab, "4.1.0", 2)


def _with_scale_out(lab, anchor: str, *args: str, step: str = "scale-out"
                    ) -> subprocess.CompletedProcess:
    """A deploy whose every region scales out by one (live group and the run's own) once
    the stage `anchor` is done (tests/plugins/scale_out.py), or the live group is asked
    to scale in by one (step="scale-in")."""
    config = write_config(lab.config_path.parent, name="scaling.toml",
                          fleet="server-groups", timeouts={"boot": 120, "health": 5},
                          plugins=["scale_out"],
                          extra_stages=[{"step": step, "after": anchor}])
    env = dict(lab.cli.env(), PYTHONPATH=str(REPO / "tests" / "plugins"),
               DEPLOY_CONFIG=str(config))
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


@pytest.mark.parametrize("mode, version", [("immutable", "4.2.0"), ("rebake-light", "4.2.1")])
def test_a_scale_out_in_the_middle_of_a_deploy_ends_on_its_release(groups_lab, mode, version):
    lab = groups_lab
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    live = checks.record(lab)["release"]
    with traffic.Stream(lab) as stream:
        proc = _with_scale_out(lab, "launch-candidates", "deploy", "--mode", mode,
                               "--version", version)
        assert proc.returncode == 0, proc.stderr[-3000:]
    state = checks.state_of(lab, proc)
    assert len(state["facts"]["team"]["scaled"]) == 2 * len(lab.env.all_regions)
    # The new group grew by one on the way: every instance of it serves the release.
    assert_all_serve(lab, version, 3)
    stream.assert_one_change(mode, live, version)
    for region in lab.env.all_regions:
        old = aws.autoscaling.describe(asg(lab, region), region, was[region])
        assert old.desired == 0 and not old.target_groups and not old.instances
    scale_all(lab, 2)
    assert_all_serve(lab, version, 2)


def test_old_server_groups_beyond_those_kept_are_deleted(groups_lab):
    lab = groups_lab
    for region in lab.env.all_regions:
        names = [g.name for g in groups(lab, region)]
        # the live one, and keep_server_groups (2) behind it
        assert len(names) <= 1 + lab.env.keep_server_groups, (region, names)
        template = aws.ec2.launch_template(lab.clients().ec2(region), region,
                                           lab.env.group_prefix)
        used = {g.template_version for g in groups(lab, region)}
        extra = {str(v.version) for v in template.versions} - used - {str(template.default)}
        assert not extra, (region, extra)


def test_a_scale_out_during_a_hotfix_ends_on_the_hotfix(groups_lab):
    lab = groups_lab
    live = checks.record(lab)["release"]
    with traffic.Stream(lab) as stream:
        proc = _with_scale_out(lab, "select-hosts", "hotfix", "--version", "4.3.1")
        assert proc.returncode == 0, proc.stderr[-3000:]
    state = checks.state_of(lab, proc)
    # The newcomers booted into the release recorded then; catch-up put the hotfix on.
    assert "came up during the rollout" in proc.stderr
    caught = {h["instance_id"] for h in state["facts"]["batches"][-1]}
    assert len(caught) == len(lab.env.all_regions)
    assert_all_serve(lab, "4.3.1", 3)
    stream.assert_one_change("in-place", live, "4.3.1")
    scale_all(lab, 2)
    assert_all_serve(lab, "4.3.1", 2)


def test_a_hotfix_holds_the_live_groups_from_scaling_in_until_it_is_done(groups_lab):
    lab = groups_lab
    live = checks.record(lab)["release"]
    scale_all(lab, 3)
    assert_all_serve(lab, live, 3)
    with traffic.Stream(lab) as stream:
        # Asked to scale in while the rollout holds the group: nothing is terminated
        # under it (a drained host is not taken as the one to lose)...
        proc = _with_scale_out(lab, "select-hosts", "hotfix", "--version", "4.3.2",
                               step="scale-in")
        assert proc.returncode == 0, proc.stderr[-3000:]
        state = checks.state_of(lab, proc)
        assert state["facts"]["team"]["terminating"] == {r: [] for r in lab.env.all_regions}
        assert len({h["instance_id"] for b in state["facts"]["batches"] for h in b}) == \
            3 * len(lab.env.all_regions)
        # ...and once it is done the group scales in as it was asked, each instance
        # drained first.
        assert_all_serve(lab, "4.3.2", 2)
    stream.assert_one_change("in-place", live, "4.3.2")
    for region in lab.env.all_regions:
        assert not live_group(lab, region).suspended, region


def test_a_scale_out_during_a_hotfix_that_rolls_back_ends_on_the_live_release(
        groups_lab, tmp_path):
    lab = groups_lab
    live = checks.record(lab)["release"]
    broken = checks.release_that_cannot_start(tmp_path)
    with traffic.Stream(lab) as stream:
        proc = _with_scale_out(lab, "select-hosts", "hotfix", "--version", "4.4.0-broken",
                               "--artifact", str(broken))
        assert proc.returncode == 1, proc.stderr[-3000:]
    assert checks.record(lab)["release"] == live
    assert_all_serve(lab, live, 3)
    report = stream.report("in-place rolled back")
    assert report["failed"] == 0, report
    # The rollout held the live groups; its cleanup (resume-scaling) let them go.
    assert checks.state_of(lab, proc)["facts"]["cleanup"]["resume-scaling"] == "done"
    assert not any(live_group(lab, r).suspended for r in lab.env.all_regions)
    scale_all(lab, 2)
    assert_all_serve(lab, live, 2)


def test_a_rollback_re_enables_the_previous_server_group(groups_lab):
    lab = groups_lab
    lab.cli("deploy --mode immutable --version 4.5.0")
    after = checks.record(lab)
    previous = after["previous"]
    with traffic.Stream(lab) as stream:
        proc = lab.cli("rollback")
    state = checks.state_of(lab, proc)
    now = checks.record(lab)
    for region in lab.env.all_regions:
        # The group the previous release served from, scaled up and attached again: no
        # new group, and its image is the previous one.
        assert now["server_groups"][region] == previous["server_groups"][region]
        assert state["facts"]["server_groups"][region] == previous["server_groups"][region]
        replaced = aws.autoscaling.describe(asg(lab, region), region,
                                            after["server_groups"][region])
        assert replaced.desired == 0 and not replaced.target_groups
    assert now["release"] == previous["release"]
    assert "re-enabling" in proc.stderr
    assert_all_serve(lab, previous["release"], 2)
    stream.assert_one_change("rollback", "4.5.0", previous["release"])


def _run_leftovers(lab, run_id: str) -> list[str]:
    out = []
    for region in lab.env.all_regions:
        out += [g.name for g in groups(lab, region) if g.tags.get(aws.TAG_RUN) == run_id]
        template = aws.ec2.launch_template(lab.clients().ec2(region), region,
                                           lab.env.group_prefix)
        out += [f"{region}:{v.version}" for v in (template.versions if template else [])
                if v.tags.get(aws.TAG_RUN) == run_id]
    return out + checks.leftovers(lab, run_id)


def test_a_release_that_cannot_boot_fails_the_run_and_leaves_nothing(groups_lab, tmp_path):
    lab = groups_lab
    live = checks.record(lab)["release"]
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    broken = checks.release_that_cannot_start(tmp_path)
    config = write_config(lab.config_path.parent, name="quick-groups.toml",
                          fleet="server-groups", timeouts={"boot": 120, "health": 3})
    proc = lab.cli(f"deploy --mode rebake-light --version 4.6.0-broken --artifact {broken} "
                   f"--config {config}", check=False)
    error = checks.failed_clearly(proc, "failed their boot")
    assert "console output" in error
    run_id = checks.run_id_of(proc)
    assert _run_leftovers(lab, run_id) == []
    assert {r: live_group(lab, r).name for r in lab.env.all_regions} == was
    assert checks.record(lab)["release"] == live
    assert_all_serve(lab, live, 2)


@pytest.mark.parametrize("mode, anchor, version", [
    ("rebake-light", "launch-candidates", "4.11.1"),  # its group made, out of service
    ("rebake-light", "promote", "4.11.2"),  # in service, the live group detached and held
    ("rebake-light", "create-image", "4.11.3"),  # its images made too
    ("immutable", "promote", "4.11.4"),  # a baked image, its template version, its group
])
def test_a_failure_at_any_stage_leaves_nothing_of_the_run(groups_lab, mode, anchor, version):
    lab = groups_lab
    live = checks.record(lab)["release"]
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    with traffic.Stream(lab) as stream:
        proc = _with_scale_out(lab, anchor, "deploy", "--mode", mode, "--version", version,
                               step="fail-here")
    assert proc.returncode == 1 and "failed here on purpose" in proc.stderr, proc.stderr[-3000:]
    assert _run_leftovers(lab, checks.run_id_of(proc)) == []
    assert checks.record(lab)["release"] == live
    for region in lab.env.all_regions:
        group = live_group(lab, region)
        # The live group serves again as it did: in service, scaling as it likes.
        assert group.name == was[region] and group.target_groups and not group.suspended
    assert_all_serve(lab, live, 2)
    report = stream.report(f"{mode} failed after {anchor}")
    assert report["failed"] == 0, report


def test_gc_removes_what_a_killed_run_left_and_nothing_live(groups_lab):
    lab = groups_lab
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    config = write_config(lab.config_path.parent, name="holding.toml", fleet="server-groups",
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
    assert len(_run_leftovers(lab, run_id)) >= len(lab.env.all_regions)
    lab.cli("lock.break --env lab")
    dry = json.loads(lab.cli("gc --older-than 0 --dry-run --json").stdout)
    kept = {i["id"]: i["reason"] for i in dry["kept"]}
    for region in lab.env.all_regions:
        assert "live" in kept[was[region]]
    lab.cli("gc --older-than 0 --json")
    assert _run_leftovers(lab, run_id) == []
    # The live groups never left service: the fleet is whole.
    for region in lab.env.all_regions:
        assert live_group(lab, region).name == was[region]
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_status_shows_how_each_host_got_its_release_and_fold_closes_the_drift(groups_lab):
    lab = groups_lab
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


def test_rebake_light_past_max_layers_is_refused_and_changes_nothing(groups_lab):
    lab = groups_lab
    strict = write_config(lab.config_path.parent, name="layers.toml", fleet="server-groups",
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
        assert _run_leftovers(lab, checks.run_id_of(proc)) == []
    else:  # a bake's own image: one rebake-light is allowed, the next is not
        assert proc.returncode == 0, proc.stderr[-2000:]
        again = lab.cli(f"deploy --mode rebake-light --version 4.9.1 --config {strict}",
                        check=False)
        checks.failed_clearly(again, "max_layers", "immutable")
        assert _run_leftovers(lab, checks.run_id_of(again)) == []
    assert {r: live_group(lab, r).name for r in lab.env.all_regions} == was or \
        proc.returncode == 0
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_a_first_server_group_that_fails_leaves_no_launch_template(groups_lab, tmp_path):
    lab = groups_lab
    # Groups of another name (and their own launch template): nothing of them exists yet.
    # The first is made, then its smoke test fails.
    (tmp_path / "test_refuses.py").write_text("def test_refuses():\n    assert False\n")
    other = write_config(lab.config_path.parent, name="other-groups.toml",
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
    assert _run_leftovers(lab, checks.run_id_of(proc)) == []
    assert_all_serve(lab, checks.record(lab)["release"], 2)
