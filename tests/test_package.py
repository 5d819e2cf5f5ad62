"""deploylib as a team installs it: one wheel, built reproducibly, holding every file the
tool reads; installed outside this checkout, used from a team's own repository (the
example's, copied elsewhere) with no file of this checkout in reach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from deploylib import __version__
from deploylib import plan as planning
from tests.conftest import REPO, build_wheel


def test_the_wheel_holds_the_tool_and_every_file_it_reads_and_nothing_else(tmp_path):
    wheel = build_wheel(tmp_path / "a")
    names = zipfile.ZipFile(wheel).namelist()
    assert wheel.name == f"deploylib-{__version__}-py3-none-any.whl"
    for needed in ("deploylib/__init__.py", "deploylib/py.typed", "deploylib/tasks.py",
                   "deploylib/templates/install.sh.j2", "deploylib/templates/release.sh.j2",
                   "deploylib/templates/iam-policy.json",
                   "deploylib/templates/jenkins/pipeline.xml.j2",
                   "deploylib/lab/bin/systemctl", "deploylib/lab/environment.toml"):
        assert needed in names, needed
    assert not [n for n in names if n.startswith(("tests/", "examples/", "benchmarks/"))]
    entry = zipfile.ZipFile(wheel).read(
        f"deploylib-{__version__}.dist-info/entry_points.txt").decode()
    assert "deploylib = deploylib.cli:main" in entry
    # reproducible: the same tree, the same bytes
    again = build_wheel(tmp_path / "b")
    assert again.read_bytes() == wheel.read_bytes()


@pytest.fixture
def team_repo(tmp_path):
    """The example team's repository, copied outside this checkout."""
    repo = tmp_path / "greeter"
    shutil.copytree(REPO / "examples/team-repo", repo,
                    ignore=shutil.ignore_patterns("server", "dist", ".runs", ".lab"))
    return repo


def run(tool_venv, repo, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(argv), cwd=repo, env=tool_venv.env(), capture_output=True,
                          text=True, timeout=300)


def test_the_installed_wheel_runs_the_teams_tasks_from_its_own_repository(tool_venv,
                                                                         team_repo):
    where = run(tool_venv, team_repo, "python", "-c",
                "import deploylib, deploylib.render as r; print(deploylib.__file__); "
                "print(r.TEMPLATES)")
    assert where.returncode == 0, where.stderr
    assert str(REPO) not in where.stdout and str(tool_venv.bin.parent) in where.stdout
    listed = run(tool_venv, team_repo, "invoke", "--list")
    assert listed.returncode == 0, listed.stderr
    for task in ("deploy", "hotfix", "bake", "rollback", "status", "lab.up", "jenkins.setup"):
        assert task in listed.stdout
    version = run(tool_venv, team_repo, "deploylib", "--version")
    assert version.stdout.strip() == f"deploylib {__version__}", version.stdout
    for mode in planning.MODES:
        via_invoke = run(tool_venv, team_repo, "invoke", "plan", "--mode", mode, "--env",
                         "production", "--json")
        via_command = run(tool_venv, team_repo, "deploylib", "plan", "--mode", mode, "--env",
                          "production", "--json")
        assert via_invoke.returncode == 0 and via_command.returncode == 0, via_invoke.stderr
        assert json.loads(via_invoke.stdout) == json.loads(via_command.stdout)
        names = [s["name"] for s in json.loads(via_invoke.stdout)["stages"]]
        assert names == planning.plan(mode).names()
    # what reads package data: the IAM policy, the host scripts
    policy = run(tool_venv, team_repo, "invoke", "policy", "--env", "production")
    assert policy.returncode == 0 and "greeter-production-releases" in policy.stdout
    built = run(tool_venv, team_repo, "invoke", "artifact", "--version", "1.0.0", "--env",
                "production")
    assert built.returncode == 0, built.stderr
    assert (team_repo / "app/bin/server").exists()  # its build ran (make)


def test_the_example_team_pins_the_release_this_is():
    jenkinsfile = (REPO / "examples/team-repo/Jenkinsfile").read_text()
    assert f"@Library('deploylib@v{__version__}')" in jenkinsfile
    assert f"deploylibPipeline(tool: 'deploylib=={__version__}')" in jenkinsfile


FAKE_PYTHON = """#!/bin/bash
# A python3 as tool-env.sh uses it, making a virtualenv whose python logs each install.
if [ "$1" = -c ]; then exit 0; fi
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  printf '#!/bin/bash\\necho "$*" >> %q\\n' "$LOG" > "$3/bin/python"
  chmod +x "$3/bin/python"
  exit 0
fi
exit 1
"""


def test_the_agents_virtualenv_is_made_afresh_for_each_build_unless_one_is_kept(tmp_path):
    """A virtualenv kept between builds is code any job on the agent could have changed:
    without DEPLOY_TOOL_CACHE, each build's is made again from the hashed locks (what was
    planted in the last one is gone); with it (a single-tenant agent), made once."""
    python, log = tmp_path / "python3", tmp_path / "installs.log"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    resources = REPO / "resources/deploylib"
    script = [str(resources / "tool-env.sh"), "deploylib==0.2.0",
              str(resources / "requirements.lock"), str(resources / "requirements-build.lock")]
    env = {"PATH": os.environ["PATH"], "PYTHON": str(python), "LOG": str(log),
           "HOME": str(tmp_path)}

    def build(**extra: str) -> Path:
        done = subprocess.run(["bash", *script], cwd=workspace, env={**env, **extra},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return Path(done.stdout.strip())

    first = build()
    assert first == workspace / ".deploylib/venv/bin"
    (first / "planted").write_text("import os")
    assert build() == first and not (first / "planted").exists()
    installs = log.read_text().splitlines()
    assert len(installs) == 6 and all(" pip install " in f" {i} " for i in installs)
    kept = build(DEPLOY_TOOL_CACHE=str(tmp_path / "cache"))
    (kept / "planted").write_text("kept")
    assert build(DEPLOY_TOOL_CACHE=str(tmp_path / "cache")) == kept
    assert (kept / "planted").exists() and len(log.read_text().splitlines()) == 9
