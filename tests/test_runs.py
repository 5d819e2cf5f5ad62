"""A run's life outside the engine: started (bad input refused first), adopted from a
bake's handoff, found again by id, and where its files are."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from deploylib import config, runs
from deploylib import plan as planning
from deploylib.errors import InputError
from tests.conftest import write_config

# One bucket for the module's runs (a handoff names its bucket when it is collected), and
# the module on one worker: two adopting the same run id at once would overtake each other.
pytestmark = pytest.mark.xdist_group("test_runs")
BUCKET = "deploylab-runs-tests"
HANDOFF = {"run_id": "20261127T120000-abc123", "env": "lab", "mode": "immutable",
           "version": "1.2.3", "images": {"us-east-1": "ami-00000001"},
           "release": {"version": "1.2.3", "sha256": "0" * 64, "bucket": BUCKET,
                       "key": "releases/lab/1.2.3.tar.gz"}}


@pytest.fixture
def cfg(tmp_path, aws_clients):
    """The lab environment with a lock table of its own in the tests' moto server, and a
    bucket (where its runs are kept)."""
    table = f"locks-{secrets.token_hex(4)}"
    aws_clients.dynamodb().create_table(
        TableName=table, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "env", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "env", "KeyType": "HASH"}])
    if BUCKET not in {b["Name"] for b in aws_clients.s3().list_buckets()["Buckets"]}:
        aws_clients.s3().create_bucket(Bucket=BUCKET)
    return config.load(write_config(tmp_path, lock_table=table, artifact_bucket=BUCKET))


@pytest.fixture
def adopt(cfg, aws_clients):
    return lambda handoff: runs.adopt(cfg, handoff, aws_clients)


def test_adopting_a_handoff_marks_the_bake_done(cfg, adopt):
    state = adopt(HANDOFF)
    plan = planning.plan("immutable")
    done = [n for n in plan.names() if state.is_done(n)]
    assert done == [s.name for s in plan.stages if s.phase == planning.BAKE]
    assert state.facts.images == {"us-east-1": "ami-00000001"} and state.facts.adopted
    assert adopt(HANDOFF).run_id == state.run_id  # a replay continues it
    env, loaded = runs.load_run(cfg, state.run_id)
    assert env.name == "lab" and loaded.facts.release.sha256 == "0" * 64
    assert loaded.stages == state.stages


def test_a_bake_hands_off_what_adopting_needs(cfg, adopt, tmp_path):
    state = adopt(HANDOFF)
    assert runs.handoff_of(state) == {**HANDOFF, "release": {**HANDOFF["release"],
                                                              "size": None,
                                                              "version_id": None}}


@pytest.mark.parametrize("handoff", [
    {}, {"run_id": "x"},
    {**HANDOFF, "run_id": "../../x"},
    {**HANDOFF, "version": "1;ls"},
    {**HANDOFF, "release": {"version": "1.2.3"}},
    {**HANDOFF, "mode": "in-place"},  # nothing of it ran elsewhere
    {**HANDOFF, "mode": "sideways"},
    {**HANDOFF, "images": {"us-east-1": "ami-1; reboot"}},
    {**HANDOFF, "images": {"$(id)": "ami-00000001"}},
    {**HANDOFF, "release": {**HANDOFF["release"], "sha256": "x" * 64}},
    {**HANDOFF, "release": {**HANDOFF["release"], "bucket": "someone-elses"}},
    {**HANDOFF, "release": {**HANDOFF["release"], "version": "1.2.4",
                            "key": "releases/lab/1.2.4.tar.gz"}},
    {**HANDOFF, "release": {**HANDOFF["release"], "key": "releases/lab/../prod/1.2.3.tar.gz"}},
    {**HANDOFF, "extra": "anything"},
])
def test_a_bad_handoff_is_refused(cfg, adopt, handoff):
    """A HANDOFF comes back through a Jenkins parameter: every value is held to its shape
    and the release is this environment's, in one line, before a state file exists."""
    with pytest.raises(InputError) as refused:
        adopt(handoff)
    assert "\n" not in refused.value.line()
    assert not list(Path(cfg.environment("lab").state_dir).glob("*.json"))


def test_a_handoff_at_odds_with_its_run_here_is_refused_leaving_the_lock_free(
        cfg, adopt, aws_clients):
    """The workspace holds the bake's run as another release: refused in one line before
    the lock is taken, so nothing is held for a run that never goes on."""
    from deploylib import lock

    env = cfg.environment("lab")
    state = adopt(HANDOFF)
    lock.release(aws_clients.dynamodb(), env.lock_table, "lab", state.run_id)
    with pytest.raises(InputError, match="exists here as immutable 1.2.3"):
        adopt({**HANDOFF, "version": "1.2.4", "release": {
            **HANDOFF["release"], "version": "1.2.4", "key": "releases/lab/1.2.4.tar.gz"}})
    assert lock.read(aws_clients.dynamodb(), env.lock_table, "lab") is None


def test_start_refuses_bad_input_before_creating_anything(cfg, tmp_path):
    env = cfg.environment("lab")
    for kwargs in ({"mode": "nope", "version": "1"}, {"mode": "in-place", "version": "1 2"},
                   {"mode": "in-place", "version": "1", "artifact": str(tmp_path / "x.tgz")}):
        with pytest.raises(InputError):
            runs.start(cfg, env_name="lab", artifact=kwargs.pop("artifact", None), **kwargs)
    assert env.state_dir == str(tmp_path / "runs")
    assert not list((tmp_path / "runs").glob("*.json"))


def test_start_needs_the_lab_running(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_LAB_DIR", str(tmp_path / "no-lab"))
    with pytest.raises(InputError, match="the lab is not running"):
        runs.start(cfg, mode="in-place", version="1.0.0", env_name="lab", artifact=None)
    # the artifact it built first is where runs are: private from the start
    assert (tmp_path / "runs").stat().st_mode & 0o777 == 0o700


def test_a_runs_files_are_named_relative_to_the_workspace(cfg, adopt, tmp_path, monkeypatch):
    state = adopt(HANDOFF)
    monkeypatch.chdir(tmp_path)
    paths = runs.paths(cfg.environment("lab"), state)
    assert paths == {"state": f"runs/{state.run_id}.json", "run_dir": f"runs/{state.run_id}",
                     "junit": f"runs/{state.run_id}/junit/*.xml",
                     "report": f"runs/{state.run_id}/report"}
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")  # outside the workspace: the full path
    assert runs.paths(cfg.environment("lab"), state)["state"] == str(state.path)


@pytest.mark.parametrize("fleet, fold, mode, folds", [
    ("server-groups", "after-deploy", "in-place", True),
    # its group launches from the image it made already
    ("server-groups", "after-deploy", "rebake-light", False),
    ("server-groups", "after-deploy", "immutable", False),  # its image carries the release
    ("server-groups", "after-deploy", "rollback-in-place", False),
    ("server-groups", "manual", "in-place", False),
    ("instances", "after-deploy", "in-place", False),  # no launch template to fold into
])
def test_what_a_deploy_folds_after(tmp_path, fleet, fold, mode, folds):
    env = config.load(write_config(tmp_path, fleet=fleet, fold=fold)).environment("lab")
    assert runs.folds_after(env, mode) is folds

