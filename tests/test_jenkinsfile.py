"""The Jenkinsfile, executed by real Groovy with the pipeline DSL stubbed.

The harness (tests/jenkinsfile/PipelineHarness.groovy) runs `invoke plan` for real and
records every other sh command (`invoke start --json` answers as the tool does), so
these tests check that the pipeline's stages are the plan's stages, whatever the mode;
that it takes the procedure, and where the run's files are, from the tool; and that its
post conditions behave.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from deploylib import plan as planning
from tests.conftest import REPO

HARNESS = REPO / "tests/jenkinsfile/PipelineHarness.groovy"
RUN_ID = "20261127T120000-abc123"
# Where the run's files are: the config's state_dir, as `invoke start --json` says.
PATHS = {"state": f"state/{RUN_ID}.json", "run_dir": f"state/{RUN_ID}",
         "junit": f"state/{RUN_ID}/junit/*.xml", "report": f"state/{RUN_ID}/report"}


def started(mode: str, *, fold_after: bool = False) -> str:
    return json.dumps({"run_id": RUN_ID, "mode": mode, "version": "1.2.3", "env": "lab",
                       "paths": PATHS, "fold_after": fold_after}) + "\n"


def groovy_env() -> dict[str, str]:
    """Groovy's launcher needs JAVA_HOME; take it from the `java` on PATH if unset."""
    env = dict(os.environ)
    java = shutil.which("java")
    if "JAVA_HOME" not in env and java:
        env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parent.parent)
    return env


