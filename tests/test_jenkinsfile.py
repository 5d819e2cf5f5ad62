"""The pipeline: the shared library's step (vars/deploylibPipeline.groovy) as a
Jenkinsfile loads it — this repository's and the example team's — executed by real Groovy
with the pipeline DSL stubbed.

The harness (tests/jenkinsfile/PipelineHarness.groovy) runs `invoke plan` and `invoke
jenkins.settings` for real and records every other sh command (`invoke start --json`
answers as the tool does), so these tests check that the pipeline's stages are the plan's
stages, whatever the mode; that it takes the procedure, the environment's credentials,
approval and timeouts, and where the run's files are, from the tool; and that its post
conditions behave.
"""

from __future__ import annotations

import json
import math
import os
import select
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deploylib import plan as planning
from tests.conftest import REPO

HARNESS = REPO / "tests/jenkinsfile/PipelineHarness.groovy"
RUN_ID = "20261127T120000-abc123"
# Where the run's files are: the config's state_dir, as `invoke start --json` says.
PATHS = {"state": f"state/{RUN_ID}.json", "run_dir": f"state/{RUN_ID}",
         "junit": f"state/{RUN_ID}/junit/*.xml", "report": f"state/{RUN_ID}/report"}


TEAM = REPO / "examples/team-repo"


def started(mode: str, *, fold_after: bool = False, env: str = "production") -> str:
    return json.dumps({"run_id": RUN_ID, "mode": mode, "version": "1.2.3", "env": env,
                       "paths": PATHS, "fold_after": fold_after}) + "\n"


def groovy_env() -> dict[str, str]:
    """Groovy's launcher needs JAVA_HOME; take it from the `java` on PATH if unset."""
    env = dict(os.environ)
    # the harness runs `invoke` for real: the suite's own (this interpreter's) first
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    java = shutil.which("java")
    if "JAVA_HOME" not in env and java:
        env["JAVA_HOME"] = str(Path(os.path.realpath(java)).parent.parent)
    # A pipeline runs for seconds: the JIT's first tier and the serial collector cost a
    # third less CPU than the JVM's defaults, which pay off only in long-lived servers.
    env.setdefault("JAVA_OPTS", "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Xshare:auto")
    return env


class ServedHarness:
    """One Groovy process running this module's pipelines one after another
    (`PipelineHarness.groovy --serve`): the JVM and Groovy start once, not per test, and
    the queries the pipelines run for real (`invoke plan`, `invoke jenkins.settings`) are
    run once per command, workspace and environment."""

    def __init__(self, directory: Path) -> None:
        groovy = shutil.which("groovy")
        assert groovy, "groovy is not installed (.ci/run installs Debian's groovy)"
        # Its stderr (Groovy's, and the queries'), to a file: a pipe nobody reads would
        # fill and stop it.
        self.log = directory / "harness.stderr"
        with self.log.open("w") as log:
            self.proc = subprocess.Popen([groovy, str(HARNESS), "--serve"], cwd=REPO,
                                         env=groovy_env(), stdin=subprocess.PIPE,
                                         stdout=subprocess.PIPE, stderr=log, text=True)

    def run(self, jenkinsfile: Path, params: dict, options: dict, timeout: float = 120) -> dict:
        assert self.proc.stdin and self.proc.stdout
        request = {"jenkinsfile": str(jenkinsfile), "params": params, "options": options}
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([self.proc.stdout], [], [],
                                        max(0.0, deadline - time.monotonic()))
            line = self.proc.stdout.readline() if ready else ""
            if not line:
                self.close()
                raise AssertionError("the harness did not answer: "
                                     + self.log.read_text()[-3000:])
            if line.startswith("@@pipeline "):
                answer = json.loads(line.removeprefix("@@pipeline "))
                assert "harness_error" not in answer, answer.get("harness_error")
                return answer

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_served: ServedHarness | None = None


@pytest.fixture(scope="module", autouse=True)
def served_harness(tmp_path_factory):
    global _served
    _served = ServedHarness(tmp_path_factory.mktemp("harness"))
    yield _served
    _served.close()
    _served = None


