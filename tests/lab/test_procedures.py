"""The three procedures end to end on the lab, checked over HTTP as a user would.

In file order against one lab: 1.0.0 is live after lab.up; in-place 1.0.1; rebake-light
1.0.2; immutable 1.1.0. After each, every live host and every region's load balancer
serve the new release, and `invoke status` tells the truth, drift included.
"""

from __future__ import annotations

import json
import urllib.request

import pytest

from deploylib import aws, steps
from tests.lab.traffic import Stream

pytestmark = pytest.mark.lab


def live(lab) -> dict[str, list[aws.Instance]]:
    clients = lab.clients()
    out = {}
    for region in lab.env.all_regions:
        ids = steps.live_hosts_in(clients, lab.env, region)
        out[region] = aws.describe(clients.ec2(region), region, ids)
    return out


def balancer_versions(lab, region: str, requests: int = 8) -> set[str]:
    url = lab.info["regions"][region]["load_balancer"] + lab.env.health_path
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return {json.loads(opener.open(url, timeout=5).read())["version"] for _ in range(requests)}


def assert_serving(lab, version: str) -> dict[str, list[aws.Instance]]:
    fleet = live(lab)
    for region, instances in fleet.items():
        assert len(instances) == 2, f"{region} has {len(instances)} live hosts"
        for inst in instances:
            assert steps.serving_version(inst.address, lab.env.app_port,
                                         lab.env.health_path) == version, inst
        assert balancer_versions(lab, region) == {version}, region
    return fleet


def status(lab) -> dict:
    return json.loads(lab.cli("status --json").stdout)


def record(lab) -> dict:
    return aws.read_record(lab.clients().ssm(), lab.env.record_parameter)


def test_lab_up_serves_the_baked_first_release(lab):
    assert_serving(lab, "1.0.0")
    report = status(lab)
    assert {r["baked_release"] for r in report["instances"]} == {"1.0.0"}
    assert not any(r["drift"] for r in report["instances"])
    rec = record(lab)
    assert rec["release"] == "1.0.0" and set(rec["images"]) == set(lab.env.all_regions)


def test_in_place_updates_every_live_host_and_status_reports_drift(lab):
    before = {i.instance_id for insts in live(lab).values() for i in insts}
    with Stream(lab) as users:
        lab.cli("deploy --mode in-place --version 1.0.1")
    users.assert_one_change("in-place", "1.0.0", "1.0.1")
    fleet = assert_serving(lab, "1.0.1")
    assert {i.instance_id for insts in fleet.values() for i in insts} == before
    report = status(lab)
    assert len(report["instances"]) == 6
    for row in report["instances"]:
        assert row["baked_release"] == "1.0.0"
        assert row["running_release"] == "1.0.1"
        assert row["drift"] is True
    table = lab.cli("status").stdout
    assert table.count("DRIFT") == 6
    assert "6 of them: no recorded image carries it" in table
    assert record(lab)["release"] == "1.0.1"


def test_rebake_light_replaces_the_fleet_from_the_previous_image(lab):
    old = live(lab)
    live_images = record(lab)["images"]
    with Stream(lab) as users:
        lab.cli("deploy --mode rebake-light --version 1.0.2")
    users.assert_one_change("rebake-light", "1.0.1", "1.0.2")
    new = assert_serving(lab, "1.0.2")
    clients = lab.clients()
    for region in lab.env.all_regions:
        old_ids = [i.instance_id for i in old[region]]
        assert not set(old_ids) & {i.instance_id for i in new[region]}
        # launched from the image that was live, not from a new bake
        assert {i.image_id for i in new[region]} == {live_images[region]}
        gone = aws.describe(clients.ec2(region), region, old_ids)
        assert {i.state for i in gone} == {"terminated"}
    rec = record(lab)
    assert rec["release"] == "1.0.2" and rec["procedure"] == "rebake-light"
    for region, image in rec["images"].items():
        assert image != live_images[region]
        tags = aws.image_tags(clients.ec2(region), [image])[image]
        assert tags[aws.TAG_RELEASE] == "1.0.2"
    # the new hosts run 1.0.2 on an image baked with 1.0.0: drift, truthfully
    assert all(r["drift"] and r["baked_release"] == "1.0.0" for r in status(lab)["instances"])
    # ...which the new recorded images cover: a replacement would run 1.0.2
    assert "6 of them: the recorded image of their region carries it" in lab.cli("status").stdout


def test_immutable_bakes_an_image_in_every_region_and_a_new_fleet(lab):
    old = {i.instance_id for insts in live(lab).values() for i in insts}
    with Stream(lab) as users:
        lab.cli("deploy --mode immutable --version 1.1.0")
    users.assert_one_change("immutable", "1.0.2", "1.1.0")
    new = assert_serving(lab, "1.1.0")
    assert not old & {i.instance_id for insts in new.values() for i in insts}
    clients = lab.clients()
    rec = record(lab)
    assert rec["release"] == "1.1.0" and set(rec["images"]) == set(lab.env.all_regions)
    for region, image in rec["images"].items():
        ec2 = clients.ec2(region)
        described = ec2.describe_images(ImageIds=[image])["Images"][0]
        assert described["State"] == "available"
        assert aws.tag_map(described.get("Tags"))[aws.TAG_RELEASE] == "1.1.0"
        assert {i.image_id for i in new[region]} == {image}
    report = status(lab)
    assert not any(r["drift"] for r in report["instances"])
    assert {r["running_release"] for r in report["instances"]} == {"1.1.0"}
    # the bake cache: lab.up's bake left a foundation image for these packages, so this
    # builder started from it and skipped provisioning
    from tests.lab.test_faults import newest_state

    builder = newest_state(lab)["facts"]["builder"]
    assert builder["cache_hit"] is True and "foundation_image" not in builder
    # no builder is left running
    for region in lab.env.all_regions:
        builders = aws.find_tagged(clients.ec2(region), region, {aws.TAG_ROLE: "builder"})
        assert builders == []


def test_rollback_after_an_image_based_deploy_brings_back_the_previous_image(lab):
    before = record(lab)
    with Stream(lab) as users:
        lab.cli("rollback")
    users.assert_one_change("rollback-image", "1.1.0", "1.0.2")
    fleet = assert_serving(lab, "1.0.2")
    for region, instances in fleet.items():
        assert {i.image_id for i in instances} == {before["previous"]["images"][region]}
    rec = record(lab)
    assert rec["procedure"] == "rollback-image" and rec["images"] == before["previous"]["images"]
    assert rec["previous"]["release"] == "1.1.0"  # a second rollback rolls forward


def test_rollback_after_an_in_place_deploy_switches_every_host_back(lab):
    lab.cli("hotfix --version 1.1.1")
    hosts = {i.instance_id for insts in assert_serving(lab, "1.1.1").values() for i in insts}
    with Stream(lab) as users:
        lab.cli("rollback")
    users.assert_one_change("rollback-in-place", "1.1.1", "1.0.2")
    fleet = assert_serving(lab, "1.0.2")
    assert {i.instance_id for insts in fleet.values() for i in insts} == hosts
    assert record(lab)["procedure"] == "rollback-in-place"
