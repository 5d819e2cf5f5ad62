"""deploylib.runstore: a run's state in the environment's bucket, each write only over
the one its writer last saw (moto's S3, which honours If-Match and If-None-Match)."""

from __future__ import annotations

import secrets

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deploylib import config, runstore
from deploylib.errors import LockHeld
from deploylib.state import DONE, FAILED, RunState, StageKey
from tests.conftest import write_config


@pytest.fixture
def env(tmp_path, aws_clients):
    bucket = f"runs-{secrets.token_hex(4)}"
    aws_clients.s3().create_bucket(Bucket=bucket)
    return config.load(write_config(tmp_path, artifact_bucket=bucket)).environment("lab")


def _stored(aws_clients, env, state) -> RunState:
    got = aws_clients.s3().get_object(Bucket=env.artifact_bucket,
                                      Key=runstore.key(env.name, state.run_id))
    return RunState.parse(got["Body"].read().decode(), state.path, state.run_id)


def _run(env) -> RunState:
    return RunState.create(env.state_dir, env=env.name, mode="in-place", version="1.2.3",
                           artifact="")


def test_every_save_is_in_the_store_once_attached(env, aws_clients):
    state = _run(env)
    runstore.attach(aws_clients.s3(), env, state)
    assert _stored(aws_clients, env, state).status == state.status
    state.mark("publish-release", DONE)
    assert _stored(aws_clients, env, state).is_done("publish-release")


def test_a_writer_that_was_overtaken_is_refused_and_changes_nothing(env, aws_clients):
    state = _run(env)
    runstore.attach(aws_clients.s3(), env, state)
    # another machine resumes the run from the store, and takes it further
    elsewhere = runstore.fetch(aws_clients.s3(), env, state.run_id)
    assert elsewhere is not None
    runstore.attach(aws_clients.s3(), env, elsewhere)
    elsewhere.facts.lock_fence = 2  # its own take of the run's lock, as a resume takes
    elsewhere.mark("publish-release", DONE)
    with pytest.raises(LockHeld) as info:
        state.mark("select-hosts", DONE)  # the first controller, back
    assert "resumed elsewhere" in info.value.problem
    # and stays refused: its cleanup's saves, its last save, write nothing either
    with pytest.raises(LockHeld):
        state.mark("select-hosts", FAILED)
    stored = _stored(aws_clients, env, state)
    assert stored.is_done("publish-release") and "select-hosts" not in stored.top


def test_a_process_takes_the_stores_newer_copy_over_its_own_cache(env, aws_clients):
    state = _run(env)
    runstore.attach(aws_clients.s3(), env, state)
    ahead = RunState.load(env.state_dir, state.run_id)
    ahead.mirror = state.mirror
    ahead.mark("publish-release", DONE)
    stale = RunState.create(env.state_dir + "-other", env=env.name, mode="in-place",
                            version="1.2.3", artifact="", run_id=state.run_id)
    runstore.attach(aws_clients.s3(), env, stale)
    assert stale.is_done("publish-release")
    assert RunState.load(env.state_dir + "-other", state.run_id).is_done("publish-release")


def test_saves_that_never_reached_the_store_are_not_lost_to_its_older_copy(env, aws_clients):
    state = _run(env)
    runstore.attach(aws_clients.s3(), env, state)
    state.mark("publish-release", DONE)
    # the process stopped between its file and the store: the last save is only here
    state.mirror = None
    state.mark("select-hosts", DONE)
    again = RunState.load(env.state_dir, state.run_id)  # `invoke resume`, same machine
    runstore.attach(aws_clients.s3(), env, again)
    assert again.is_done("select-hosts")
    assert _stored(aws_clients, env, state).is_done("select-hosts")


def _sibling(aws_clients, env, state, state_dir) -> RunState:
    """The same run as another process under the same lock take sees it: a region's lane
    on another Jenkins agent (a workspace of its own, the store's copy)."""
    other = RunState.create(state_dir, env=env.name, mode=state.mode, version=state.version,
                            artifact="", run_id=state.run_id)
    runstore.attach(aws_clients.s3(), env, other)
    return other


