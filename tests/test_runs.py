"""A run's life outside the engine: started (bad input refused first), adopted from a
bake handed off by its id, found again by id, and where its files are."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from deploylib import config, runs, runstore
from deploylib import plan as planning
from deploylib.errors import InputError, LockHeld
from deploylib.facts import Release
from deploylib.state import DONE, RunState
from tests.conftest import write_config

# One bucket for the module's runs, and the module on one worker: two adopting the same
# run id at once would overtake each other.
pytestmark = pytest.mark.xdist_group("test_runs")
BUCKET = "deploylab-runs-tests"


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


def baked(cfg, aws_clients, mode: str = "immutable", *, bake_done: bool = True) -> RunState:
    """A run as `invoke bake` leaves it in the store when it hands off: its bake stages
    done, its release and images in its facts, its lock held; then gone from this machine
    (the Jenkins agent that adopts it has none of the bake's files)."""
    from deploylib import lock

    env = cfg.environment("lab")
    state = RunState.create(env.state_dir, env="lab", mode=mode, version="1.2.3",
                            artifact="")
    state.facts.lock_fence = lock.acquire(aws_clients.dynamodb(), env.lock_table, "lab",
                                          state.run_id, ttl=60)["fence"]
    state.facts.release = Release(version="1.2.3", sha256="0" * 64, bucket=BUCKET,
                                  key="releases/lab/1.2.3.tar.gz")
    state.facts.images = {"us-east-1": "ami-00000001"}
    runstore.attach(aws_clients.s3(), env, state)
    bake = [s.name for s in planning.plan(mode).stages if s.phase == planning.BAKE]
    for name in bake[:None if bake_done else -1]:
        state.mark(name, DONE)
    state.mirror = None
    state.path.unlink()
    return state


@pytest.fixture
def adopt(cfg, aws_clients):
    return lambda run_id: runs.adopt(cfg, "lab", run_id, aws_clients)


def test_adopting_a_bake_takes_its_run_from_the_store_with_a_lock_take_of_its_own(
        cfg, adopt, aws_clients):
    from deploylib import lock

    bake = baked(cfg, aws_clients)
    state = adopt(bake.run_id)
    plan = planning.plan("immutable")
    done = [n for n in plan.names() if state.is_done(n)]
    assert done == [s.name for s in plan.stages if s.phase == planning.BAKE]
    assert all(state.entry(n).elsewhere for n in done)
    assert state.facts.images == {"us-east-1": "ami-00000001"} and state.facts.adopted
    assert state.facts.release.sha256 == "0" * 64
    held = lock.read(aws_clients.dynamodb(), cfg.environment("lab").lock_table, "lab")
    assert held["run_id"] == bake.run_id and state.facts.lock_fence == held["fence"]
    # kept here, and in the store as adopted
    env, loaded = runs.load_run(cfg, bake.run_id)
    assert env.name == "lab" and loaded.facts.adopted and loaded.stages == state.stages
    # the bake's process, were it to write again, is refused: the run is the adopter's
    bake.mirror = runstore.Mirror(aws_clients.s3(), BUCKET, runstore.key("lab", bake.run_id),
                                  None, "\"stale\"")
    with pytest.raises(LockHeld):
        bake.mark("wait-image", DONE)


@pytest.mark.parametrize("case, words", [
    ("unknown", "store has no run"),
    ("in-place", "has no bake phase to hand off"),
    ("bake not done", "bake is not done: copy-image is pending"),
    ("done", "is done already"),
])
def test_a_run_that_cannot_be_adopted_is_refused_leaving_the_lock_as_it_was(
        cfg, adopt, aws_clients, case, words):
    from deploylib import lock

    def held():
        return lock.read(aws_clients.dynamodb(), cfg.environment("lab").lock_table, "lab")

    if case == "unknown":
        run_id = "20261127T120000-abc123"
    elif case == "in-place":
        run_id = baked(cfg, aws_clients, "in-place").run_id
    elif case == "bake not done":
        run_id = baked(cfg, aws_clients, bake_done=False).run_id
    else:
        state = baked(cfg, aws_clients)
        runstore.attach(aws_clients.s3(), cfg.environment("lab"), state)
        state.status = DONE
        state.save()
        state.path.unlink()
        run_id = state.run_id
    before = held()
    with pytest.raises(InputError) as refused:
        adopt(run_id)
    assert words in refused.value.line() and "\n" not in refused.value.line()
    assert held() == before  # not taken again (the bake's, or nobody's)
    assert not list(Path(cfg.environment("lab").state_dir).glob("*.json"))


def test_a_bad_run_id_is_refused_before_anything_is_read(cfg, adopt):
    with pytest.raises(InputError, match="is not valid"):
        adopt("../../x")


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


def test_a_runs_files_are_named_relative_to_the_workspace(cfg, adopt, aws_clients, tmp_path,
                                                          monkeypatch):
    state = adopt(baked(cfg, aws_clients).run_id)
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

