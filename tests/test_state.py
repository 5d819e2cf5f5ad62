"""Run state files: created, saved atomically, loaded, and refused when damaged."""

from __future__ import annotations

import json

import pytest

from deploylib.errors import InputError, StateError
from deploylib.state import DONE, FAILED, RUNNING, RunState, check_run_id, new_run_id


def make(tmp_path, **kw):
    return RunState.create(tmp_path, env="lab", mode="in-place", version="1.0.1",
                           artifact="/a.tar.gz", **kw)


def test_a_run_round_trips_with_its_stage_outputs(tmp_path):
    state = make(tmp_path)
    state.facts["candidates"] = {"us-east-1": ["i-1", "i-2"]}
    state.mark("launch-candidates", RUNNING)
    state.mark("launch-candidates", DONE)
    loaded = RunState.load(tmp_path, state.run_id)
    assert loaded.facts == {"candidates": {"us-east-1": ["i-1", "i-2"]}}
    assert loaded.is_done("launch-candidates")
    assert loaded.stages["launch-candidates"]["seconds"] >= 0
    assert RunState.latest(tmp_path).run_id == state.run_id


def test_a_failed_stage_keeps_its_error_until_it_runs_again(tmp_path):
    state = make(tmp_path)
    state.mark("promote", RUNNING)
    state.mark("promote", FAILED, error="boom")
    assert RunState.load(tmp_path, state.run_id).stages["promote"]["error"] == "boom"
    state.mark("promote", RUNNING)
    assert "error" not in state.stages["promote"]


def test_saving_leaves_no_temporary_files(tmp_path):
    state = make(tmp_path)
    for i in range(5):
        state.facts["n"] = i
        state.save()
    assert [p.name for p in tmp_path.iterdir()] == [f"{state.run_id}.json"]


def test_run_ids_are_checked_and_unique(tmp_path):
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50 and all(check_run_id(i) for i in ids)
    for bad in ("", "../../etc/passwd", "20261127T120000", "x" * 30):
        with pytest.raises(InputError):
            check_run_id(bad)
    state = make(tmp_path)
    with pytest.raises(StateError, match="exists already"):
        make(tmp_path, run_id=state.run_id)


def test_a_missing_run_is_bad_input_and_a_corrupt_one_a_state_error(tmp_path):
    with pytest.raises(InputError, match="no run"):
        RunState.load(tmp_path, "20261127T120000-abcdef")
    (tmp_path / "20261127T120000-abcdef.json").write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        RunState.load(tmp_path, "20261127T120000-abcdef")
    (tmp_path / "20261127T120000-abcdef.json").write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(StateError, match="lacks required fields"):
        RunState.load(tmp_path, "20261127T120000-abcdef")
