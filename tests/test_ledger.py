"""deploylib.ledger: what each region's new hosts launch from and what lies on top."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from deploylib import ledger

IMAGE, GROUP = "ami-0000000a", "app-lab-v001"


def step(entry, release, *, how=ledger.IN_PLACE, image=IMAGE, group=GROUP, baked="1.0.0"):
    return ledger.advance(entry, group=group, image=image, baked=baked, release=release,
                          how=how, since=f"t-{release}")


def test_a_bake_carries_what_is_live_and_a_hotfix_is_a_layer_on_it():
    baked = step(None, "1.0.0", how=ledger.BOOT)
    assert baked.layers == () and baked.top == "1.0.0"
    hotfixed = step(step(baked, "1.0.1"), "1.0.2")
    assert [(la.release, la.how, la.since) for la in hotfixed.layers] == [
        ("1.0.1", "in-place", "t-1.0.1"), ("1.0.2", "in-place", "t-1.0.2")]
    assert ledger.describe("us-east-1", hotfixed) == (
        "us-east-1: app-lab-v001 launches from ami-0000000a (baked 1.0.0); on top: "
        "1.0.1 in-place since t-1.0.1, 1.0.2 in-place since t-1.0.2")


def test_a_rollback_in_place_goes_back_to_the_layer_below_or_to_the_bake():
    hotfixed = step(step(step(None, "1.0.0"), "1.0.1"), "1.0.2")
    back = step(hotfixed, "1.0.1")
    assert [la.release for la in back.layers] == ["1.0.1"]
    assert step(back, "1.0.0").layers == ()


def test_a_new_group_or_image_starts_from_its_own_bake():
    hotfixed = step(step(None, "1.0.0"), "1.0.1")
    # rebake-light: a new group from the same image, the release installed at its boot
    light = step(hotfixed, "1.1.0", how=ledger.BOOT, group="app-lab-v002")
    assert [(la.release, la.how) for la in light.layers] == [("1.1.0", "boot")]
    # immutable: a new image carrying the release
    assert step(light, "1.2.0", image="ami-0000000b", group="app-lab-v003",
                baked="1.2.0").layers == ()


def test_fold_closes_the_drift_in_the_same_group():
    hotfixed = step(step(None, "1.0.0"), "1.0.1")
    folded = ledger.folded(hotfixed, image="ami-0000000c", release="1.0.1")
    assert folded.group == GROUP and folded.baked == "1.0.1" and folded.layers == ()
    assert ledger.describe("r", folded).endswith("nothing layered on top")


def test_only_the_newest_layers_are_kept_and_the_older_counted():
    entry = step(None, "1.0.0")
    for n in range(1, 7):
        entry = step(entry, f"1.0.{n}")
    assert [la.release for la in entry.layers] == ["1.0.4", "1.0.5", "1.0.6"]
    assert entry.dropped == 3 and ledger.describe("r", entry).endswith("(and 3 older)")


@given(st.lists(st.sampled_from(["1.0.0", "1.0.1", "1.0.2", "1.1.0", "2.0.0"]), min_size=1,
                max_size=12))
def test_on_one_image_the_top_is_always_the_release_recorded_last(releases):
    entry = None
    for release in releases:
        entry = step(entry, release)
        assert entry.top == release
        assert len(entry.layers) <= ledger.KEPT_LAYERS
        assert len({la.release for la in entry.layers}) == len(entry.layers)
        assert "1.0.0" not in [la.release for la in entry.layers]  # the baked one