def run_pipeline(params: dict, *, repo: Path = REPO, **options) -> dict:
    """The pipeline of `repo`'s Jenkinsfile (this repository's by default), with this
    repository as the shared library it loads."""
    assert _served is not None, "run_pipeline runs in this module's tests"
    defaults = {"MODE": "immutable", "VERSION": "1.2.3", "ENV": "production", "ARTIFACT": "",
                "BAKE_RUN": ""}
    given = {**defaults, **params}
    mode = options.pop("started_as", None) or given["MODE"]
    opts = {"dir": str(repo), "library": str(REPO),
            "real": ["invoke plan", "invoke jenkins.settings"],
            "responses": {"invoke start": started(mode, env=given["ENV"])}, **options}
    return _served.run(repo / "Jenkinsfile", given, opts)


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
    # The job's parameters are the job's (`invoke jenkins.setup`): the pipeline declares
    # none, so a build cannot reset them, ENV's choices included.
    assert result["parameters"] == [] and result["libraries"] == ["deploylib"]
    assert {"disableConcurrentBuilds", "timestamps", "buildDiscarder"} <= set(result["options"])
    settings, start = sh_commands(result)[:2]
    assert settings == ["invoke", "jenkins.settings", "--env", "production"]
    assert start == ["invoke", "start", "--mode", "in-place", "--version", "2.0.0", "--env",
                     "production", "--artifact", "dist/a b.tar.gz", "--json"]
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
    result = run_pipeline({"MODE": mode},
                          responses={"invoke start": started(mode, fold_after=True)})
    assert result["result"] == "SUCCESS"
    commands = sh_commands(result)
    steps = [n for n, argv in enumerate(commands) if argv[:2] == ["invoke", "step"]]
    fold = [n for n, argv in enumerate(commands) if argv[:2] == ["invoke", "fold"]]
    # after the last planned stage, in a stage of its own, for the run's environment
    assert len(fold) == 1 and fold[0] > steps[-1]
    assert commands[fold[0]] == ["invoke", "fold", "--env", "production"]
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
    start = sh_commands(result)[1]
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


def test_a_bake_handed_off_runs_only_the_release_stages():
    # MODE is the job's default: the procedure is the baked run's, as the tool says
    result = run_pipeline({"MODE": "in-place", "BAKE_RUN": RUN_ID}, started_as="immutable")
    start = sh_commands(result)[1]
    assert start == ["invoke", "start", "--run", RUN_ID, "--env", "production", "--json"]
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
    """The Tool stage writes the library's tool-env.sh and its two hashed locks into the
    workspace and runs it for the tool the Jenkinsfile names; every `invoke` after it has
    the virtualenv it printed first on PATH."""
    result = run_pipeline({"MODE": "in-place"},
                          responses={"invoke start": started("in-place"),
                                     "bash .deploylib/tool-env.sh": "/agent/venv-x/bin\n"})
    written = [c["args"][0] for c in result["calls"] if c["step"] == "writeFile"]
    assert written == [".deploylib/tool-env.sh", ".deploylib/requirements.lock",
                       ".deploylib/requirements-build.lock"]
    sh = [c for c in result["calls"] if c["step"] == "sh"]
    assert shlex.split(sh[0]["args"][0]) == [
        "bash", ".deploylib/tool-env.sh", ".", ".deploylib/requirements.lock",
        ".deploylib/requirements-build.lock"] and sh[0]["stage"] == "Tool"
    invokes = [c for c in sh if c["args"][0].startswith("invoke ")]
    assert invokes and all("PATH+DEPLOYLIB=/agent/venv-x/bin" in c["env"] for c in invokes)


# -- the example team's repository: its Jenkinsfile is two lines over the library --------


