"""The runner's bookkeeping: starting, adopting a handoff, finding runs, timings."""

from __future__ import annotations

import json

import pytest

from deploylib import config, runner
from deploylib import plan as planning
from deploylib.errors import InputError
from deploylib.state import DONE, RunState
from tests.conftest import write_config


@pytest.fixture
def cfg(tmp_path):
    return config.load(write_config(tmp_path))


def test_adopting_a_handoff_marks_the_bake_done(cfg):
    handoff = {"run_id": "20261127T120000-abc123", "env": "lab", "version": "1.2.3",
               "release": {"sha256": "0" * 64}, "images": {"us-east-1": "ami-1"}}
    state = runner.adopt(cfg, handoff)
    done = [n for n in planning.plan("immutable").names() if state.is_done(n)]
    bake = [s.name for s in planning.plan("immutable").stages if s.phase == planning.BAKE]
    assert done == bake
    assert state.facts["images"] == {"us-east-1": "ami-1"}
    assert runner.adopt(cfg, handoff).run_id == state.run_id  # a replay continues it
    env, loaded = runner.load_run(cfg, state.run_id)
    assert env.name == "lab" and loaded.facts["release"] == {"sha256": "0" * 64}


@pytest.mark.parametrize("handoff", [{}, {"run_id": "x"}, {
    "run_id": "../../x", "env": "lab", "version": "1", "release": {}, "images": {}}, {
    "run_id": "20261127T120000-abc123", "env": "lab", "version": "1;ls", "release": {},
    "images": {}}])
def test_a_bad_handoff_is_refused(cfg, handoff):
    with pytest.raises(InputError):
        runner.adopt(cfg, handoff)


def test_timings_measure_time_to_live_to_the_end_of_promotion(tmp_path):
    state = RunState.create(tmp_path, env="lab", mode="immutable", version="1",
                            artifact="")
    state.stages = {
        "publish-release": {"status": DONE, "started_at": 100.0, "ended_at": 101.0,
                            "seconds": 1.0},
        "promote": {"status": DONE, "started_at": 101.0, "ended_at": 110.0, "seconds": 9.0},
        "record": {"status": DONE, "started_at": 110.0, "ended_at": 111.0, "seconds": 1.0},
        "rollout/1/drain": {"status": DONE, "started_at": 100.0, "ended_at": 200.0},
    }
    t = runner.timings(state)
    assert t["time_to_live"] == 10.0 and t["total"] == 11.0
    assert [s["name"] for s in t["stages"]] == ["publish-release", "promote", "record"]
    text = runner.summary(state)
    assert "time to live: 10.00s" in text and json.dumps(t)


def test_start_refuses_bad_input_before_creating_anything(cfg, tmp_path):
    env = cfg.environment("lab")
    for kwargs in ({"mode": "nope", "version": "1"}, {"mode": "in-place", "version": "1 2"},
                   {"mode": "in-place", "version": "1", "artifact": str(tmp_path / "x.tgz")}):
        with pytest.raises(InputError):
            runner.start(cfg, env_name="lab", artifact=kwargs.pop("artifact", None), **kwargs)
    assert env.state_dir == str(tmp_path / "runs")
    assert not list((tmp_path / "runs").glob("*.json"))


def test_start_needs_the_lab_running(cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("DEPLOY_LAB_DIR", str(tmp_path / "no-lab"))
    with pytest.raises(InputError, match="the lab is not running"):
        runner.start(cfg, mode="in-place", version="1.0.0", env_name="lab", artifact=None)
