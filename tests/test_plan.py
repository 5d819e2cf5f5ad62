"""The procedures as data: a table of modes and their expected stages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploylib import catalog, config
from deploylib import plan as planning
from deploylib.errors import ConfigError, InputError

EXPECTED = {
    "immutable": ["publish-release", "launch-builder", "wait-ssh", "provision", "cache-foundation",
                  "install-release", "stop-builder", "create-image", "terminate-builder",
                  "copy-image", "regions", "record", "retire"],
    "rebake-light": ["publish-release", "regions", "create-image", "fold-template", "record",
                     "retire"],
    "in-place": ["publish-release", "select-hosts", "rollout", "record", "catch-up", "notify"],
    "rollback-in-place": ["locate-previous", "select-hosts", "rollout", "record", "catch-up",
                          "notify"],
    "rollback-image": ["locate-previous", "regions", "record", "retire"],
}
# What each region does, on its own thread, in the procedures that launch candidates.
PER_REGION = {
    "immutable": ["wait-image", "launch-candidates", "wait-ssh", "smoke-test", "promote"],
    "rebake-light": ["launch-candidates", "wait-ssh", "install-release", "smoke-test",
                     "promote"],
    "rollback-image": ["launch-candidates", "wait-ssh", "install-release", "smoke-test",
                       "promote"],
}


@pytest.mark.parametrize("mode", [*planning.MODES, *planning.ROLLBACK_MODES])
def test_each_procedure_is_an_ordering_of_catalog_steps(mode):
    p = planning.plan(mode)
    assert p.names() == EXPECTED[mode]
    if mode in PER_REGION:
        assert [s.name for s in p.stage("regions").members] == PER_REGION[mode]
        assert p.stage("regions").kind == planning.PER_REGION
    for stage in p.walk():
        if not stage.is_group:
            catalog.get(stage.step)  # every stage names a registered step
    for name in p.cleanup:
        catalog.get(name)


@pytest.mark.parametrize("mode", sorted(PER_REGION))
def test_replaced_hosts_retire_only_after_the_release_is_recorded(mode):
    # Until the record, a failure anywhere can put the replaced hosts back (demote).
    names = planning.plan(mode).names()
    assert names.index("regions") < names.index("record") < names.index("retire")
    assert planning.plan(mode).cleanup[0] == "demote"


def test_in_place_repeats_drain_install_check_put_back_per_batch():
    rollout = planning.plan("in-place").stage("rollout")
    assert rollout.kind == planning.PER_BATCH
    assert [s.name for s in rollout.members] == ["drain", "install-release", "health-check",
                                                 "put-back"]
    assert {s.targets for s in rollout.members} == {planning.BATCH}
    # a failed batch, then the hosts already updated: steps the plan names
    assert (rollout.recover, rollout.revert) == ("restore-batch", "locate-live")
    catalog.get(rollout.recover), catalog.get(rollout.revert)


def test_install_release_is_one_function_in_all_three_procedures():
    found = {}
    for mode in planning.MODES:
        stages = [s for s in planning.plan(mode).walk() if s.name == "install-release"]
        assert len(stages) == 1, mode
        found[mode] = catalog.get(stages[0].step).fn
    functions = set(found.values())
    assert len(functions) == 1
    from deploylib import steps

    assert functions == {steps.install_release}


def test_install_targets_the_builder_candidates_or_batch():
    targets = {m: next(s for s in planning.plan(m).walk() if s.name == "install-release").targets
               for m in planning.MODES}
    assert targets == {"immutable": "builder", "rebake-light": "candidates", "in-place": "batch"}


def test_bake_phase_ends_with_the_copies_started_and_each_region_waits_for_its_own():
    p = planning.plan("immutable")
    phases = [s.phase for s in p.stages]
    first_release = phases.index(planning.RELEASE)
    assert p.names()[first_release - 1] == "copy-image"
    assert p.names()[first_release] == "regions"
    assert p.stage("regions").members[0].name == "wait-image"
    assert set(phases[first_release:]) == {planning.RELEASE}
    assert {s.phase for s in p.stage("regions").members} == {planning.RELEASE}
    assert p.hands_off and not planning.plan("in-place").hands_off


def test_rebake_light_launches_from_the_live_image_and_immutable_from_the_baked_one():
    assert planning.plan("rebake-light").find("launch-candidates").option == {"image": "live"}
    assert planning.plan("immutable").find("launch-candidates").option == {"image": "baked"}


def test_plans_are_plain_data():
    data = planning.plan("in-place").to_dict()
    assert data["mode"] == "in-place"
    assert data["stages"][2]["kind"] == "per_batch"
    assert data["stages"][2]["per_batch"][1]["name"] == "install-release"
    data = planning.plan("rebake-light").to_dict()
    assert data["stages"][1]["per_region"][2]["name"] == "install-release"
    assert data["commit"] == "record" and data["rollback"] == "rollback-image"


def extra(**kw):
    return config.ExtraStage(**kw)


def test_an_extra_stage_goes_into_every_procedure_that_has_its_anchor():
    e = extra(step="warm-cache", after="install-release")
    for mode in planning.MODES:
        names = [s.name for s in planning.plan(mode, [e]).walk()]
        i = names.index("install-release")
        assert names[i + 1] == "warm-cache", mode


def test_an_extra_stage_before_a_stage_only_some_procedures_have():
    e = extra(step="scan-image", before="copy-image")
    assert "scan-image" in planning.plan("immutable", [e]).names()
    assert "scan-image" not in [s.name for s in planning.plan("in-place", [e]).walk()]


def test_an_extra_stage_anchored_nowhere_is_refused():
    with pytest.raises(ConfigError, match="no stage of any procedure"):
        planning.plan("in-place", [extra(step="x", after="launch-rockets")])


def test_an_extra_stage_may_not_reuse_a_stage_name():
    with pytest.raises(ConfigError, match="appear twice"):
        planning.plan("in-place", [extra(step="record", after="select-hosts")])


def test_unknown_mode():
    with pytest.raises(InputError, match="unknown mode"):
        planning.plan("sideways")


@pytest.mark.parametrize("hosts,size,expected", [
    ([], 2, []), ([1], 2, [[1]]), ([1, 2, 3], 1, [[1], [2], [3]]),
    ([1, 2, 3, 4, 5], 2, [[1, 2], [3, 4], [5]]), ([1, 2], 5, [[1, 2]])])
def test_batches(hosts, size, expected):
    assert planning.batches(hosts, size) == expected


def test_a_rollback_is_the_procedure_that_made_the_release_live_in_reverse():
    assert planning.rollback_mode("in-place") == "rollback-in-place"
    assert planning.rollback_mode("rollback-in-place") == "rollback-in-place"
    for procedure in ("immutable", "rebake-light", "rollback-image"):
        assert planning.rollback_mode(procedure) == "rollback-image"
    # the same rollout group, the same steps: a rollback is no second system
    assert planning.plan("rollback-in-place").stage("rollout") == \
        planning.plan("in-place").stage("rollout")


def test_a_failed_bake_demotes_then_discards_candidates_then_images_then_the_builder():
    # derived from the steps' undo: the reverse of the stages that made what each removes
    # (demote first: promoted regions get their hosts back before candidates go); images
    # before the builder: a builder whose image is gone is forgotten too, so a resume
    # bakes again from launch-builder (the image was made from its hosts)
    assert planning.plan("immutable").cleanup == ("demote", "discard-candidates",
                                                  "discard-images", "discard-builder")
    assert planning.plan("immutable").restart_after("discard-images") == "launch-builder"
    assert planning.plan("rebake-light").restart_after("discard-candidates") == \
        "launch-candidates"
    # rebake-light images its candidates: with them gone, it starts from their launch
    assert planning.plan("rebake-light").restart_after("discard-images") == \
        "launch-candidates"


@pytest.mark.parametrize(("mode", "cleanup"), [
    ("rebake-light", ("demote", "restore-templates", "discard-images", "discard-candidates")),
    ("in-place", ("resume-scaling",)),
    ("rollback-in-place", ("resume-scaling",)),
    ("rollback-image", ("demote", "discard-candidates")),
    # a fold's groups launch from their own versions again before its image goes, and
    # the clean instance it imaged goes last
    (planning.FOLD, ("restore-templates", "discard-images", "discard-builder")),
])
def test_each_procedures_cleanup_is_the_undo_of_what_its_stages_make(mode, cleanup):
    assert planning.plan(mode).cleanup == cleanup


def test_cleanup_undoes_in_reverse_and_a_resume_restarts_where_the_hosts_were_launched():
    declared = {"make-a": ("undo-a", None), "boot": ("drop-hosts", "hosts"),
                "image": ("drop-image", None), "show": ("demote", None)}
    stages = (planning.Stage("make-a", "make-a"), planning.Stage("boot", "boot"),
              planning.Stage("image", "image", targets="hosts"),
              planning.Stage("other", "other"), planning.Stage("show", "show"))
    undo = {k: v[0] for k, v in declared.items()}
    launches = {k: v[1] for k, v in declared.items()}
    cleanup, restart = planning.undoing(stages, undo.get, launches.get)
    # reversed, but demote (users back on what they had) first
    assert cleanup == ("demote", "drop-image", "drop-hosts", "undo-a")
    assert dict(restart) == {"undo-a": "make-a", "drop-hosts": "boot",
                             "drop-image": "boot",  # made from boot's hosts
                             "demote": "show"}


def test_a_team_step_that_declares_its_undo_is_cleaned_up_in_every_procedure_it_joins(
        monkeypatch):
    from deploylib import catalog

    catalog.load()
    monkeypatch.setattr(catalog, "_steps", dict(catalog._steps))  # the registry, for this test
    catalog.step("t-plan-reserve", undo="t-plan-release")(lambda ctx: None)
    extra = type("Extra", (), {"step": "t-plan-reserve", "before": None,
                               "after": "publish-release"})()
    for mode in ("immutable", "in-place"):
        cleanup = planning.plan(mode, [extra]).cleanup
        assert cleanup[-1] == "t-plan-release"  # made first, undone last


@pytest.mark.parametrize("mode", ["immutable", "rebake-light", "in-place"])
def test_the_three_modes(mode):
    assert planning.check_mode(mode) == mode


@pytest.mark.parametrize("mode", ["", "Immutable", "inplace", "in-place ", "blue-green",
                                  "rollback-image"])
def test_unknown_modes(mode):
    with pytest.raises(InputError, match="unknown mode"):
        planning.check_mode(mode)


@pytest.mark.parametrize("mode", [*planning.MODES, *planning.ROLLBACK_MODES])
def test_the_plan_says_what_makes_the_release_live_and_what_publishes_junit(mode):
    p = planning.plan(mode)
    live = [s.name for s in p.walk() if s.live]
    junit = [s.name for s in p.walk() if s.junit]
    if mode in PER_REGION:
        assert live == ["promote"] and junit == ["smoke-test"]
        assert p.stage("regions").publishes_junit  # the Jenkins stage that runs it
    else:
        assert live == ["rollout"] and junit == []
    assert p.commit in p.names()


def test_what_a_record_keeps_and_how_an_image_is_made_are_the_plans():
    assert planning.plan("in-place").stage("record").option == {"images": "unchanged"}
    assert planning.plan("immutable").stage("record").option == {"images": "run"}
    # a serving candidate is imaged without a reboot; the stopped builder needs none
    assert planning.plan("rebake-light").stage("create-image").option == {"no_reboot": True}
    assert planning.plan("immutable").stage("create-image").option == {"no_reboot": False}


def test_a_restart_reruns_the_places_after_it_and_no_namesake_before_it():
    # wait-ssh stands twice in immutable: for the builder, and in each region for the
    # candidates; a resume after the candidates were discarded reruns only the latter
    later = planning.plan("immutable").rerun_from("launch-candidates")
    assert ("regions", "wait-ssh") in later and (None, "regions") in later
    assert (None, "wait-ssh") not in later and (None, "launch-builder") not in later
    assert (None, "record") in later and (None, "retire") in later


def test_an_extra_stage_after_a_name_that_stands_twice_goes_after_each():
    e = extra(step="warm-cache", after="wait-ssh")
    p = planning.plan("immutable", [e])
    names = p.names()
    assert names[names.index("wait-ssh") + 1] == "warm-cache"
    members = [s.name for s in p.stage("regions").members]
    assert members[members.index("wait-ssh") + 1] == "warm-cache"


def test_waves_are_a_canary_then_every_regions_batch_i_side_by_side():
    per_region = {"a": [["a1"], ["a2"], ["a3"]], "b": [["b1"], ["b2"]], "c": [["c1", "c2"]]}
    assert planning.waves(per_region, "a") == [
        ["a1"], ["a2", "b1", "c1", "c2"], ["a3", "b2"]]


@given(st.dictionaries(st.sampled_from("abcd"), st.integers(0, 9), min_size=1),
       st.integers(1, 4))
def test_waves_take_no_more_of_a_region_than_one_batch_and_keep_every_host_once(sizes, size):
    per_region = {r: planning.batches([f"{r}{i}" for i in range(n)], size)
                  for r, n in sizes.items()}
    first = sorted(sizes)[0]
    rolled = planning.waves(per_region, first)
    every = [host for batches in per_region.values() for batch in batches for host in batch]
    assert sorted(h for w in rolled for h in w) == sorted(every)
    for wave in rolled:
        for region in sizes:
            assert len([h for h in wave if h[0] == region]) <= size
    if per_region[first]:
        assert rolled[0] == per_region[first][0]  # the canary: alone, in the first region
    for region, b in per_region.items():  # each region's batches keep their order
        assert [h for w in rolled for h in w if h[0] == region] == [h for x in b for h in x]


def test_a_graceful_rollout_never_takes_its_hosts_out_of_their_target_groups():
    for mode in ("in-place", "rollback-in-place"):
        graceful = planning.plan(mode, graceful=True)
        assert [m.name for m in graceful.stage("rollout").members] == [
            "install-release", "health-check"]
        assert graceful.stage("rollout").recover == "restore-batch"
    # procedures that launch new hosts are the same either way
    for mode in ("immutable", "rebake-light"):
        assert planning.plan(mode, graceful=True).to_dict() == planning.plan(mode).to_dict()


def test_a_per_region_bake_bakes_in_every_regions_lane_and_copies_nothing():
    p = planning.plan("immutable", per_region_bake=True)
    names = [s.name for s in p.walk()]
    assert "copy-image" not in names and "wait-image" not in names
    lane = [m.step for m in p.stage("regions").members]
    assert lane.index("launch-builder") < lane.index("create-image") < \
        lane.index("launch-candidates") < lane.index("promote")
    assert not p.hands_off  # the bake is each region's own: nothing for Jenkins to take over
    assert p.cleanup == planning.plan("immutable").cleanup
    # the other procedures do not bake: the same either way
    assert planning.plan("rebake-light", per_region_bake=True).to_dict() == \
        planning.plan("rebake-light").to_dict()


def test_verification_windows_follow_each_batch_and_an_image_based_release_once_live():
    rollout = planning.plan("in-place", verify_batches=True).stage("rollout")
    assert [m.name for m in rollout.members][-2:] == ["put-back", "verify"]
    assert planning.plan("in-place", verify_batches=True, graceful=True).stage(
        "rollout").members[-1].name == "verify"
    for mode in ("immutable", "rebake-light"):
        names = planning.plan(mode, verify_live=True).names()
        # after every region is live, before anything is imaged, recorded or retired
        assert names[names.index("regions") + 1] == "verify"
        assert planning.plan(mode, verify_live=True).find("verify").option == {"window": "live"}
    # a rollback goes back to what served; a fold changes no host: neither is watched
    for mode in ("rollback-in-place", "rollback-image", "fold"):
        assert "verify" not in [s.name for s in planning.plan(mode, verify_batches=True,
                                                     verify_live=True).walk()]
    assert "verify" not in [s.name for s in planning.plan("in-place").walk()]