def team_plan(mode: str, env: str) -> list[str]:
    """`invoke plan` as the team's repository answers it (its tasks.py, its deploy.toml)."""
    out = subprocess.run([sys.executable, "-m", "invoke", "plan", "--mode", mode, "--env", env,
                          "--json"], cwd=TEAM, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [s["name"] for s in json.loads(out.stdout)["stages"]]


@pytest.mark.parametrize("mode", planning.MODES)
def test_the_team_repos_pipeline_runs_exactly_its_planned_stages(mode):
    result = run_pipeline({"MODE": mode, "ENV": "staging"}, repo=TEAM)
    assert result["result"] == "SUCCESS", result["error"]
    expected = team_plan(mode, "staging")
    ran = [argv[2] for argv in sh_commands(result) if argv[:2] == ["invoke", "step"]]
    assert ran == expected and result["stages"] == ["Tool", "Plan", "Deploy", *expected]
    tool = shlex.split(next(c["args"][0] for c in result["calls"] if c["step"] == "sh"))
    assert tool[2] == "deploylib==0.2.0"  # the team pins the tool it runs


def test_each_environment_binds_its_own_credentials():
    for env, credentials in (("staging", "greeter-aws-staging"),
                             ("production", "greeter-aws-production")):
        result = run_pipeline({"MODE": "in-place", "ENV": env}, repo=TEAM)
        bound = [c["args"][0] for c in result["calls"] if c["step"] == "withCredentials"]
        assert bound and all(f"credentialsId:{credentials}," in b for b in bound), bound


def test_an_environment_that_asks_for_approval_asks_before_its_release_phase():
    result = run_pipeline({"MODE": "immutable", "ENV": "production", "VERSION": "2.1.0"},
                          repo=TEAM, responses={"invoke start": json.dumps({
                              "run_id": RUN_ID, "mode": "immutable", "version": "2.1.0",
                              "env": "production", "paths": PATHS, "fold_after": False})})
    assert result["result"] == "SUCCESS", result["error"]
    stages = result["stages"]
    bake = [s.name for s in planning.plan("immutable").stages if s.phase == planning.BAKE]
    # the bake first (its images wait), then a person's yes, then the release phase
    assert stages.index("Approval") == stages.index(bake[-1]) + 1
    asked = [c for c in result["calls"] if c["step"] == "input"]
    assert len(asked) == 1 and asked[0]["stage"] == "Approval"
    assert asked[0]["args"][0]["message"] == "Release 2.1.0 to production with immutable?"


def test_a_refused_approval_ends_the_build_before_anything_goes_live_and_cleans_up():
    result = run_pipeline({"MODE": "in-place", "ENV": "production"}, repo=TEAM,
                          reject_input=True)
    assert result["result"] == "ABORTED"
    ran = [argv[2] for argv in sh_commands(result) if argv[:2] == ["invoke", "step"]]
    assert ran == []  # in-place has no bake: nothing of the release ran
    cleanup = [argv for argv in sh_commands(result) if argv[:2] == ["invoke", "cleanup"]]
    assert cleanup == [["invoke", "cleanup", "--run", RUN_ID]]
    # staging asks nobody
    staging = run_pipeline({"MODE": "in-place", "ENV": "staging"}, repo=TEAM,
                           reject_input=True)
    assert staging["result"] == "SUCCESS" and "Approval" not in staging["stages"]


# (the team's deploy.toml defines a lab of its own: a Jenkins build may name that one)
@pytest.mark.parametrize("env", ["", "qa"])
def test_a_build_that_names_no_environment_of_deploy_toml_binds_nothing_and_starts_nothing(env):
    result = run_pipeline({"MODE": "in-place", "ENV": env}, repo=TEAM)
    assert result["result"] == "FAILURE"
    assert "exit code 2" in result["error"] and "jenkins.settings" in result["error"]
    assert not [c for c in result["calls"] if c["step"] == "withCredentials"]
    assert [argv[1] for argv in sh_commands(result)] == ["jenkins.settings"]


def test_each_stage_may_take_what_the_tools_own_timeouts_allow():
    from deploylib import config, pipeline

    result = run_pipeline({"MODE": "immutable", "ENV": "staging"}, repo=TEAM)
    limits = {c["stage"]: c["args"][0] for c in result["calls"] if c["step"] == "timeout"}
    minutes = pipeline.settings(config.load(TEAM / "deploy.toml"), "staging")["stage_minutes"]
    assert limits["regions"] == f"[time:{minutes['regions']}, unit:MINUTES]"
    # the regions of an immutable deploy wait on a cross-region copy (2 hours by default)
    assert minutes["regions"] > 120 and minutes["publish-release"] < minutes["regions"]
    # a verification window is a stage of its own: its window (live_for = 600), the
    # metrics' delay and two periods, and the margin
    assert "verify" in result["stages"]
    assert limits["verify"] == f"[time:{minutes['verify']}, unit:MINUTES]"
    assert minutes["verify"] == math.ceil((600 + 60 + 2 * 60) / 60) + pipeline.MARGIN_MINUTES


def test_a_stage_that_runs_commands_over_run_command_is_given_their_delivery_too(tmp_path):
    from deploylib import config, pipeline
    from deploylib import plan as planning
    from tests.conftest import write_config

    def rollout_minutes(**overrides) -> int:
        env = config.load(write_config(tmp_path, **overrides)).environment("lab")
        (rollout,) = [s for s in planning.plan("in-place").stages
                      if s.kind == planning.PER_BATCH]
        return pipeline.stage_minutes(env, rollout)

    ssh = rollout_minutes()
    ssm = rollout_minutes(transport="ssm", timeouts={"delivery": 600})
    env = config.load(write_config(tmp_path)).environment("lab")
    # drain, install-release and health-check each run a command in every batch
    assert ssm - ssh == 3 * 10 * pipeline.most_batches(env)


# -- a per-region group on parallel agents (jenkins.region_agents) ------------------------


def region_agents_repo(tmp_path: Path) -> Path:
    """A repository whose lab environment runs its regions on agents labelled
    deploy-region (the lab's three regions)."""
    from tests.conftest import write_config

    write_config(tmp_path, jenkins={"region_agents": "deploy-region"})
    for name in ("Jenkinsfile", "tasks.py"):
        shutil.copy(REPO / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("mode", ["immutable", "rebake-light"])
def test_region_agents_run_each_region_on_a_parallel_branch_then_end_the_group(mode, tmp_path):
    repo = region_agents_repo(tmp_path)
    regions = ["us-east-1", "us-west-2", "eu-west-1"]
    result = run_pipeline({"MODE": mode, "ENV": "lab"}, repo=repo)
    assert result["result"] == "SUCCESS", result["error"]
    (fan,) = [c for c in result["calls"] if c["step"] == "parallel"]
    assert fan["stage"] == "regions" and sorted(fan["args"]) == sorted(regions)
    assert [c["args"] for c in result["calls"] if c["step"] == "node"] == \
        [["deploy-region"]] * 3
    sh = [c for c in result["calls"] if c["step"] == "sh"]
    for region in regions:
        mine = [c for c in sh if c["branch"] == region]
        # on its agent: the checkout's tool set up, then only its region's lane
        assert mine[0]["args"][0].startswith("bash .deploylib/tool-env.sh")
        assert [shlex.split(c["args"][0]) for c in mine[1:]] == [
            ["invoke", "step", "regions", "--run", RUN_ID, "--region", region]]
    lanes = [n for n, c in enumerate(sh) if c["branch"]]
    closing = [n for n, c in enumerate(sh)
               if shlex.split(c["args"][0]) == ["invoke", "step", "regions", "--run", RUN_ID]]
    # the group is ended once, on the build's own agent, after every lane
    assert len(closing) == 1 and closing[0] > max(lanes) and not sh[closing[0]]["branch"]
    # every lane publishes its smoke tests' results
    junit = [c for c in result["calls"] if c["step"] == "junit"]
    assert len(junit) == 4  # three lanes, and the group's own stage
    # the other stages are as the plan has them, one each
    ran = [argv[2] for argv in sh_commands(result) if argv[:2] == ["invoke", "step"]]
    assert [n for n in ran if n != "regions"] == [
        n for n in planning.plan(mode).names() if n != "regions"]


def test_a_lane_that_fails_fails_the_build_after_every_branch_ends_and_cleans_up(tmp_path):
    repo = region_agents_repo(tmp_path)
    result = run_pipeline({"MODE": "immutable", "ENV": "lab"}, repo=repo,
                          fail_on="--region 'us-west-2'")
    assert result["result"] == "FAILURE" and "us-west-2" in result["error"]
    commands = sh_commands(result)
    lanes = [argv[-1] for argv in commands if "--region" in argv]
    assert sorted(lanes) == ["eu-west-1", "us-east-1", "us-west-2"]  # none cut short
    # nothing after the group: not its end, not the stages past it; the cleanup runs
    assert ["invoke", "step", "regions", "--run", RUN_ID] not in commands
    after = commands[commands.index(["invoke", "step", "regions", "--run", RUN_ID,
                                     "--region", "us-west-2"]) + 1:]
    assert [argv[1] for argv in after if argv[1] != "step"] == ["report", "cleanup"]
    assert ["invoke", "cleanup", "--run", RUN_ID] in after


def test_without_region_agents_the_group_is_one_stage_and_no_branch():
    result = run_pipeline({"MODE": "immutable"})
    assert not [c for c in result["calls"] if c["step"] in ("parallel", "node")]
