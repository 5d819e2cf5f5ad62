"""The Jenkins path for real: the Jenkinsfile executed by Groovy against the lab, and a
bake that hands test-and-promote to Jenkins, which then runs the same Jenkinsfile."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.lab.checks import assert_serving, leftovers, lock_holder, record, state_of
from tests.test_jenkinsfile import HARNESS, groovy_env

pytestmark = pytest.mark.lab


def execute_jenkinsfile(lab, params: dict, config: Path | None = None, **options) -> dict:
    env = {**groovy_env(), **lab.cli.env()}
    if config is not None:
        env["DEPLOY_CONFIG"] = str(config)
    # The agent has the tool already (this Python's, the lab's included): the Tool stage
    # takes it as it is (the library's tool-env.sh, DEPLOY_TOOL_BIN).
    env["DEPLOY_TOOL_BIN"] = os.path.dirname(os.path.realpath(shutil.which("invoke")
                                                              or "invoke"))
    proc = subprocess.run(
        [shutil.which("groovy"), str(HARNESS), str(REPO / "Jenkinsfile"),
         json.dumps({"MODE": "in-place", "VERSION": "", "ENV": "lab", "ARTIFACT": "",
                     "BAKE_RUN": "", **params}),
         json.dumps({"execute": True, "library": str(REPO), **options})],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["output"] = proc.stdout + proc.stderr
    return result


def test_the_jenkinsfile_deploys_in_place_on_the_lab(lab):
    result = execute_jenkinsfile(lab, {"MODE": "in-place", "VERSION": "3.0.0"})
    assert result["result"] == "SUCCESS", result["error"]
    assert_serving(lab, "3.0.0")


def region_agents(lab, tmp_path) -> tuple[Path, list[dict]]:
    """The build's config, and an agent per region (labelled deploy-region): each a
    checkout of its own (its tasks.py, its deploy.toml), with no state of any run."""
    agents_config = {"jenkins": {"region_agents": "deploy-region"}}
    build = lab.write_config(name=f"{tmp_path.name}.toml", **agents_config)
    agents = []
    for region in lab.env.all_regions:
        checkout = tmp_path / f"agent-{region}"
        checkout.mkdir()
        shutil.copy(REPO / "tasks.py", checkout)  # what `checkout scm` brings, and:
        agents.append({"dir": str(checkout), "env": {
            "DEPLOY_CONFIG": str(lab.write_config(directory=checkout, **agents_config))}})
    return build, agents


def test_the_regions_run_on_parallel_agents_sharing_the_run_through_the_store(lab, tmp_path):
    """jenkins.region_agents: each region's lane a branch on an agent of its own, whose
    checkout has no state of the run: it reads the run from the store and writes its
    lane back, the three at once, under the run's one lock take."""
    build, agents = region_agents(lab, tmp_path)
    before = record(lab)
    result = execute_jenkinsfile(lab, {"MODE": "rebake-light", "VERSION": "3.0.7"},
                                 config=build, agents=agents)
    assert result["result"] == "SUCCESS", result["output"][-4000:]
    assert [c["step"] for c in result["calls"]].count("node") == len(agents)
    fleet = assert_serving(lab, "3.0.7")
    assert set(fleet) == set(lab.env.all_regions)
    assert record(lab)["previous"]["release"] == before["release"]
    run_id = result["env"]["RUN_ID"]
    state = state_of(lab, run_id)
    assert state["status"] == "done" and state["stages"]["regions"]["status"] == "done"
    lanes = {}
    for entry in state["stages"].values():
        if entry.get("group") == "regions":
            assert entry["status"] == "done", entry
            began, ended = lanes.get(entry["region"], (entry["started_at"], entry["ended_at"]))
            lanes[entry["region"]] = (min(began, entry["started_at"]),
                                      max(ended, entry["ended_at"]))
    assert set(lanes) == set(lab.env.all_regions)
    # the lanes ran side by side: each began before every other had ended
    assert all(began < ended for began, _ in lanes.values() for _, ended in lanes.values())
    # each agent's cache of the run holds its own lane done (read from the store, and
    # written back there)
    for agent, region in zip(agents, lab.env.all_regions, strict=True):
        cached = json.loads((Path(agent["dir"]) / "runs" / f"{run_id}.json").read_text())
        assert cached["stages"][f"regions/{region}/promote"]["status"] == "done"
    assert lock_holder(lab) is None and leftovers(lab, run_id) == []


