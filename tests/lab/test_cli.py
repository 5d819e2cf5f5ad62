"""The command line against the lab: stages as separate processes (as Jenkins runs
them), a finished stage run again changes nothing, resume, a team's steps, push, and
releases published once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploylib import plan
from tests.lab.checks import (
    assert_serving,
    instances,
    lock_holder,
    record,
    runs,
    state_of,
)

pytestmark = pytest.mark.lab


def test_stages_run_as_separate_processes_and_a_finished_stage_is_a_no_op(lab):
    started = json.loads(lab.cli("start --mode in-place --version 2.0.0 --json").stdout)
    run_id = started["run_id"]
    assert started["mode"] == "in-place" and started["paths"]["state"].endswith(
        f"{run_id}.json")
    names = plan.plan("in-place").names()
    for n, name in enumerate(names):
        lab.cli(f"step {name} --run {run_id}")
        # the run holds its lock between its stages, and lets it go after the last
        holder = lock_holder(lab)
        assert holder == (run_id if n < len(names) - 1 else None), name
    state_path = Path(lab.env.state_dir) / f"{run_id}.json"
    state = json.loads(state_path.read_text())
    assert state["status"] == "done"
    assert [state["stages"][n]["status"] for n in names] == ["done"] * len(names)
    rec = record(lab)
    assert rec["release"] == "2.0.0" and rec["run_id"] == run_id
    assert_serving(lab, "2.0.0")

    before_instances, before_state = instances(lab), state_path.read_text()
    proc = lab.cli(f"step install-release --run {run_id}", check=False)
    assert proc.returncode == 2  # install-release is inside the rollout in this procedure
    assert "it runs inside rollout" in proc.stderr
    lab.cli(f"step rollout --run {run_id}")
    assert instances(lab) == before_instances
    after = json.loads(state_path.read_text())
    assert after["stages"] == json.loads(before_state)["stages"]
    proc = lab.cli(f"step rollout --run {run_id} --region {lab.env.primary_region}",
                   check=False)
    assert proc.returncode == 2 and "rollout is not run region by region" in proc.stderr


def test_a_lane_of_a_region_the_environment_does_not_have_is_refused(lab):
    run_id = json.loads(lab.cli("start --mode rebake-light --version 2.0.1 --json").stdout)[
        "run_id"]
    try:
        proc = lab.cli(f"step regions --run {run_id} --region mars-1", check=False)
        assert proc.returncode == 2 and "mars-1 is not a region of lab" in proc.stderr
        state = json.loads((Path(lab.env.state_dir) / f"{run_id}.json").read_text())
        assert not [k for k, e in state["stages"].items() if e["status"] != "pending"]
    finally:
        lab.cli(f"cleanup --run {run_id}")
    assert lock_holder(lab) is None


def test_an_artifact_swapped_between_stages_is_refused_before_it_is_published(lab, tmp_path):
    """The digest is fixed when the run starts (its artifact checked then); a later stage,
    in its own process, refuses another file at the same path: one line, nothing
    published, the live release still serving."""
    from deploylib import tarball
    from tests.conftest import REPO

    live = record(lab)["release"]
    artifact = tmp_path / "app.tar.gz"
    tarball.build(REPO / "examples/app", "6.1.0", tmp_path).rename(artifact)
    started = json.loads(lab.cli(f"start --mode in-place --version 6.1.0 --artifact {artifact} "
                                 "--json").stdout)
    run_id = started["run_id"]
    tarball.build(REPO / "examples/app", "6.1.1", tmp_path).rename(artifact)  # the swap
    proc = lab.cli(f"step publish-release --run {run_id}", check=False)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "the artifact changed since the run started" in errors[0]
    s3 = lab.clients().s3()
    listed = s3.list_objects_v2(Bucket=lab.env.artifact_bucket, Prefix="releases/lab/6.1.0")
    assert not listed.get("Contents")
    lab.cli(f"cleanup --run {run_id}")
    assert lock_holder(lab) is None  # cleanup let the lock go
    assert_serving(lab, live)


def test_plan_json_shows_one_install_function_in_all_three(lab):
    functions = set()
    for mode in ("immutable", "rebake-light", "in-place"):
        data = json.loads(lab.cli(f"plan --mode {mode} --json").stdout)
        stages = [*data["stages"], *(s for st in data["stages"] for s in st.get(st["kind"], [])
                                     if st["kind"] != "step")]
        installs = [s for s in stages if s["name"] == "install-release"]
        assert len(installs) == 1
        functions.add(installs[0]["function"])
    assert functions == {"deploylib.steps:install_release"}
    for mode in ("immutable", "rebake-light", "in-place"):
        data = json.loads(lab.cli(f"plan --mode {mode} --json").stdout)
        assert [s["name"] for s in data["stages"] if s["publishes_junit"]] == (
            ["regions"] if mode != "in-place" else [])


def test_a_team_step_and_hooks_run_inside_a_real_deploy(lab):
    from tests.conftest import REPO

    team = lab.write_config(name="team.toml", plugins=["team_steps"],
                            extra_stages=[{"step": "announce", "after": "install-release"}])
    env = dict(lab.cli.env(), PYTHONPATH=str(REPO / "tests" / "plugins"))
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "invoke", "hotfix", "--version", "2.1.0",
                           "--config", str(team)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    state = state_of(lab, proc)
    batches = len(state["facts"]["batches"])
    assert state["facts"]["team"]["announced"] == ["2.1.0"] * batches
    assert state["facts"]["team"]["hooks"] == ["before install-release on batch",
                                               "after install-release on batch"] * batches
    assert state["stages"]["rollout/1/announce"]["step"] == "team_steps:announce"


SECRETS = ("X-Amz-Signature", "X-Amz-Credential", "Signature=")


def test_no_secret_reaches_output_or_run_state(lab):
    from deploylib.lab import credentials

    proc = lab.cli("hotfix --version 2.2.0")
    texts = [proc.stdout, proc.stderr] + [p.read_text() for p in runs(lab)]
    key = credentials("deployer", lab.cli.lab_dir)["aws_secret_access_key"]
    for text in texts:
        for secret in (*SECRETS, key):
            assert secret not in text


def test_hosts_that_cannot_reach_the_store_get_the_release_pushed(lab):
    push = lab.write_config(name="push.toml", artifact_transfer="push")
    lab.cli(f"hotfix --version 2.3.0 --config {push}")
    assert_serving(lab, "2.3.0")


def test_a_version_published_with_other_content_is_refused(lab, tmp_path):
    import tarfile

    other = tmp_path / "other.tar.gz"
    (tmp_path / "app.py").write_text("print('not the published 1.0.0')\n")
    with tarfile.open(other, "w:gz") as tar:
        tar.add(tmp_path / "app.py", arcname="app.py")
    before_instances = instances(lab)
    proc = lab.cli(f"hotfix --version 1.0.0 --artifact {other}", check=False)
    assert proc.returncode == 2
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")][0]
    assert "already published with different content" in line and "new version" in line
    assert instances(lab) == before_instances
    # the same content again is simply found in the store, not uploaded again (the
    # bucket keeps every upload as a version of its own)
    s3 = lab.clients().s3()
    s3.put_bucket_versioning(Bucket=lab.env.artifact_bucket,
                             VersioningConfiguration={"Status": "Enabled"})
    lab.cli("hotfix --version 2.4.0")
    lab.cli("hotfix --version 2.4.0")
    versions = s3.list_object_versions(Bucket=lab.env.artifact_bucket,
                                       Prefix="releases/lab/2.4.0.tar.gz")["Versions"]
    assert len(versions) == 1
