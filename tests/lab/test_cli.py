"""The command line against the lab: bad input refused with nothing started, stages as
separate processes (as Jenkins runs them), a finished stage run again changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deploylib import aws, plan

pytestmark = pytest.mark.lab


def instances(lab) -> list[str]:
    clients = lab.clients()
    ids = []
    for region in lab.env.all_regions:
        pages = clients.ec2(region).get_paginator("describe_instances").paginate()
        ids += [i["InstanceId"] for p in pages for r in p["Reservations"] for i in r["Instances"]
                if i["State"]["Name"] != "terminated"]
    return sorted(ids)


def runs(lab) -> list[Path]:
    return sorted(Path(lab.env.state_dir).glob("*.json"))


BAD_INPUTS = [
    # (arguments, words the one-line error must contain)
    ("deploy --mode sideways --version 1.2.3", ["unknown mode 'sideways'", "Fix:", "in-place"]),
    ("deploy --mode in-place --version '1.0;rm -rf /'", ["version", "not a valid", "Fix:"]),
    ("deploy --mode in-place --version '$(reboot)'", ["version", "Fix:"]),
    ("deploy --mode in-place --version ../../etc", ["version", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --artifact /nonexistent/app.tar.gz",
     ["does not exist", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --artifact tasks.py", ["not a gzip", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --env staging",
     ["unknown environment 'staging'", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --env 'Prod;ls'", ["environment name", "Fix:"]),
    ("step install-release --run not-a-run", ["run id", "Fix:"]),
    ("step install-release --run 20200101T000000-abcdef", ["no run", "Fix:"]),
    ("plan --mode bogus", ["unknown mode", "Fix:"]),
    ("deploy --version 1.2.3", ["--mode is required", "Fix:"]),
    ("hotfix", ["--version is required", "Fix:"]),
    ("step install-release", ["--run is required", "Fix:"]),
    ("resume", ["--run is required", "Fix:"]),
    ("lab.up --hosts 0", ["--hosts 0 is out of range", "Fix:"]),
    ("lab.up --hosts 21", ["--hosts 21 is out of range", "Fix:"]),
    ("deploy --mode IN-PLACE --version 1.2.3", ["unknown mode 'IN-PLACE'", "Fix:"]),
    ("deploy --mode in-place --version=.hidden", ["version", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --artifact examples", ["not a file", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --config /nonexistent/deploy.toml",
     ["does not exist", "--config"]),
    ("rollback --env staging", ["unknown environment 'staging'", "Fix:"]),
    ("rollback --env 'a b'", ["environment name", "Fix:"]),
    ("status --env 'Prod;ls'", ["environment name", "Fix:"]),
    ("lock.break", ["--env is required", "Fix:"]),
    ("lock.status --env nope", ["unknown environment 'nope'", "Fix:"]),
    ("gc --older-than soon", ["--older-than 'soon' is not a number", "Fix:"]),
    ("gc --older-than -3", ["is not a number of hours", "Fix:"]),
    ("cleanup", ["--run is required", "Fix:"]),
    ("resume --run ../../etc/passwd", ["run id", "Fix:"]),
    ("start --handoff '{not json'", ["--handoff is not valid JSON", "Fix:"]),
    ("start --handoff '{}'", ["handoff lacks", "Fix:"]),
    ("plan --mode rollback-image", ["unknown mode", "Fix:"]),
]


@pytest.mark.parametrize("args,words", BAD_INPUTS, ids=[a for a, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line_and_nothing_launched(lab, args, words):
    before_instances, before_runs = instances(lab), runs(lab)
    proc = lab.cli(args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0]
    assert instances(lab) == before_instances
    assert runs(lab) == before_runs


@pytest.mark.parametrize("text,words", [
    ("[environments.lab\n", ["not valid TOML", "Fix:"]),
    ('[environments.lab]\nbatch_sise = 2\n', ["unknown key", "batch_sise", "batch_size"]),
    ('[environments.lab]\nprimary_region = "mars-1"\n', ["primary_region", "Fix:"]),
    ('[environments.lab]\ncopy_regions = ["moon-2"]\n', ["copy_regions", "region"]),
    ('[environments.lab]\nbase_image = "ami-12"\n', ["base_image", "image id"]),
    ('[environments.lab]\nbatch_size = "0%"\n', ["batch_size", "percentage"]),
    ('[environments.lab]\nbatch_size = "150%"\n', ["batch_size", "percentage"]),
    ('[environments.lab]\nbatch_size = -2\n', ["batch_size", "at least 1"]),
    ('[environments.lab]\nmax_failed_hosts = -1\n', ["max_failed_hosts", "Fix:"]),
    ('[environments.lab]\nlock_table = "x"\n', ["lock_table", "DynamoDB table name"]),
    ('[environments.lab]\nkeep_images = 0\n', ["keep_images", "Fix:"]),
    ('[environments.lab]\ntimeouts = { ssh = 0 }\n', ["timeouts", "positive"]),
    ('[environments.lab]\nartifact_transfer = "ftp"\n', ["artifact_transfer", "Fix:"]),
])
def test_malformed_deploy_toml_is_refused(lab, tmp_path, text, words):
    bad = tmp_path / "deploy.toml"
    bad.write_text(text)
    before = instances(lab)
    proc = lab.cli(f"deploy --mode in-place --version 1.2.3 --config {bad}", check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and all(w in line for w in words), line
    assert instances(lab) == before


def test_stages_run_as_separate_processes_and_a_finished_stage_is_a_no_op(lab):
    run_id = lab.cli("start --mode in-place --version 2.0.0").stdout.strip()
    for name in plan.plan("in-place").names():
        lab.cli(f"step {name} --run {run_id}")
    state_path = Path(lab.env.state_dir) / f"{run_id}.json"
    state = json.loads(state_path.read_text())
    assert state["status"] == "done" or all(
        state["stages"][n]["status"] == "done" for n in plan.plan("in-place").names())
    record = aws.read_record(lab.clients().ssm(), lab.env.record_parameter)
    assert record["release"] == "2.0.0" and record["run_id"] == run_id

    before_instances, before_state = instances(lab), state_path.read_text()
    proc = lab.cli(f"step install-release --run {run_id}", check=False)
    assert proc.returncode == 2  # install-release is inside the rollout in this procedure
    assert "rollout" in proc.stderr
    lab.cli(f"step rollout --run {run_id}")
    assert instances(lab) == before_instances
    after = json.loads(state_path.read_text())
    assert after["stages"] == json.loads(before_state)["stages"]


def test_plan_json_shows_one_install_function_in_all_three(lab):
    functions = set()
    for mode in ("immutable", "rebake-light", "in-place"):
        data = json.loads(lab.cli(f"plan --mode {mode} --json").stdout)
        stages = [*data["stages"], *(s for st in data["stages"]
                                     for s in st.get("per_batch", []) + st.get("per_region", []))]
        installs = [s for s in stages if s["name"] == "install-release"]
        assert len(installs) == 1
        functions.add(installs[0]["function"])
    assert functions == {"deploylib.steps:install_release"}


def test_resume_continues_a_run_from_its_failed_stage(lab, tmp_path):
    # An artifact whose app never becomes healthy: the rollout's first batch fails, the
    # host restores its previous release, and the run stops there.
    import tarfile

    broken = tmp_path / "broken.tar.gz"
    src = tmp_path / "app.py"
    src.write_text("raise SystemExit('this release cannot start')\n")
    with tarfile.open(broken, "w:gz") as tar:
        tar.add(src, arcname="app.py")
    from tests.conftest import write_config

    quick = write_config(lab.config_path.parent, name="quick.toml", timeouts={"health": 3})
    proc = lab.cli(f"deploy --mode in-place --version 2.0.1-broken --artifact {broken} "
                   f"--config {quick}", check=False)
    assert proc.returncode == 1
    assert "install-release" in proc.stderr
    run_id = sorted(Path(lab.env.state_dir).glob("*.json"))[-1].stem
    state = json.loads((Path(lab.env.state_dir) / f"{run_id}.json").read_text())
    assert state["status"] == "failed"
    assert state["stages"]["rollout/1/install-release"]["status"] == "failed"
    # resuming retries the failed stage, which fails again the same way
    proc = lab.cli(f"resume --run {run_id} --config {quick}", check=False)
    assert proc.returncode == 1 and "rollout/1/install-release" in proc.stderr
    # the host that failed switched back to its previous release and serves it
    from deploylib import steps

    ref = state["facts"]["batches"][0][0]
    inst = aws.describe(lab.clients().ec2(ref["region"]), ref["region"], [ref["instance_id"]])[0]
    live_release = aws.read_record(lab.clients().ssm(), lab.env.record_parameter)["release"]
    assert live_release != "2.0.1-broken"
    assert steps.serving_version(inst.address, lab.env.app_port,
                                 lab.env.health_path) == live_release


def test_a_team_step_and_hooks_run_inside_a_real_deploy(lab):
    from tests.conftest import REPO, write_config

    team = write_config(lab.config_path.parent, name="team.toml", plugins=["team_steps"],
                        extra_stages=[{"step": "announce", "after": "install-release"}])
    env = dict(lab.cli.env(), PYTHONPATH=str(REPO / "tests" / "plugins"))
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "invoke", "hotfix", "--version", "2.1.0",
                           "--config", str(team)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run_id = sorted(Path(lab.env.state_dir).glob("*.json"))[-1].stem
    state = json.loads((Path(lab.env.state_dir) / f"{run_id}.json").read_text())
    batches = len(state["facts"]["batches"])
    assert state["facts"]["announced"] == ["2.1.0"] * batches
    assert state["facts"]["hooks"] == ["before install-release on batch",
                                       "after install-release on batch"] * batches
    assert state["stages"]["rollout/1/announce"]["step"] == "team_steps:announce"


SECRETS = ("X-Amz-Signature", "X-Amz-Credential", "Signature=", "lab-secret")


def test_no_secret_reaches_output_or_run_state(lab):
    proc = lab.cli("hotfix --version 2.2.0")
    texts = [proc.stdout, proc.stderr] + [p.read_text() for p in runs(lab)]
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def test_hosts_that_cannot_reach_the_store_get_the_release_pushed(lab):
    from tests.conftest import write_config
    from tests.lab.test_procedures import assert_serving

    push = write_config(lab.config_path.parent, name="push.toml", artifact_transfer="push")
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
    # the same content again is simply found in the store
    proc = lab.cli("hotfix --version 2.4.0")
    proc = lab.cli("hotfix --version 2.4.0")
    assert "already in the store" in proc.stderr