def test_a_lane_that_fails_on_its_agent_fails_the_build_and_nothing_is_left(lab, tmp_path):
    """One region's promotion refused: that lane fails, the others stop at their next
    stage or end theirs, and the build's cleanup (on its own agent, from the store)
    puts back every region promoted and removes what the run made."""
    from tests.lab.checks import assert_nothing_lost, clear_faults, set_faults

    build, agents = region_agents(lab, tmp_path)
    before = record(lab)
    broken = lab.env.all_regions[-1]
    set_faults(lab, {"action": "RegisterTargets", "region": broken,
                     "error": "InvalidTarget", "message": "registration refused (injected)"})
    try:
        result = execute_jenkinsfile(lab, {"MODE": "rebake-light", "VERSION": "3.0.8"},
                                     config=build, agents=agents)
    finally:
        clear_faults(lab)
    assert result["result"] == "FAILURE" and f"--region '{broken}'" in result["error"]
    assert result["post"] == ["always", "unsuccessful"]
    state = state_of(lab, result["env"]["RUN_ID"])
    assert state["status"] == "failed"
    promote = state["stages"][f"regions/{broken}/promote"]
    # (rewound by the cleanup for a resume, with what it was and why)
    assert promote.get("was", promote["status"]) == "failed"
    assert "registration refused" in promote["error"]
    assert state["facts"]["cleanup"]["demote"] == "done"
    assert record(lab) == before
    assert_nothing_lost(lab, state, before["release"])


def test_an_aborted_build_cleans_up_for_real_and_frees_the_lock(lab):
    before = record(lab)
    result = execute_jenkinsfile(lab, {"MODE": "rebake-light", "VERSION": "3.0.5"},
                                 abort_on="step 'regions'")
    assert result["result"] == "ABORTED" and result["post"] == ["always", "unsuccessful"]
    run_id = result["env"]["RUN_ID"]
    state = state_of(lab, run_id)
    assert state["status"] == "failed"
    assert set(state["facts"]["cleanup"]) == {"demote", "discard-candidates", "discard-images",
                                              "restore-templates"}
    assert lock_holder(lab) is None and record(lab) == before
    assert leftovers(lab, run_id) == []
    assert_serving(lab, before["release"])


def test_bake_hands_off_to_jenkins_which_promotes_from_the_store_while_the_bake_follows(
        lab, fake_jenkins, tmp_path):
    """The test-and-promote build runs the Jenkinsfile for real as the bake follows it, on
    an agent with none of the bake's files: the run comes from the store by its id, the
    build takes the run's lock from the bake, and the bake ends with the build's result."""
    from deploylib.render import PIPELINE_PARAMETERS

    agent = tmp_path / "agent"
    agent.mkdir()
    shutil.copy(REPO / "tasks.py", agent)
    agent_config = lab.write_config(directory=agent)
    builds = []

    def be_jenkins(params: dict) -> str:
        builds.append(execute_jenkinsfile(lab, params, config=agent_config))
        return builds[-1]["result"]

    job = fake_jenkins.add_job("test-and-promote", runs=be_jenkins,
                               parameters=[p["name"] for p in PIPELINE_PARAMETERS])
    config = lab.write_config(name="with-jenkins.toml",
                              jenkins={"url": fake_jenkins.url.rstrip("/"), "user": "deploy-bot"})
    before = record(lab)
    proc = lab.cli(f"bake --version 3.1.0 --config {config}")
    assert len(job.builds) == 1 and builds[0]["result"] == "SUCCESS", builds[0]["output"][-3000:]
    baked = state_of(lab, proc)
    handed = baked["facts"]["handoff"]
    assert (handed["job"], handed["number"], handed["result"]) == ("test-and-promote", 1,
                                                                   "SUCCESS")
    assert baked["status"] == "done"
    assert job.builds[0]["params"] == {"BAKE_RUN": baked["run_id"], "ENV": "lab",
                                       "VERSION": "3.1.0"}
    assert job.dropped == []  # only parameters the job defines were sent
    # the agent read the run from the store and took it on: its copy is the store's
    assert builds[0]["env"]["RUN_ID"] == baked["run_id"]
    adopted = json.loads((agent / "runs" / f"{baked['run_id']}.json").read_text())
    assert adopted["facts"]["adopted"] and adopted["status"] == "done"
    assert adopted["facts"]["lock_fence"] > baked["facts"]["lock_fence"]
    fleet = assert_serving(lab, "3.1.0")
    for region, instances in fleet.items():
        assert {i.image_id for i in instances} == {baked["facts"]["images"][region]}
    assert record(lab)["previous"]["release"] == before["release"]
    assert lock_holder(lab) is None
    # on the bake's machine, the run's report is the whole run: the store's copy went
    # further than the bake's own file
    report = json.loads(lab.cli(f"report --run {baked['run_id']} --json --no-open "
                                f"--out {tmp_path / 'report'} --config {config}").stdout)
    (run,) = report["runs"]
    assert run["status"] == "done" and "promote" in json.dumps(run)
    assert run["time_to_live"] is not None  # its release went live in the build


