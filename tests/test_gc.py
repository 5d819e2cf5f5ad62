"""What gc removes and what it must never touch (the deciding part is pure)."""

from __future__ import annotations

from deploylib.gc import Item, select

HOUR = 3600.0
NOW = 1_800_000_000.0


def old(kind: str, rid: str, run: str = "r-old", region: str = "us-east-1",
        age: float = 48 * HOUR, snapshots: tuple[str, ...] = ()) -> Item:
    return Item(kind, region, rid, run, NOW - age, snapshots)


def decide(items, **kw):
    args = dict(registered=set(), live_images=set(), locked_run=None, keep_images=1,
                older_than=24 * HOUR, now=NOW)
    args.update(kw)
    v = select(items, **args)
    return {i.resource_id for i in v.remove}, {i.resource_id: why for i, why in v.keep}


def test_orphans_of_crashed_runs_go():
    removed, kept = decide([old("instance", "i-1"), old("snapshot", "snap-9")])
    assert removed == {"i-1", "snap-9"} and kept == {}


def test_registered_instances_are_never_removed():
    removed, kept = decide([old("instance", "i-1")], registered={"i-1"})
    assert removed == set() and "target group" in kept["i-1"]


def test_hosts_a_running_promotion_replaced_stay_until_that_run_ends():
    # Out of the target group, but the run holding the lock may still put them back.
    host = Item("instance", "us-east-1", "i-old", "r-previous", NOW - 48 * HOUR,
                retiring="r-now")
    removed, kept = decide([host], locked_run="r-now")
    assert removed == set() and "may put it back" in kept["i-old"]
    # once that run has ended (no lock), a host it replaced and left is an orphan
    removed, _ = decide([host], locked_run=None)
    assert removed == {"i-old"}


def test_live_and_rollback_images_and_the_newest_are_kept():
    items = [old("image", "ami-live", age=90 * HOUR, snapshots=("snap-live",)),
             old("image", "ami-newest", age=30 * HOUR),
             old("image", "ami-old", age=60 * HOUR, snapshots=("snap-old",)),
             old("snapshot", "snap-live"), old("snapshot", "snap-old")]
    removed, kept = decide(items, live_images={"ami-live"})
    assert removed == {"ami-old"}  # its snapshot goes with it
    assert "record" in kept["ami-live"] and "newest" in kept["ami-newest"]
    assert "snap-live" in kept and "snap-old" not in kept


def test_the_newest_are_counted_per_region():
    items = [old("image", "ami-a", region="us-east-1"), old("image", "ami-b", region="eu-west-1")]
    removed, _ = decide(items)
    assert removed == set()


def test_the_run_holding_the_lock_and_young_resources_are_kept():
    items = [old("instance", "i-running", run="r-now"), old("instance", "i-young", age=HOUR)]
    removed, kept = decide(items, locked_run="r-now")
    assert removed == set()
    assert "lock" in kept["i-running"] and "younger" in kept["i-young"]


def test_the_newest_foundation_image_is_the_bake_cache_and_stays():
    items = [Item("image", "us-east-1", "ami-f-new", "r1", NOW - 30 * HOUR, (), "foundation"),
             Item("image", "us-east-1", "ami-f-old", "r0", NOW - 60 * HOUR, (), "foundation"),
             old("image", "ami-release", age=40 * HOUR)]
    removed, kept = decide(items)
    assert removed == {"ami-f-old"}
    assert "bake cache" in kept["ami-f-new"] and "newest" in kept["ami-release"]


def test_host_keys_kept_for_an_instance_that_is_gone_go_whatever_their_age():
    """collect offers a kept key only once its instance is gone: nothing uses it then."""
    key = Item("hostkey", "us-east-1", "/deploylib/lab/hostkeys/us-east-1/i-1", "", NOW)
    removed, kept = decide([key], locked_run="r-old")
    assert removed == {key.resource_id} and kept == {}


def test_only_what_carries_the_tools_whole_tag_set_for_the_environment_is_the_tools():
    from deploylib import aws, gc

    full = aws.tag_map(aws.tags("20261127T120000-abc123", "lab", "1.0", "immutable",
                                "candidate"))
    assert gc.made_by_the_tool(full, "lab")
    assert not gc.made_by_the_tool(full, "prod")
    for missing in gc.FULL_SET:
        assert not gc.made_by_the_tool({k: v for k, v in full.items() if k != missing}, "lab")
    assert not gc.made_by_the_tool({**full, aws.TAG_RUN: "someone's"}, "lab")


def test_what_server_groups_hold_stays_and_a_crashed_runs_group_goes():
    held = {"app-lab-v003": "the record names it live", "i-in-group": "server group owns it",
            "ami-behind": "server group app-lab-v003 launches from it"}
    removed, kept = decide([old("server-group", "app-lab-v003"), old("instance", "i-in-group"),
                            old("image", "ami-behind"), old("image", "ami-newer", age=30 * HOUR),
                            old("server-group", "app-lab-v004", run="r-crashed"),
                            old("template-version", "lt-1:4", run="r-crashed")],
                           held=held, keep_images=0)
    assert removed == {"app-lab-v004", "lt-1:4", "ami-newer"}
    assert kept == held
