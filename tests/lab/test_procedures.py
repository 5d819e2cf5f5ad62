"""The three procedures and both rollbacks end to end on the lab, checked over HTTP as a
user would. Each test starts from whatever release is live: after it, every live host
and every region's load balancer serve the new release, users saw it change once and no
request failed, and `invoke status` tells the truth, drift included."""

from __future__ import annotations

import json

import pytest

from deploylib import aws
from tests.lab.checks import assert_serving, live_hosts, record, state_of
from tests.lab.traffic import Membership, Stream

pytestmark = pytest.mark.lab


def status(lab) -> dict:
    return json.loads(lab.cli("status --json").stdout)


def hosts_of(fleet: dict) -> set[str]:
    return {i.instance_id for insts in fleet.values() for i in insts}


def test_lab_up_serves_the_baked_first_release(lab):
    lab.up()
    assert_serving(lab, "1.0.0")
    report = status(lab)
    assert {r["baked_release"] for r in report["instances"]} == {"1.0.0"}
    assert not any(r["drift"] for r in report["instances"])
    rec = record(lab)
    assert rec["release"] == "1.0.0" and rec["procedure"] == "immutable"
    assert set(rec["images"]) == set(lab.env.all_regions)
    # the drift ledger: each region's new hosts launch from its image, nothing on top
    assert rec["ledger"] == {r: {"image": rec["images"][r], "baked": "1.0.0", "layers": [],
                                 "dropped": 0} for r in lab.env.all_regions}


def test_in_place_updates_every_live_host_and_status_reports_drift(lab):
    before, hosts = record(lab), hosts_of(live_hosts(lab))
    with Stream(lab) as users:
        lab.cli("deploy --mode in-place --version 1.0.1")
    users.assert_one_change("in-place", before["release"], "1.0.1")
    assert hosts_of(assert_serving(lab, "1.0.1")) == hosts
    report = status(lab)
    assert len(report["instances"]) == lab.env.fleet_size * len(lab.env.all_regions)
    for row in report["instances"]:
        assert row["running_release"] == "1.0.1" and row["baked_release"] != "1.0.1"
        assert row["drift"] is True
    table = lab.cli("status").stdout
    assert table.count("DRIFT") == lab.env.fleet_size * len(lab.env.all_regions)
    assert f"{len(report['instances'])} of them: no recorded image carries it" in table
    rec = record(lab)
    assert rec["release"] == "1.0.1" and rec["images"] == before["images"]  # hosts, not images
    for region, entry in rec["ledger"].items():
        assert entry["image"] == before["images"][region]
        assert entry["baked"] == before["ledger"][region]["baked"] != "1.0.1"
        assert entry["layers"][-1] == {"release": "1.0.1", "how": "in-place",
                                       "since": rec["recorded_at"]}
        assert f"{region}: new hosts launch from {entry['image']}" in table


def test_a_graceful_hotfix_keeps_every_host_in_its_target_group_and_drops_nothing(lab):
    """reload = "graceful": no drain, no put-back; the release switched and the app
    reloaded on each live host while it serves, batch by batch, health-gated on the host."""
    before = record(lab)["release"]
    config = lab.write_config(name="graceful.toml", reload="graceful")
    with Membership(lab) as groups, Stream(lab) as users:
        proc = lab.cli(f"hotfix --version 1.0.5 --config {config}")
    users.assert_one_change("in-place-graceful", before, "1.0.5")
    assert groups.left == [] and groups.looks > 5
    stages = state_of(lab, proc)["stages"]
    assert not [k for k in stages if k.endswith(("/drain", "/put-back"))]
    assert [k for k in stages if k.endswith("/install-release")]
    assert_serving(lab, "1.0.5")


def test_in_place_and_rebake_light_for_an_app_whose_health_only_answers_200(lab, tmp_path):
    """health_check = "status": the sample app's /healthz says "ok" and no release; each
    host proves the release it runs (its `current` link and the service running from it),
    and the procedures go through as with a version-reporting app."""
    from tests.conftest import Cli

    cli = Cli(config=lab.write_config(tmp_path, health_check="status", health_path="/healthz",
                                      state_dir=str(lab.env.state_dir)), lab_dir=lab.cli.lab_dir)
    hosts, before = hosts_of(live_hosts(lab)), record(lab)["release"]
    with Stream(lab) as users:
        proc = cli("deploy --mode in-place --version 1.0.4")
    assert "health-check" in proc.stderr
    users.assert_one_change("in-place", before, "1.0.4")
    assert hosts_of(assert_serving(lab, "1.0.4")) == hosts
    cli("deploy --mode rebake-light --version 1.0.5")
    assert_serving(lab, "1.0.5")
    assert not hosts & hosts_of(live_hosts(lab))  # a new fleet


def test_rebake_light_replaces_the_fleet_from_the_live_image(lab):
    before, old = record(lab), live_hosts(lab)
    with Stream(lab) as users:
        lab.cli("deploy --mode rebake-light --version 1.0.2")
    users.assert_one_change("rebake-light", before["release"], "1.0.2")
    new = assert_serving(lab, "1.0.2")
    clients = lab.clients()
    for region in lab.env.all_regions:
        old_ids = [i.instance_id for i in old[region]]
        assert not set(old_ids) & {i.instance_id for i in new[region]}
        # launched from the image that was live, not from a new bake
        assert {i.image_id for i in new[region]} == {before["images"][region]}
        gone = aws.ec2.describe(clients.ec2(region), region, old_ids)
        assert {i.state for i in gone} == {"terminated"}
    rec = record(lab)
    assert rec["release"] == "1.0.2" and rec["procedure"] == "rebake-light"
    for region, image in rec["images"].items():
        assert image != before["images"][region]
        tags = aws.ec2.image_tags(clients.ec2(region), region, [image])[image]
        assert tags[aws.TAG_RELEASE] == "1.0.2"
    # the new hosts run 1.0.2 on an image baked with the release before: drift,
    # truthfully, which the new recorded images cover: a replacement would run 1.0.2
    assert all(r["drift"] and r["baked_release"] != "1.0.2" for r in status(lab)["instances"])
    fleet = lab.env.fleet_size * len(lab.env.all_regions)
    assert f"{fleet} of them: the recorded image of their region carries it" in \
        lab.cli("status").stdout


def test_rollback_after_an_image_based_deploy_brings_back_the_previous_image(lab):
    lab.cli("deploy --mode rebake-light --version 1.2.0")
    before = record(lab)
    with Stream(lab) as users:
        lab.cli("rollback")
    previous = before["previous"]["release"]
    users.assert_one_change("rollback-image", "1.2.0", previous)
    fleet = assert_serving(lab, previous)
    for region, instances in fleet.items():
        assert {i.image_id for i in instances} == {before["previous"]["images"][region]}
    rec = record(lab)
    assert rec["procedure"] == "rollback-image" and rec["images"] == before["previous"]["images"]
    assert rec["previous"]["release"] == "1.2.0"  # a second rollback rolls forward


def test_rollback_after_an_in_place_deploy_switches_every_host_back(lab):
    previous = record(lab)["release"]
    lab.cli("hotfix --version 1.2.1")
    hosts = hosts_of(assert_serving(lab, "1.2.1"))
    with Stream(lab) as users:
        lab.cli("rollback")
    users.assert_one_change("rollback-in-place", "1.2.1", previous)
    assert hosts_of(assert_serving(lab, previous)) == hosts
    assert record(lab)["procedure"] == "rollback-in-place"