def test_bake_fails_clearly_when_jenkins_is_unreachable(lab):
    config = lab.write_config(name="dead-jenkins.toml",
                              jenkins={"url": "http://127.0.0.1:9"})
    proc = lab.cli(f"bake --version 3.2.0 --config {config}", check=False)
    assert proc.returncode == 1
    assert "Jenkins is unreachable" in proc.stderr and "Fix:" in proc.stderr
    state = state_of(lab, proc)
    assert state["status"] == "failed" and "error" in state["facts"]["handoff"]
    # the bake is kept for `invoke resume` (or gc): its images, recorded in the run state;
    # no instance of the run is left, and the lock is free
    images = set(state["facts"]["images"].values())
    assert len(images) == len(lab.env.all_regions)
    left = leftovers(lab, state["run_id"])
    assert images <= set(left) and not [x for x in left if x.startswith("i-")]
    assert lock_holder(lab) is None


def test_no_secret_reaches_any_output_of_full_runs(lab, fake_jenkins, monkeypatch, tmp_path):
    """A bake handed to Jenkins, Jenkins' side of it, a hotfix pushed over SSH, a hotfix
    that fails, status, the lock and gc: no credential appears in anything they print or
    store. The secrets: the AWS secret key, the Jenkins API token, presigned-URL parts."""
    import secrets as random

    from deploylib.lab import credentials
    from tests.lab.checks import app_that_fails_where_marked, host_root, live_hosts

    token = f"jenkins-token-{random.token_hex(12)}"
    monkeypatch.setenv("JENKINS_API_TOKEN", token)
    fake_jenkins.users["deploy-bot"] = token
    fake_jenkins.add_job("test-and-promote")
    jenkins = lab.write_config(name="secret-jenkins.toml",
                               jenkins={"url": fake_jenkins.url.rstrip("/"), "user": "deploy-bot"})
    push = lab.write_config(name="secret-push.toml",
                            artifact_transfer="push", timeouts={"health": 3})
    outputs = []
    bake = lab.cli(f"bake --version 3.3.0 --config {jenkins}")
    outputs += [bake.stdout, bake.stderr]
    handoff = fake_jenkins.jobs["test-and-promote"].builds[-1]["params"]["BAKE_RUN"]
    outputs.append(execute_jenkinsfile(lab, {"BAKE_RUN": handoff})["output"])
    outputs += [lab.cli(f"hotfix --version 3.3.1 --config {push}").stderr]
    victim = next(iter(live_hosts(lab).values()))[0].instance_id
    marker = host_root(lab, victim) / "etc/refuse-release"
    marker.write_text("3.3.2")
    try:
        broken = app_that_fails_where_marked(tmp_path, "3.3.2")
        failed = lab.cli(f"hotfix --version 3.3.2 --artifact {broken} --config {push}",
                         check=False)
    finally:
        marker.unlink()
    assert failed.returncode == 1
    outputs += [failed.stdout, failed.stderr]
    for args in ("status --json", "lock.status", "gc --dry-run", "plan --mode immutable"):
        proc = lab.cli(args)
        outputs += [proc.stdout, proc.stderr]
    outputs += [p.read_text() for p in Path(lab.env.state_dir).glob("*.json")]
    assert token not in json.dumps(fake_jenkins.jobs["test-and-promote"].builds)
    aws_secret = credentials("deployer", lab.cli.lab_dir)["aws_secret_access_key"]
    for text in outputs:
        for secret in (token, aws_secret, "X-Amz-Signature", "X-Amz-Credential", "Signature="):
            assert secret not in text


def test_a_hotfix_is_recorded_in_jenkins_and_jenkins_down_never_fails_it(lab, fake_jenkins):
    fake_jenkins.add_job("record-hotfix")
    up = lab.write_config(name="record-up.toml",
                          jenkins={"url": fake_jenkins.url.rstrip("/")})
    lab.cli(f"hotfix --version 3.4.0 --config {up}")

    def recorded(release: str) -> list[dict]:
        return [item["params"] for item in fake_jenkins.queue.values()
                if item["job"].name == "record-hotfix" and item["params"]["RELEASE"] == release]

    assert len(recorded("3.4.0")) == 1
    assert len(recorded("3.4.0")[0]["HOSTS"].split()) == \
        lab.env.fleet_size * len(lab.env.all_regions)
    # Jenkins down: the hotfix still succeeds, says so, and keeps the notice
    down = lab.write_config(name="record-down.toml",
                            jenkins={"url": "http://127.0.0.1:9"})
    proc = lab.cli(f"hotfix --version 3.4.1 --config {down}")
    state = state_of(lab, proc)
    assert state["status"] == "done" and state["facts"]["notice"]["sent"] is False
    assert_serving(lab, "3.4.1")
    # Jenkins is back: the kept notice is sent
    sent = lab.cli(f"jenkins.notify --config {up}").stdout
    assert f"sent: run {state['run_id']} (3.4.1)" in sent
    assert len(recorded("3.4.1")) == 1
    assert "no notice is waiting" in lab.cli(f"jenkins.notify --config {up}").stdout
