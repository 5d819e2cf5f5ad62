"""What regions change, on a lab of two (the primary and one copy): an immutable release
baked once and copied, or baked in every region at once; an in-place hotfix rolled as a
canary then waves across regions, and a failure in the second region's second batch
rolling back the hosts every region updated.

These and the image faults (test_faults_images) and preflight (test_preflight) are the
files that need a second region: one group, one worker's two-region lab
(tests/scheduling.py)."""

from __future__ import annotations

import json

import pytest

from deploylib import aws
from tests.lab.checks import (
    assert_nothing_lost,
    assert_serving,
    broken_hotfix,
    live_hosts,
    plant_image,
    quick_config,
    record,
    state_of,
)
from tests.lab.traffic import Stream

pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(regions=2),
              pytest.mark.xdist_group("two-regions")]


def status(lab) -> dict:
    return json.loads(lab.cli("status --json").stdout)


def hosts_of(fleet: dict) -> set[str]:
    return {i.instance_id for insts in fleet.values() for i in insts}


def _waves(state: dict) -> list[list[tuple[str, str]]]:
    return [[(h["region"], h["instance_id"]) for h in b] for b in state["facts"]["batches"]]


def test_immutable_bakes_an_image_in_every_region_and_a_new_fleet(lab):
    before, old = record(lab), hosts_of(live_hosts(lab))
    # A neighbour in the account plants a newer image under the bake cache's key: the
    # bake starts from the foundation the record names, never from one found by its tags.
    primary = lab.env.primary_region
    recorded = before["foundations"][primary]
    planted = plant_image(lab, primary, "planted-foundation", {
        aws.TAG_FOUNDATION: recorded["key"], aws.TAG_ENV: lab.env.name})
    with Stream(lab) as users:
        proc = lab.cli("deploy --mode immutable --version 1.1.0")
    users.assert_one_change("immutable", before["release"], "1.1.0")
    new = assert_serving(lab, "1.1.0")
    assert not old & hosts_of(new)
    clients = lab.clients()
    rec = record(lab)
    assert rec["release"] == "1.1.0" and set(rec["images"]) == set(lab.env.all_regions)
    for region, image in rec["images"].items():
        described = aws.ec2.images(clients.ec2(region), region, [image])[0]
        assert described["State"] == "available"
        assert aws.tag_map(described.get("Tags"))[aws.TAG_RELEASE] == "1.1.0"
        assert {i.image_id for i in new[region]} == {image}
    report = status(lab)
    assert not any(r["drift"] for r in report["instances"])
    assert {r["running_release"] for r in report["instances"]} == {"1.1.0"}
    # the bake cache: lab.up's bake left a foundation image for these packages, so this
    # builder started from it and skipped provisioning
    builder = state_of(lab, proc)["facts"]["builder"]
    assert builder["cache_hit"] is True and builder["foundation_image"] is None
    assert builder["source_image"] == recorded["image"] != planted
    assert record(lab)["foundations"] == before["foundations"]  # carried on
    for region in lab.env.all_regions:  # no builder is left running
        assert aws.ec2.find_tagged(clients.ec2(region), region, {aws.TAG_ROLE: "builder"}) == []


def test_immutable_baked_in_every_region_at_once_copies_no_image(lab):
    """bake = "per-region": every region bakes its own image from the same release, at
    once; with every CopyImage refused, the run still goes through."""
    from tests.lab.checks import clear_faults, fault_hits, set_faults

    before = record(lab)["release"]
    config = lab.write_config(name="per-region.toml", bake="per-region")
    set_faults(lab, {"action": "CopyImage", "error": "InvalidParameter",
                     "message": "no copy may be needed (injected)"})
    try:
        with Stream(lab) as users:
            proc = lab.cli(f"deploy --mode immutable --version 1.1.5 --config {config}")
        assert fault_hits(lab) == 0  # no copy was asked for
    finally:
        clear_faults(lab)
    users.assert_one_change("immutable-per-region", before, "1.1.5")
    assert_serving(lab, "1.1.5")
    state = state_of(lab, proc)
    assert not [k for k in state["stages"] if "copy-image" in k or "wait-image" in k]
    builders = state["facts"]["builders"]
    assert sorted(builders) == sorted(lab.env.all_regions)
    assert all(b["region"] == r and b["terminated"] for r, b in builders.items())
    rec = record(lab)
    clients = lab.clients()
    digests = set()
    for region, image in rec["images"].items():
        tags = aws.ec2.image_tags(clients.ec2(region), region, [image])[image]
        assert tags[aws.TAG_RELEASE] == "1.1.5"
        assert tags[aws.TAG_BAKED_FROM]  # the foundation (or base) it was baked from
        digests.add(tags[aws.TAG_DIGEST])
    assert digests == {rec["sha256"]}  # every region's image: the same release bytes
    assert status(lab)["recorded_image_digests"] == {r: rec["sha256"] for r in rec["images"]}


def test_in_place_rolls_a_canary_then_waves_across_regions(lab, tmp_path):
    before = record(lab)["release"]
    fleet = live_hosts(lab)
    config = lab.write_config(name="waves.toml", rollout="waves")
    proc = lab.cli(f"hotfix --version 5.9.0 --config {config}")
    waves = _waves(state_of(lab, proc))
    primary = lab.env.primary_region
    # the canary: the primary region's first batch, alone
    assert waves[0] == [(primary, sorted(i.instance_id for i in fleet[primary])[0])]
    # then every region at once, never more of a region than one batch (1 host here)
    assert {r for r, _ in waves[1]} == set(lab.env.all_regions)
    for wave in waves:
        regions = [r for r, _ in wave]
        assert len(regions) == len(set(regions)), wave
    assert len(waves) == 1 + lab.env.fleet_size  # regions x 2 hosts: a canary + 2 waves
    assert_serving(lab, "5.9.0")
    assert before != "5.9.0"


def test_a_failure_in_region_bs_second_batch_rolls_back_updated_hosts_in_every_region(
        lab, tmp_path, refuse):
    before = record(lab)["release"]
    b = lab.env.copy_regions[0]
    victim = sorted(i.instance_id for i in live_hosts(lab)[b])[1]  # region B's batch 2
    state = broken_hotfix(lab, tmp_path, refuse, victim, "5.9.1",
                          quick_config(lab, "waves.toml", rollout="waves"))
    waves = _waves(state)
    failed_at = next(n for n, w in enumerate(waves, start=1) if (b, victim) in w)
    assert state["stages"][f"rollout/{failed_at}/install-release"]["was"] == "failed"
    assert f"rollout/{failed_at + 1}/drain" not in state["stages"]
    # every host the earlier waves updated, whatever its region, went back
    updated = {i for w in waves[:failed_at - 1] for _, i in w}
    assert updated <= set(state["facts"]["rolled_back"])
    assert {r for w in waves[:failed_at - 1] for r, _ in w} == set(lab.env.all_regions)
    assert_nothing_lost(lab, state, before)