def test_writers_under_one_lock_take_each_keep_their_lanes(env, aws_clients, tmp_path):
    state = _run(env)
    state.facts.lock_fence = 4
    runstore.attach(aws_clients.s3(), env, state)
    east = _sibling(aws_clients, env, state, tmp_path / "east")
    west = _sibling(aws_clients, env, state, tmp_path / "west")
    east_key = StageKey.in_region("regions", "us-east-1", "promote")
    west_key = StageKey.in_region("regions", "us-west-2", "promote")
    east.facts.candidates["us-east-1"] = ["i-0000000000000000e"]
    east.mark(east_key, DONE)
    west.facts.candidates["us-west-2"] = ["i-000000000000000f0"]
    west.facts.ssh_connections += 2
    west.mark(west_key, DONE)  # over east's write: west's changes go onto it
    east.facts.ssh_connections += 3
    east.mark(StageKey.in_region("regions", "us-east-1", "smoke-test"), DONE)
    stored = _stored(aws_clients, env, state)
    assert stored.is_done(east_key) and stored.is_done(west_key)
    assert stored.facts.candidates == {"us-east-1": ["i-0000000000000000e"],
                                       "us-west-2": ["i-000000000000000f0"]}
    assert stored.facts.ssh_connections == 5
    # each process's cache is as full as the store was when it last wrote
    assert RunState.load(tmp_path / "east", state.run_id).is_done(west_key)


def test_what_one_writer_removed_stays_removed_under_anothers_write(env, aws_clients, tmp_path):
    state = _run(env)
    state.facts.candidates["us-east-1"] = ["i-0000000000000000e"]
    runstore.attach(aws_clients.s3(), env, state)
    other = _sibling(aws_clients, env, state, tmp_path / "other")
    del state.facts.candidates["us-east-1"]  # discarded
    state.save()
    other.mark("select-hosts", DONE)
    stored = _stored(aws_clients, env, state)
    assert stored.facts.candidates == {} and stored.is_done("select-hosts")


@given(st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3)),
       st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3)),
       st.dictionaries(st.sampled_from("efgh"), st.integers(0, 3)))
def test_changes_to_values_only_one_writer_touched_all_survive(base, ours, theirs_extra):
    theirs = {**base, **theirs_extra}
    merged = runstore._onto(base, ours, theirs)
    assert {k: v for k, v in merged.items() if k in "abcd"} == ours
    assert {k: merged[k] for k in theirs_extra} == theirs_extra


def test_a_run_the_store_does_not_have_is_none(env, aws_clients):
    assert runstore.fetch(aws_clients.s3(), env, "20261208T000000-abcdef") is None


def test_a_save_whose_answer_an_interrupt_cut_off_is_not_taken_for_another_writer(
        env, aws_clients):
    # Ctrl-C between the PUT landing and its ETag arriving: the next save (the failure
    # record) must go over the process's own write, not stop as if resumed elsewhere.
    s3 = aws_clients.s3()
    state = _run(env)
    runstore.attach(s3, env, state)

    def interrupt(**_):
        raise KeyboardInterrupt

    s3.meta.events.register("after-call.s3.PutObject", interrupt)
    with pytest.raises(KeyboardInterrupt):
        state.mark("publish-release", DONE)
    s3.meta.events.unregister("after-call.s3.PutObject", interrupt)
    assert _stored(aws_clients, env, state).is_done("publish-release")  # it did land
    state.mark("launch-builder", DONE)
    stored = _stored(aws_clients, env, state)
    assert stored.is_done("publish-release") and stored.is_done("launch-builder")
    # and a real second writer is still refused after that
    elsewhere = runstore.fetch(s3, env, state.run_id)
    assert elsewhere is not None
    runstore.attach(s3, env, elsewhere)
    elsewhere.facts.lock_fence = 2
    elsewhere.mark("select-hosts", DONE)
    with pytest.raises(LockHeld):
        state.mark("wait-ssh", DONE)
