"""Fleets as server groups (fleet = "server-groups"), end to end in the lab: no instance
a group launches — a scale-out, a replacement, during a deploy or after it — ever serves
a release that was replaced, and users see no failed request meanwhile."""

from __future__ import annotations

import json

import pytest

from deploylib import aws, waits
from tests.lab import checks, traffic
from tests.lab.groups import (
    asg,
    assert_all_serve,
    assert_no_failed_request,
    boot_log,
    groups,
    live_group,
    scale_all,
    settled,
    with_scale_out,
)

# One server-group lab per worker: these modules share it (and so one worker).
pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(fleet="server-groups"),
              pytest.mark.xdist_group("server-groups")]


def test_after_a_hotfix_new_and_replaced_instances_serve_the_hotfix(lab):
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


def test_after_rebake_light_a_scale_out_serves_its_release(lab):
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    lab.cli("deploy --mode rebake-light --version 4.1.0")
    record = checks.record(lab)
    for region in lab.env.all_regions:
        now = live_group(lab, region)
        assert now.name != was[region] and now.target_groups
        old = aws.autoscaling.describe(asg(lab, region), region, was[region])
        # Kept for a rollback: out of service, scaled to nothing.
        assert old is not None and old.desired == 0 and not old.target_groups
        # The new group launches from the image the run made of its candidate: no drift.
        launches = aws.ec2.template_images(lab.clients().ec2(region), region,
                                           lab.env.group_prefix)[now.template_version]
        assert launches == record["images"][region]
        assert record["ledger"][region] == {"group": now.name, "image": launches,
                                            "baked": "4.1.0", "layers": [], "dropped": 0}
    # Its candidates got the release as they came up, before going live: never in place.
    rows = json.loads(lab.cli("status --json").stdout)["instances"]
    assert {(r["how"], r["drift"]) for r in rows} == {("boot", False)}, rows
    before = set(live_group(lab, lab.env.primary_region).in_service)
    with traffic.Stream(lab, sticky=False) as stream:
        scale_all(lab, 3)
        assert_all_serve(lab, "4.1.0", 3)
    assert_no_failed_request(stream, "4.1.0")
    new = set(live_group(lab, lab.env.primary_region).in_service) - before
    assert [boot_log(lab, i).count("already live; nothing to do") for i in new] == [1]
    scale_all(lab, 2)
    assert_all_serve(lab, "4.1.0", 2)


@pytest.mark.parametrize("mode, version", [("immutable", "4.2.0"), ("rebake-light", "4.2.1")])
def test_a_scale_out_in_the_middle_of_a_deploy_ends_on_its_release(lab, mode, version):
    was = {r: live_group(lab, r).name for r in lab.env.all_regions}
    live = checks.record(lab)["release"]
    with traffic.Stream(lab) as stream:
        proc = with_scale_out(lab, "launch-candidates", "deploy", "--mode", mode,
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


def test_old_server_groups_beyond_those_kept_are_deleted(lab):
    for region in lab.env.all_regions:
        names = [g.name for g in groups(lab, region)]
        # the live one, and keep_server_groups (2) behind it
        assert len(names) <= 1 + lab.env.keep_server_groups, (region, names)
        template = aws.ec2.launch_template(lab.clients().ec2(region), region,
                                           lab.env.group_prefix)
        used = {g.template_version for g in groups(lab, region)}
        extra = {str(v.version) for v in template.versions} - used - {str(template.default)}
        assert not extra, (region, extra)


def test_a_group_detached_and_attached_again_at_once_serves_again(lab):
    """As a switch-back does it: the live group out of its target group and straight back
    in; its instances are registered again and healthy after one check."""
    region = lab.env.primary_region
    group, arn = live_group(lab, region), checks.target_group(lab, region)
    aws.autoscaling.detach(asg(lab, region), region, group.name, [arn])
    assert checks.registered(lab, region) == {}
    aws.autoscaling.attach(asg(lab, region), region, group.name, [arn])
    aws.elb.wait_healthy(lab.clients().elbv2(region), region, arn, group.in_service, 30)
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_a_group_with_an_instance_draining_after_a_scale_in_detaches(lab):
    """A scale-in deregisters its instance at once and terminates it when the
    deregistration delay is over; a promote detaching the group meanwhile (`invoke demo`
    deploys right after its scale-in) leaves that instance out, as AWS's Auto Scaling
    does, instead of failing on it (moto's own detach raises InvalidTarget)."""
    region = lab.env.primary_region
    group, arn = live_group(lab, region), checks.target_group(lab, region)
    lab.cli(f"lab.scale --region {region} --desired 3")
    settled(lab, region, 3)
    lab.cli(f"lab.scale --region {region} --desired 2")
    assert len(live_group(lab, region).instances) == 3  # one draining, still the group's
    aws.autoscaling.detach(asg(lab, region), region, group.name, [arn])
    assert checks.registered(lab, region) == {}
    aws.autoscaling.attach(asg(lab, region), region, group.name, [arn])
    assert_all_serve(lab, checks.record(lab)["release"], 2)


def test_a_scale_out_during_a_hotfix_ends_on_the_hotfix(lab):
    live = checks.record(lab)["release"]
    with traffic.Stream(lab) as stream:
        proc = with_scale_out(lab, "select-hosts", "hotfix", "--version", "4.3.1")
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


def test_a_hotfix_holds_the_live_groups_from_scaling_in_until_it_is_done(lab):
    live = checks.record(lab)["release"]
    scale_all(lab, 3)
    assert_all_serve(lab, live, 3)
    with traffic.Stream(lab) as stream:
        # Asked to scale in while the rollout holds the group: nothing is terminated
        # under it (a drained host is not taken as the one to lose)...
        proc = with_scale_out(lab, "select-hosts", "hotfix", "--version", "4.3.2",
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
        lab, tmp_path):
    live = checks.record(lab)["release"]
    broken = checks.release_that_cannot_start(tmp_path)
    with traffic.Stream(lab) as stream:
        proc = with_scale_out(lab, "select-hosts", "hotfix", "--version", "4.4.0-broken",
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


def test_a_rollback_re_enables_the_previous_server_group(lab):
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
