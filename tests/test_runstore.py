"""deploylib.runstore: a run's state in the environment's bucket, each write only over
the one its writer last saw (moto's S3, which honours If-Match and If-None-Match)."""

from __future__ import annotations

import secrets

import pytest

from deploylib import config, runstore
from deploylib.errors import LockHeld
from deploylib.state import DONE, RunState
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
    elsewhere.mark("publish-release", DONE)
    with pytest.raises(LockHeld) as info:
        state.mark("select-hosts", DONE)  # the first controller, back
    assert "resumed elsewhere" in info.value.problem
    stored = _stored(aws_clients, env, state)
    assert stored.is_done("publish-release") and not stored.is_done("select-hosts")


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
    elsewhere.mark("select-hosts", DONE)
    with pytest.raises(LockHeld):
        state.mark("wait-ssh", DONE)
