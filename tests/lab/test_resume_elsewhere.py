"""A run goes on from any machine: its state is in the environment's store
(deploylib.runstore), and a controller that was overtaken is refused."""

from __future__ import annotations

import json
import os
import signal

import pytest

from deploylib import runstore
from tests.lab.checks import (
    assert_serving,
    ended,
    quick_config,
    record,
    start_deploy,
    wait_for_stage,
)

pytestmark = [pytest.mark.lab]


def test_a_rollout_whose_controller_stopped_is_finished_from_another_clone_and_the_old_one_is_refused(  # noqa: E501
        lab, tmp_path):
    config = quick_config(lab, f"{tmp_path.name}.toml")
    proc = start_deploy(lab, "--version", "6.5.0", "--config", str(config), command="hotfix")
    state = wait_for_stage(lab, proc, "rollout/1/install-release")
    run_id = state["run_id"]
    os.kill(proc.pid, signal.SIGSTOP)  # the controller's machine stops mid-rollout
    try:
        # another clone: the same environment, nothing of the run in its state directory
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        other = lab.write_config(elsewhere, name="deploy.toml",
                                 timeouts={"health": 5, "ssh_retry": 2},
                                 rollout="regions-in-turn")
        assert not (elsewhere / "runs").exists()
        done = lab.cli(f"resume --run {run_id} --config {other}")
        assert f"run {run_id}: in-place 6.5.0 to lab — done" in done.stdout + done.stderr
    finally:
        os.kill(proc.pid, signal.SIGCONT)  # and comes back
    stale = ended(proc)
    assert stale.returncode != 0
    assert "resumed elsewhere" in stale.stderr or "no longer this run's" in stale.stderr, \
        stale.stderr[-2000:]
    got = lab.clients().s3().get_object(Bucket=lab.env.artifact_bucket,
                                        Key=runstore.key(lab.env.name, run_id))
    stored = json.loads(got["Body"].read())
    assert stored["status"] == "done"  # the resumed run's, never overwritten by the old one
    assert record(lab)["release"] == "6.5.0"
    assert_serving(lab, "6.5.0")