def run_pipeline(params: dict, **options) -> dict:
    groovy = shutil.which("groovy")
    assert groovy, "groovy is not installed (.ci/run installs Debian's groovy)"
    defaults = {"MODE": "immutable", "VERSION": "1.2.3", "ENV": "lab", "ARTIFACT": "",
                "HANDOFF": ""}
    mode = options.pop("started_as", None) or ({**defaults, **params}["MODE"])
    opts = {"real": ["invoke plan"], "responses": {"invoke start": started(mode)}, **options}
    proc = subprocess.run([groovy, str(HARNESS), str(REPO / "Jenkinsfile"),
                           json.dumps({**defaults, **params}), json.dumps(opts)],
                          cwd=REPO, env=groovy_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def sh_commands(result: dict) -> list[list[str]]:
    """The tool's commands the pipeline ran (`invoke …`), in order."""
    return [argv for argv in (shlex.split(c["args"][0]) for c in result["calls"]
                              if c["step"] == "sh") if argv[0] == "invoke"]


@pytest.mark.parametrize("mode", planning.MODES)
def test_the_pipeline_runs_exactly_the_planned_stages(mode):
    result = run_pipeline({"MODE": mode})
    assert result["result"] == "SUCCESS"
    expected = planning.plan(mode).names()
    steps = [argv for argv in sh_commands(result) if argv[:2] == ["invoke", "step"]]
    assert steps == [["invoke", "step", name, "--run", RUN_ID] for name in expected]
    assert result["stages"] == ["Tool", "Plan", "Deploy", *expected]
    # each planned stage's command runs inside the Jenkins stage of that name
    for call in result["calls"]:
        if call["step"] == "sh" and call["args"][0].startswith("invoke step"):
            assert shlex.split(call["args"][0])[2] == call["stage"]


def test_parameters_conventions_and_start_command():
    result = run_pipeline({"MODE": "in-place", "VERSION": "2.0.0", "ARTIFACT": "dist/a b.tar.gz"})
    params = {p["name"]: p for p in result["parameters"]}
    assert params["MODE"]["choices"] == list(planning.MODES)
    assert set(params) == {"MODE", "VERSION", "ARTIFACT", "ENV", "HANDOFF", "KEEP_ON_ERROR"}
    # the job `invoke jenkins.setup` creates offers the same parameters before a first build
    from deploylib.render import PIPELINE_PARAMETERS

    assert [p["name"] for p in PIPELINE_PARAMETERS] == [p["name"] for p in result["parameters"]]
    assert {"disableConcurrentBuilds", "timestamps", "timeout"} <= set(result["options"])
    start = sh_commands(result)[0]
    assert start == ["invoke", "start", "--mode", "in-place", "--version", "2.0.0", "--env",
                     "lab", "--artifact", "dist/a b.tar.gz", "--json"]
    assert result["env"]["RUN_ID"] == RUN_ID
    assert result["post"] == ["always"]
    archived = [c for c in result["calls"] if c["step"] == "archiveArtifacts"]
    assert archived[0]["args"][0]["artifacts"] == f"state/{RUN_ID}.json, state/{RUN_ID}/**"
    report = [argv for argv in sh_commands(result) if argv[:2] == ["invoke", "report"]]
    assert report == [["invoke", "report", "--run", RUN_ID, "--no-open", "--out",
                       f"state/{RUN_ID}/report"]]


def test_every_tool_command_runs_with_the_credentials_bound_and_nothing_else_does():
    result = run_pipeline({"MODE": "immutable"}, fail_on="step 'copy-image'")
    calls = result["calls"]
    for n, call in enumerate(calls):
        if call["step"] != "sh":
            continue
        argv = shlex.split(call["args"][0])
        needs = argv[0] == "invoke" and argv[1] in ("start", "step", "cleanup", "fold")
        bound = n > 0 and calls[n - 1]["step"] == "withCredentials"
        assert bound == needs, argv
    bindings = [c for c in calls if c["step"] == "string"]
    assert bindings and all(b["args"][0]["variable"] == "JENKINS_API_TOKEN" for b in bindings)


def test_a_deploy_the_tool_says_to_fold_after_is_folded_once_it_is_done():
    mode = "in-place"  # the one the tool folds after (runs.folds_after)
    result = run_pipeline({"MODE": mode, "ENV": "prod eu"},
                          responses={"invoke start": started(mode, fold_after=True)})
    assert result["result"] == "SUCCESS"
    commands = sh_commands(result)
    steps = [n for n, argv in enumerate(commands) if argv[:2] == ["invoke", "step"]]
    fold = [n for n, argv in enumerate(commands) if argv[:2] == ["invoke", "fold"]]
    # after the last planned stage, in a stage of its own, for the run's environment
    assert len(fold) == 1 and fold[0] > steps[-1]
    assert commands[fold[0]] == ["invoke", "fold", "--env", "lab"]
    assert result["stages"][-1] == "fold"
    folded = next(c for c in result["calls"] if c["step"] == "sh" and
                  c["args"][0].startswith("invoke fold"))
    assert folded["stage"] == "fold"
    # the same with the flag down: no fold
    plain = run_pipeline({"MODE": mode})
    assert not [argv for argv in sh_commands(plain) if argv[:2] == ["invoke", "fold"]]


def test_a_failed_deploy_is_not_folded():
    result = run_pipeline({"MODE": "in-place"}, fail_on="step 'rollout'",
                          responses={"invoke start": started("in-place", fold_after=True)})
    assert result["result"] == "FAILURE"
    assert not [argv for argv in sh_commands(result) if argv[:2] == ["invoke", "fold"]]


def test_the_stage_with_the_smoke_tests_publishes_junit_even_when_it_fails():
    # The smoke test runs inside the per-region group: its Jenkins stage publishes.
    result = run_pipeline({"MODE": "rebake-light"}, fail_on="step 'regions'")
    assert result["result"] == "FAILURE"
    junit = [c for c in result["calls"] if c["step"] == "junit"]
    assert len(junit) == 1 and junit[0]["stage"] == "regions"
    assert junit[0]["args"][0]["testResults"] == f"state/{RUN_ID}/junit/*.xml"


def test_only_the_stage_with_the_smoke_tests_publishes_junit():
    result = run_pipeline({"MODE": "in-place"})
    assert result["result"] == "SUCCESS"
    assert not [c for c in result["calls"] if c["step"] == "junit"]


def test_keep_on_error_skips_the_cleanup():
    result = run_pipeline({"MODE": "immutable", "KEEP_ON_ERROR": True},
                          fail_on="step 'copy-image'")
    assert result["post"] == ["always", "unsuccessful"]
    assert not [argv for argv in sh_commands(result) if argv[:2] == ["invoke", "cleanup"]]


def test_hostile_parameters_reach_the_shell_quoted():
    result = run_pipeline({"MODE": "in-place", "VERSION": "1.0'; rm -rf / #"})
    start = sh_commands(result)[0]
    assert start[5] == "1.0'; rm -rf / #"  # one argument, for invoke to refuse


def test_a_failed_stage_stops_the_pipeline_and_runs_the_failure_post():
    result = run_pipeline({"MODE": "immutable"}, fail_on="step 'copy-image'")
    assert result["result"] == "FAILURE"
    names = planning.plan("immutable").names()
    ran = [argv[2] for argv in sh_commands(result) if argv[:2] == ["invoke", "step"]]
    assert ran == names[: names.index("copy-image") + 1]
    assert result["post"] == ["always", "unsuccessful"]
    cleanup = [c for c in result["calls"] if c["step"] == "sh"
               and c["stage"] == "post:unsuccessful"]
    assert [shlex.split(c["args"][0]) for c in cleanup] == [
        ["invoke", "cleanup", "--run", RUN_ID]]
    echoed = [c["args"][0] for c in result["calls"]
              if c["step"] == "echo" and c["stage"] == "post:unsuccessful"]
    assert f"invoke resume --run {RUN_ID}" in echoed[0]


def test_a_handoff_runs_only_the_release_stages():
    handoff = json.dumps({"run_id": RUN_ID, "env": "lab", "version": "1.2.3",
                          "release": {}, "images": {}})
    # MODE is the job's default: the procedure is the handed-off run's, as the tool says
    result = run_pipeline({"MODE": "in-place", "HANDOFF": handoff}, started_as="immutable")
    start = sh_commands(result)[0]
    assert start[:3] == ["invoke", "start", "--handoff"]
    assert json.loads(start[3])["run_id"] == RUN_ID
    release = [s.name for s in planning.plan("immutable").stages if s.phase == planning.RELEASE]
    ran = [argv[2] for argv in sh_commands(result) if argv[:2] == ["invoke", "step"]]
    assert ran == release


@pytest.mark.parametrize("mode", ["immutable", "in-place"])
def test_an_aborted_build_cleans_up_and_releases_the_lock_too(mode):
    """A stage `timeout` that fires, or a user's abort, ends the build ABORTED, for
    which declarative `failure` does not run: the cleanup is under `unsuccessful`."""
    stage = "copy-image" if mode == "immutable" else "rollout"
    result = run_pipeline({"MODE": mode}, abort_on=f"step '{stage}'")
    assert result["result"] == "ABORTED"
    assert result["post"] == ["always", "unsuccessful"]
    cleanup = [shlex.split(c["args"][0]) for c in result["calls"]
               if c["step"] == "sh" and c["stage"] == "post:unsuccessful"]
    assert cleanup == [["invoke", "cleanup", "--run", RUN_ID]]
    echoed = [c["args"][0] for c in result["calls"]
              if c["step"] == "echo" and c["stage"] == "post:unsuccessful"]
    assert "ended ABORTED" in echoed[0] and f"invoke resume --run {RUN_ID}" in echoed[0]


def test_the_harness_runs_the_post_conditions_jenkins_runs_for_each_result():
    # SUCCESS runs neither `failure` nor `unsuccessful`; the other results both of theirs
    result = run_pipeline({"MODE": "in-place"})
    assert (result["result"], result["post"]) == ("SUCCESS", ["always"])


def test_a_fresh_agent_gets_the_tool_first_and_every_command_runs_with_it():
    """The Tool stage runs bin/tool-env; every `invoke` after it has the virtualenv it
    printed first on PATH."""
    result = run_pipeline({"MODE": "in-place"},
                          responses={"invoke start": started("in-place"),
                                     "bin/tool-env": "/agent/cache/venv-x/bin\n"})
    sh = [c for c in result["calls"] if c["step"] == "sh"]
    assert sh[0]["args"] == ["bin/tool-env"] and sh[0]["stage"] == "Tool"
    invokes = [c for c in sh if c["args"][0].startswith("invoke ")]
    assert invokes and all("PATH+DEPLOYLIB=/agent/cache/venv-x/bin" in c["env"]
                           for c in invokes), invokes


def test_tool_env_sets_the_tool_up_on_a_clean_checkout_with_nothing_installed(tmp_path):
    """A clone of the repository, Python and git only: bin/tool-env makes the virtualenv
    from requirements.lock (pip, from the package index), and the pipeline's commands run
    from it; a second build reuses it."""
    import subprocess

    clone = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # No virtualenv of ours on PATH; pip's own settings (index, cache) as this machine has
    # them.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "LANG": "C.UTF-8",
           "DEPLOY_TOOL_CACHE": str(tmp_path / "cache"),
           **{k: v for k, v in os.environ.items() if k.startswith("PIP_")}}
    made = subprocess.run([str(clone / "bin/tool-env")], cwd=clone, env=env,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stderr[-2000:]
    bin_dir = made.stdout.strip()
    assert bin_dir.startswith(str(tmp_path / "cache"))
    plan = subprocess.run([f"{bin_dir}/invoke", "plan", "--mode", "in-place", "--json"],
                          cwd=clone, env={**env, "PATH": f"{bin_dir}:/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "install-release" in plan.stdout
    again = subprocess.run([str(clone / "bin/tool-env")], cwd=clone, env=env,
                           capture_output=True, text=True, timeout=60)
    assert again.stdout.strip() == bin_dir and again.stderr == ""
