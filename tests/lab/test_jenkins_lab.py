"""The Jenkins path for real: the Jenkinsfile executed by Groovy against the lab, and a
bake that hands test-and-promote to Jenkins, which then runs the same Jenkinsfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from deploylib import aws
from tests.conftest import REPO, write_config
from tests.lab.test_procedures import assert_serving
from tests.test_jenkinsfile import HARNESS, groovy_env

pytestmark = pytest.mark.lab


def execute_jenkinsfile(lab, params: dict) -> dict:
    env = {**groovy_env(), **lab.cli.env()}
    # `invoke` must be the one installed beside this Python
    env["PATH"] = f"{os.path.dirname(os.path.realpath(shutil.which('invoke') or 'invoke'))}:" \
                  f"{env['PATH']}"
    proc = subprocess.run(
        [shutil.which("groovy"), str(HARNESS), str(REPO / "Jenkinsfile"),
         json.dumps({"MODE": "in-place", "VERSION": "", "ENV": "lab", "ARTIFACT": "",
                     "HANDOFF": "", **params}), json.dumps({"execute": True})],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_jenkinsfile_deploys_in_place_on_the_lab(lab):
    result = execute_jenkinsfile(lab, {"MODE": "in-place", "VERSION": "3.0.0"})
    assert result["result"] == "SUCCESS", result["error"]
    assert_serving(lab, "3.0.0")


def test_bake_hands_off_to_jenkins_and_the_handoff_promotes(lab, fake_jenkins):
    job = fake_jenkins.add_job("test-and-promote")
    config = write_config(lab.config_path.parent, name="with-jenkins.toml",
                          jenkins={"url": fake_jenkins.url.rstrip("/"), "user": "deploy-bot"})
    before = aws.read_record(lab.clients().ssm(), lab.env.record_parameter)
    proc = lab.cli(f"bake --version 3.1.0 --config {config}")
    assert "test-and-promote #1" in proc.stderr
    params = job.builds[0]["params"]
    handoff = json.loads(params["HANDOFF"])
    assert handoff["version"] == "3.1.0" and set(handoff["images"]) == set(lab.env.all_regions)
    assert json.loads(params["IMAGES"]) == handoff["images"]
    # the bake alone changed nothing live
    assert aws.read_record(lab.clients().ssm(), lab.env.record_parameter) == before
    # now be Jenkins: the test-and-promote job is the same Jenkinsfile, given the handoff
    result = execute_jenkinsfile(lab, {"HANDOFF": params["HANDOFF"]})
    assert result["result"] == "SUCCESS", result["error"]
    fleet = assert_serving(lab, "3.1.0")
    for region, instances in fleet.items():
        assert {i.image_id for i in instances} == {handoff["images"][region]}


def test_bake_fails_clearly_when_jenkins_is_unreachable(lab):
    config = write_config(lab.config_path.parent, name="dead-jenkins.toml",
                          jenkins={"url": "http://127.0.0.1:9"})
    proc = lab.cli(f"bake --version 3.2.0 --config {config}", check=False)
    assert proc.returncode == 1
    assert "Jenkins is unreachable" in proc.stderr and "Fix:" in proc.stderr
