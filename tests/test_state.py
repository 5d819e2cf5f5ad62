"""Run state files: created, saved atomically, loaded, and refused when damaged."""

from __future__ import annotations

import json
import threading

import pytest

from deploylib.errors import InputError, StateError
from deploylib.facts import Builder, Release
from deploylib.state import DONE, FAILED, RUNNING, RunState, StageKey, check_run_id, new_run_id


def make(tmp_path, **kw):
    return RunState.create(tmp_path, env="lab", mode="in-place", version="1.0.1",
                           artifact="/a.tar.gz", **kw)


def test_a_run_round_trips_with_its_stage_outputs(tmp_path):
    state = make(tmp_path)
    state.facts.candidates["us-east-1"] = ["i-00000001", "i-00000002"]
    state.facts.builder = Builder(region="us-east-1", instance_id="i-00000009",
                                  base_image="ami-00000001", foundation="f" * 32,
                                  cache_hit=False)
    state.facts.team["announced"] = ["1.0.1"]
    state.mark("launch-candidates", RUNNING)
    state.mark("launch-candidates", DONE)
    loaded = RunState.load(tmp_path, state.run_id)
    assert loaded.facts == state.facts
    assert loaded.facts.builder.instance_id == "i-00000009"
    assert loaded.is_done("launch-candidates")
    assert loaded.stages[StageKey("launch-candidates")].seconds >= 0
    assert RunState.latest(tmp_path).run_id == state.run_id


def test_stage_keys_are_values_written_with_their_parts_and_read_back_from_them(tmp_path):
    state = make(tmp_path)
    keys = [StageKey("record"), StageKey.in_batch("rollout", 3, "drain"),
            StageKey.in_region("regions", "eu-west-1", "promote")]
    for key in keys:
        state.mark(key, DONE)
    data = json.loads(state.path.read_text())
    assert sorted(data["stages"]) == ["record", "regions/eu-west-1/promote", "rollout/3/drain"]
    assert data["stages"]["rollout/3/drain"]["batch"] == 3
    # the text is only a label: the parts are what a load reads
    data["stages"]["renamed"] = data["stages"].pop("rollout/3/drain")
    state.path.write_text(json.dumps(data))
    loaded = RunState.load(tmp_path, state.run_id)
    assert set(loaded.stages) == set(keys)
    assert loaded.members("rollout") == {keys[1]: loaded.stages[keys[1]]}


def test_a_failed_stage_keeps_its_error_until_it_runs_again(tmp_path):
    state = make(tmp_path)
    state.mark("promote", RUNNING)
    state.mark("promote", FAILED, error="boom")
    assert RunState.load(tmp_path, state.run_id).stages[StageKey("promote")].error == "boom"
    state.mark("promote", RUNNING)
    assert state.stages[StageKey("promote")].error is None


def test_saving_leaves_no_temporary_files(tmp_path):
    state = make(tmp_path)
    for i in range(5):
        state.facts.ssh_connections = i
        state.save()
    assert [p.name for p in tmp_path.iterdir()] == [f"{state.run_id}.json"]


def test_regions_saving_from_threads_leave_a_whole_file(tmp_path):
    state = make(tmp_path)

    def region(name: str) -> None:
        for i in range(50):
            state.facts.candidates[f"{name * 2}-east-{i}"] = [f"i-{i:08x}"]
            state.mark(StageKey.in_region("regions", name, f"s{i}"), DONE)

    threads = [threading.Thread(target=region, args=(r,)) for r in ("a", "b", "c")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    loaded = RunState.load(tmp_path, state.run_id)
    assert len(loaded.facts.candidates) == 150 and len(loaded.stages) == 150


def test_run_ids_are_checked_and_unique(tmp_path):
    ids = {new_run_id() for _ in range(50)}
    assert len(ids) == 50 and all(check_run_id(i) for i in ids)
    for bad in ("", "../../etc/passwd", "20261127T120000", "x" * 30,
                "20261127T120000-abcdef\n"):
        with pytest.raises(InputError):
            check_run_id(bad)
    state = make(tmp_path)
    with pytest.raises(StateError, match="exists already"):
        make(tmp_path, run_id=state.run_id)


def test_a_missing_run_is_bad_input_and_a_corrupt_one_a_state_error(tmp_path):
    with pytest.raises(InputError, match="no run"):
        RunState.load(tmp_path, "20261127T120000-abcdef")
    path = tmp_path / "20261127T120000-abcdef.json"
    path.write_text("{not json")
    with pytest.raises(StateError, match="not valid JSON"):
        RunState.load(tmp_path, "20261127T120000-abcdef")
    path.write_text(json.dumps({"run_id": "x"}))
    with pytest.raises(StateError, match="lacks required fields"):
        RunState.load(tmp_path, "20261127T120000-abcdef")
    good = make(tmp_path)
    data = json.loads(good.path.read_text())
    data["facts"]["candidates"] = "not a mapping"
    good.path.write_text(json.dumps(data))
    with pytest.raises(StateError, match="candidates = 'not a mapping'"):
        RunState.load(tmp_path, good.run_id)


@pytest.mark.parametrize("where,value", [
    ("version", "1.0\ntouch /tmp/x #"),
    ("env", "lab; reboot"),
    ("mode", "anything"),
    ("run_id", "20261127T120000-abcdef\n"),
    ("facts.release.sha256", "$(reboot)"),
    ("facts.release.key", "releases/lab/../../secrets"),
    ("facts.images", {"us-east-1": "ami-1; reboot"}),
    ("facts.candidates", {"us-east-1": ["i-00000001 && id"]}),
    ("facts.batches", [[{"region": "$(id)", "instance_id": "i-00000001"}]]),
])
def test_a_hostile_value_in_a_state_file_stops_the_load_in_one_line(tmp_path, where, value):
    """What a run reads back is held to the shapes input is: a state file someone wrote
    into (a shared workspace, an archived copy) cannot steer the run."""
    state = make(tmp_path)
    state.facts.release = Release(version="1.0.0", sha256="0" * 64, bucket="artifacts",
                                  key="releases/lab/1.0.0.tar.gz")
    state.save()
    data = json.loads(state.path.read_text())
    *parents, last = where.split(".")
    node = data
    for name in parents:
        node = node[name]
    node[last] = value
    state.path.write_text(json.dumps(data))
    with pytest.raises(StateError) as refused:
        RunState.load(tmp_path, state.run_id)
    assert "\n" not in refused.value.line() and "Fix:" in refused.value.line()


def test_a_new_state_directory_is_private_to_its_owner(tmp_path):
    import stat

    state = RunState.create(tmp_path / "runs", env="lab", mode="in-place", version="1.0.0",
                            artifact="")
    assert stat.S_IMODE(state.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o600
