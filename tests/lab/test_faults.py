"""Faults injected into a running lab, one at a time, each checked for "nothing is lost".

After every fault: the exit is non-zero with one clear error line (or zero where the
tool is meant to ride the fault out); every live host serves a good release and the
load balancers serve only it; no host's `current` points at a partial release; nothing
the run created is left in the cloud; the run state says what happened.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from deploylib import aws, lock, release, waits
from tests.conftest import REPO, write_config
from tests.lab.test_procedures import assert_serving, balancer_versions, live, record

pytestmark = pytest.mark.lab


# -- what "nothing is lost" means, as checks ------------------------------------------------


def leftovers(lab, run_id: str) -> list[str]:
    """What the run created that still exists and is not serving (not a registered
    instance, not an image the record names, nor one of its snapshots)."""
    clients = lab.clients()
    live_images = set(record(lab)["images"].values())
    out = []
    for region in lab.env.all_regions:
        ec2, elb = clients.ec2(region), clients.elbv2(region)
        group = aws.resolve_target_group(elb, lab.env.target_group, region)
        registered = set(aws.target_states(elb, group))
        out += [i.instance_id for i in aws.find_tagged(ec2, region, {aws.TAG_RUN: run_id})
                if i.instance_id not in registered]
        images = aws.tagged_images(ec2, {aws.TAG_RUN: run_id})
        out += [i["ImageId"] for i in images if i["ImageId"] not in live_images]
        used = {m["Ebs"]["SnapshotId"] for i in images if i["ImageId"] in live_images
                for m in i.get("BlockDeviceMappings", []) if "SnapshotId" in m.get("Ebs", {})}
        out += [s["SnapshotId"] for s in aws.tagged_snapshots(ec2, {aws.TAG_RUN: run_id})
                if s["SnapshotId"] not in used]
    return out


def host_root(lab, instance_id: str) -> Path:
    return lab.cli.lab_dir / "hosts" / instance_id / "root"


def assert_current_whole(lab, version: str) -> None:
    """Every live host's `current` is a complete release: its VERSION file says so."""
    for instances in live(lab).values():
        for inst in instances:
            current = host_root(lab, inst.instance_id) / lab.env.app_root.lstrip("/") / "current"
            assert (current / "VERSION").read_text().strip() == version, inst.instance_id
            assert (current / "app.py").exists(), inst.instance_id


def assert_nothing_lost(lab, state: dict, version: str) -> None:
    assert_serving(lab, version)
    assert_current_whole(lab, version)
    assert leftovers(lab, state["run_id"]) == []
    assert lock.read(lab.clients().dynamodb(), lab.env.lock_table, "lab") is None


def newest_state(lab) -> dict:
    path = max(Path(lab.env.state_dir).glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(path.read_text())


def failed_clearly(proc: subprocess.CompletedProcess, *words: str) -> str:
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Fix:" in errors[0], proc.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def quick_config(lab, name: str = "quick.toml", **overrides) -> Path:
    timeouts = {"health": 3, "ssh_retry": 2, **overrides.pop("timeouts", {})}
    return write_config(lab.config_path.parent, name=name, timeouts=timeouts, **overrides)


def set_faults(lab, *rules: dict) -> None:
    (lab.cli.lab_dir / "faults.json").write_text(json.dumps({"rules": list(rules)}))


def fault_hits(lab) -> int:
    path = lab.cli.lab_dir / "faults-hits.json"
    return sum(json.loads(path.read_text()).values()) if path.exists() else 0


@pytest.fixture(autouse=True)
def no_faults_left(lab):
    yield
    (lab.cli.lab_dir / "faults.json").unlink(missing_ok=True)
    (lab.cli.lab_dir / "faults-hits.json").unlink(missing_ok=True)


def app_that_fails_where_marked(tmp_path: Path, version: str) -> Path:
    """A release that refuses to start on hosts carrying etc/refuse-release."""
    source = tmp_path / f"app-{version}"
    source.mkdir()
    real = (REPO / "examples/app/app.py").read_text()
    (source / "app.py").write_text(
        "import os, sys\n"
        "if os.path.exists(os.environ.get('DEPLOY_HOST_ROOT', '') + '/etc/refuse-release'):\n"
        "    sys.exit('refused on this host')\n" + real)
    return release.build(source, version, tmp_path)


def hosts_in_rollout_order(lab) -> list[str]:
    return [i.instance_id for region in lab.env.all_regions for i in sorted(
        live(lab)[region], key=lambda i: i.instance_id)]


# -- the faults ------------------------------------------------------------------------------


@pytest.mark.parametrize("transfer", ["pull", "push"])
def test_health_check_fails_on_host_k_of_n_and_updated_hosts_roll_back(lab, tmp_path,
                                                                      transfer):
    """Pushed or pulled: the rollback installs the live release (read back from the
    store when pushing), not the failed one."""
    before = record(lab)["release"]
    order = hosts_in_rollout_order(lab)
    k = 3
    marker = host_root(lab, order[k - 1]) / "etc/refuse-release"
    marker.write_text("")
    version = f"5.0.1-{transfer}"
    try:
        artifact = app_that_fails_where_marked(tmp_path, version)
        config = quick_config(lab, f"k-{transfer}.toml", artifact_transfer=transfer)
        proc = lab.cli(f"hotfix --version {version} --artifact {artifact} --config {config}",
                       check=False)
    finally:
        marker.unlink()
    failed_clearly(proc, "install-release", order[k - 1], "previous release was restored")
    state = newest_state(lab)
    assert state["stages"][f"rollout/{k}/install-release"]["status"] == "failed"
    assert f"rollout/{k + 1}/drain" not in state["stages"]  # it stopped at host k
    # hosts 1..k-1 had the new release; the rollback put them back on the live one
    assert sorted(state["facts"]["rolled_back"]) == sorted(order[: k - 1]), proc.stderr[-3000:]
    assert record(lab)["release"] == before
    assert_nothing_lost(lab, state, before)


def test_a_failure_budget_leaves_the_failed_host_out_and_finishes(lab, tmp_path):
    before = record(lab)["release"]
    order = hosts_in_rollout_order(lab)
    bad = order[1]
    marker = host_root(lab, bad) / "etc/refuse-release"
    marker.write_text("")
    try:
        artifact = app_that_fails_where_marked(tmp_path, "5.0.2")
        proc = lab.cli(f"hotfix --version 5.0.2 --artifact {artifact} "
                       f"--config {quick_config(lab, 'budget.toml', max_failed_hosts=1)}",
                       check=False)
    finally:
        marker.unlink()
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = newest_state(lab)
    assert list(state["facts"]["failed_hosts"]) == [bad]
    clients = lab.clients()
    region = next(r for r in lab.env.all_regions if bad in [i.instance_id for i in
                  aws.describe(clients.ec2(r), r, [bad])])
    group = aws.resolve_target_group(clients.elbv2(region), lab.env.target_group, region)
    # never routed to: the target group does not have it; it still serves the old release
    assert bad not in aws.target_states(clients.elbv2(region), group)
    from deploylib.steps import serving_version

    inst = aws.describe(clients.ec2(region), region, [bad])[0]
    assert serving_version(inst.address, lab.env.app_port, lab.env.health_path) == before
    # back to a whole fleet: the operator fixes the host and puts it back in
    aws.register(clients.elbv2(region), group, [bad], lab.env.app_port)
    aws.wait_healthy(clients.elbv2(region), group, [bad], region, 30)
    lab.cli(f"hotfix --version 5.0.3 --artifact {app_that_fails_where_marked(tmp_path, '5.0.3')}")
    assert_serving(lab, "5.0.3")


def kill_sshd(lab, instance_id: str) -> None:
    """Kill a host's sshd: the listener and every connection it forked (each connection's
    sshd runs in a session of its own, so killing the listener alone leaves them)."""
    pid = int((lab.cli.lab_dir / "hosts" / instance_id / "sshd.pid").read_text())
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # ppid
            children.append(int(stat.parent.name))
    os.killpg(pid, signal.SIGKILL)
    for child in children:
        try:
            os.kill(child, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def revive_sshd(lab):
    """Start a killed host's sshd again from its own config, after the test."""
    killed: list[str] = []
    yield killed
    from deploylib.lab.hosts import SSHD
    from tests.conftest import wait_listening

    for iid in killed:
        home = lab.cli.lab_dir / "hosts" / iid
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(home / "sshd_config")],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        (home / "sshd.pid").write_text(str(proc.pid))
        address = next(ln.split()[1] for ln in (home / "sshd_config").read_text().splitlines()
                       if ln.startswith("ListenAddress")).rsplit(":", 1)
        wait_listening(address[0], int(address[1]))


def test_a_host_unreachable_before_the_rollout_stops_it_before_any_drain(lab, revive_sshd):
    before = record(lab)["release"]
    victim = hosts_in_rollout_order(lab)[-1]
    kill_sshd(lab, victim)
    revive_sshd.append(victim)
    proc = lab.cli(f"hotfix --version 5.1.0 --config {quick_config(lab)}", check=False)
    failed_clearly(proc, "select-hosts", victim, "no host was touched")
    state = newest_state(lab)
    assert "rollout" not in state["stages"]
    assert_nothing_lost(lab, state, before)


def test_sshd_killed_in_the_middle_of_a_transfer(lab, tmp_path, revive_sshd):
    """Push mode, a large artifact: sshd dies while the file is arriving on host 1."""
    before = record(lab)["release"]
    source = tmp_path / "big"
    source.mkdir()
    (source / "app.py").write_text((REPO / "examples/app/app.py").read_text())
    (source / "ballast.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    artifact = release.build(source, "5.2.0", tmp_path)
    first = hosts_in_rollout_order(lab)[0]
    config = quick_config(lab, "push.toml", artifact_transfer="push")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "hotfix", "--version", "5.2.0",
                             "--artifact", str(artifact)], cwd=REPO,
                            env=dict(lab.cli.env(), DEPLOY_CONFIG=str(config)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    arriving = host_root(lab, first).parent  # pushed files land in the host's real /tmp

    def transfer_started() -> bool:
        return any(Path("/tmp").glob(f"deploylib-*-{first}.tar.gz")) or proc.poll() is not None

    waits.until(transfer_started, timeout=120, what="the push to begin", resource=str(arriving),
                fix="-", first=0.01, longest=0.02)
    kill_sshd(lab, first)
    revive_sshd.append(first)
    _, err = proc.communicate(timeout=180)
    for partial in Path("/tmp").glob(f"deploylib-*-{first}.tar.gz"):
        partial.unlink()  # the host's /tmp is this machine's: tidy what the test caused
    failed_clearly(subprocess.CompletedProcess([], proc.returncode, "", err), first)
    state = newest_state(lab)
    assert state["stages"]["rollout/1/install-release"]["status"] == "failed"
    assert_nothing_lost(lab, state, before)


def test_an_artifact_changed_in_the_store_is_refused_by_the_host(lab, tmp_path):
    before = record(lab)["release"]
    good = release.build(REPO / "examples/app", "5.3.0", tmp_path)
    digest = release.sha256_file(good)
    # the store holds other bytes under the published digest (tampered, or a bad upload)
    other = release.build(REPO / "examples/app", "5.3.0-other", tmp_path)
    lab.clients().s3().put_object(Bucket=lab.env.artifact_bucket,
                                  Key="releases/lab/5.3.0.tar.gz", Body=other.read_bytes(),
                                  Metadata={"sha256": digest})
    proc = lab.cli(f"hotfix --version 5.3.0 --artifact {good} --config {quick_config(lab)}",
                   check=False)
    failed_clearly(proc, "differs from the published one")
    state = newest_state(lab)
    assert "exited 3" in state["stages"]["rollout/1/install-release"]["error"]
    assert_nothing_lost(lab, state, before)


def test_an_unpack_that_fails_for_a_full_disk_leaves_no_partial_release(lab):
    before = record(lab)["release"]
    first = hosts_in_rollout_order(lab)[0]
    marker = host_root(lab, first) / "etc/lab-faults/disk-full"
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("")
    try:
        proc = lab.cli(f"hotfix --version 5.4.0 --config {quick_config(lab)}", check=False)
    finally:
        marker.unlink()
    failed_clearly(proc, "could not be unpacked")
    releases = host_root(lab, first) / lab.env.app_root.lstrip("/") / "releases"
    assert not (releases / "5.4.0").exists()
    assert not list(releases.glob(".unpack-*"))
    assert_nothing_lost(lab, newest_state(lab), before)


def test_a_corrupt_archive_is_refused_before_anything_starts(lab, tmp_path):
    good = release.build(REPO / "examples/app", "5.4.1", tmp_path)
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    runs = set(Path(lab.env.state_dir).glob("*.json"))
    proc = lab.cli(f"hotfix --version 5.4.1 --artifact {corrupt}", check=False)
    assert proc.returncode == 2 and "corrupt or truncated" in proc.stderr
    assert set(Path(lab.env.state_dir).glob("*.json")) == runs


def test_aws_throttling_on_describe_and_copy_is_ridden_out(lab):
    set_faults(lab, {"action": "DescribeInstances", "error": "RequestLimitExceeded", "times": 3},
               {"action": "CopyImage", "error": "RequestLimitExceeded", "times": 2})
    lab.cli("deploy --mode immutable --version 5.5.0")
    assert fault_hits(lab) == 5  # every injected throttle was met, and retried
    state = newest_state(lab)
    assert state["status"] == "done"
    assert_serving(lab, "5.5.0")
    assert leftovers(lab, state["run_id"]) == []


def test_an_image_copy_failing_in_one_region_removes_every_image_of_the_run(lab):
    before = record(lab)
    set_faults(lab, {"action": "CopyImage", "region": "eu-west-1", "error": "InvalidParameter",
                     "message": "copy refused (injected)"})
    proc = lab.cli("deploy --mode immutable --version 5.6.0", check=False)
    failed_clearly(proc, "copy-image", "eu-west-1")
    state = newest_state(lab)
    assert state["facts"]["cleanup"] == {"demote": "done", "discard-candidates": "done",
                                         "discard-images": "done", "discard-builder": "done"}
    assert record(lab) == before
    assert_nothing_lost(lab, state, before["release"])


def start_deploy(lab, *args: str) -> subprocess.Popen:
    before = set(Path(lab.env.state_dir).glob("*.json"))
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "deploy", *args], cwd=REPO,
                            env=lab.cli.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    proc.runs_before = before  # type: ignore[attr-defined]
    return proc


def wait_for_stage(lab, proc: subprocess.Popen, key: str) -> dict:
    """The new run's state once its stage `key` is done (the run must still be going)."""
    def done() -> dict | None:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        new = set(Path(lab.env.state_dir).glob("*.json")) - proc.runs_before
        state = json.loads(next(iter(new)).read_text()) if new else {}
        return state if state.get("stages", {}).get(key, {}).get("status") == "done" else None

    return waits.until(done, timeout=180, what=f"stage {key}", resource="the run",
                       fix="read the run's output", first=0.05, longest=0.2)


def copies_held(lab, state: str = "pending") -> None:
    set_faults(lab, *({"action": "DescribeImages", "region": r, "image_state": state}
                      for r in lab.env.copy_regions))


def test_the_primary_region_goes_live_while_the_copies_are_pending(lab):
    """Each region waits only for its own image: with every copy held pending, the
    primary region is tested and promoted; the others follow when their copies land."""
    before = record(lab)["release"]
    copies_held(lab)
    proc = start_deploy(lab, "--mode", "immutable", "--version", "5.6.5")
    primary = lab.env.primary_region
    state = wait_for_stage(lab, proc, f"regions/{primary}/promote")
    clients = lab.clients()
    for region in lab.env.copy_regions:
        image = state["facts"]["images"][region]
        assert clients.ec2(region).describe_images(ImageIds=[image])["Images"][0]["State"] \
            == "pending"
        assert state["stages"][f"regions/{region}/wait-image"]["status"] == "running"
        assert f"regions/{region}/launch-candidates" not in state["stages"]
    serving = {region: balancer_versions(lab, region) for region in lab.env.all_regions}
    assert serving[primary] == {"5.6.5"}
    assert all(serving[r] == {before} for r in lab.env.copy_regions), serving
    assert record(lab)["release"] == before  # committed only when every region is live
    # the hosts the primary's promotion replaced are out of its target group, still
    # running, and kept by gc while the run may put them back
    replaced = state["facts"]["promoted"][primary]
    assert len(replaced) == 2
    swept = json.loads(lab.cli("gc --older-than 0 --dry-run --json").stdout)
    kept = {k["id"]: k["reason"] for k in swept["kept"]}
    assert all("may put it back" in kept[i] for i in replaced), kept
    assert not {i["id"] for i in swept["would_remove"]} & set(replaced)
    (lab.cli.lab_dir / "faults.json").unlink()  # the copies land
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    final = newest_state(lab)
    assert final["status"] == "done" and record(lab)["release"] == "5.6.5"
    assert_nothing_lost(lab, final, "5.6.5")


def test_a_copy_failing_after_the_primary_went_live_puts_the_primary_back(lab):
    """Until the release is recorded the replaced hosts keep running: a region that
    fails late gets every region back on the release it had, and nothing is left."""
    before = record(lab)
    copies_held(lab)
    proc = start_deploy(lab, "--mode", "immutable", "--version", "5.6.6")
    wait_for_stage(lab, proc, f"regions/{lab.env.primary_region}/promote")
    copies_held(lab, "failed")
    out, err = proc.communicate(timeout=300)
    failed_clearly(subprocess.CompletedProcess([], proc.returncode, out, err), "image is failed")
    state = newest_state(lab)
    assert state["facts"]["cleanup"]["demote"] == "done"
    assert state["facts"]["promoted"] == {}
    assert record(lab) == before
    (lab.cli.lab_dir / "faults.json").unlink()
    assert_nothing_lost(lab, state, before["release"])


def test_keep_on_error_keeps_the_bake_and_resume_finishes_it(lab):
    set_faults(lab, {"action": "CopyImage", "region": "eu-west-1", "error": "InvalidParameter"})
    proc = lab.cli("deploy --mode immutable --version 5.7.0 --keep-on-error", check=False)
    assert proc.returncode == 1
    state = newest_state(lab)
    assert state["facts"]["kept_on_error"] is True
    assert set(state["facts"]["images"]) == {"us-east-1", "us-west-2"}  # kept
    (lab.cli.lab_dir / "faults.json").unlink()
    lab.cli(f"resume --run {state['run_id']}")
    final = json.loads((Path(lab.env.state_dir) / f"{state['run_id']}.json").read_text())
    assert final["status"] == "done"
    # the regions whose copies had finished were not copied again
    assert final["facts"]["images"]["us-west-2"] == state["facts"]["images"]["us-west-2"]
    assert_serving(lab, "5.7.0")


def test_the_builder_failing_during_provisioning_leaves_nothing(lab):
    before = record(lab)["release"]
    config = write_config(lab.config_path.parent, name="bad-package.toml",
                          os_packages=["python3", "no-such-package"])
    proc = lab.cli(f"deploy --mode immutable --version 5.8.0 --config {config}", check=False)
    failed_clearly(proc, "provision")
    state = newest_state(lab)
    assert "Unable to locate package no-such-package" in json.dumps(state["stages"]["provision"])
    assert_nothing_lost(lab, state, before)


def test_two_concurrent_deploys_one_is_refused_naming_the_holder(lab):
    before = record(lab)["release"]
    procs = [subprocess.Popen([sys.executable, "-m", "invoke", "hotfix", "--version", v],
                              cwd=REPO, env=lab.cli.env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for v in ("6.0.1", "6.0.2")]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 3], results
    refused = next(err for code, err in results if code == 3).strip()
    assert "\n" not in refused and "is locked by run" in refused and "Fix:" in refused
    winner = "6.0.1" if results[0][0] == 0 else "6.0.2"
    assert record(lab)["release"] == winner != before
    assert_serving(lab, winner)


def test_a_stale_lock_of_a_crashed_run_is_taken_over(lab):
    ddb = lab.clients().dynamodb()
    # a run that crashed an hour after taking the lock, which expired since
    lock.acquire(ddb, lab.env.lock_table, "lab", "20261127T000000-dead00", ttl=60,
                 clock=lambda: time.time() - 3600)
    status = lab.cli("lock.status").stdout
    assert "20261127T000000-dead00" in status and "stale" in status
    lab.cli("hotfix --version 6.1.0")
    assert_serving(lab, "6.1.0")


def test_a_live_lock_of_a_dead_run_is_broken_by_the_operator(lab):
    ddb = lab.clients().dynamodb()
    lock.acquire(ddb, lab.env.lock_table, "lab", "20261127T000000-dead01", ttl=3600)
    proc = lab.cli("hotfix --version 6.2.0", check=False)
    assert proc.returncode == 3 and "20261127T000000-dead01" in proc.stderr
    assert "lock of run 20261127T000000-dead01" in lab.cli("lock.break --env lab").stdout
    lab.cli("hotfix --version 6.2.0")
    assert_serving(lab, "6.2.0")


def test_gc_removes_a_crashed_runs_orphans_and_nothing_live(lab):
    clients = lab.clients()
    region = lab.env.primary_region
    ec2 = clients.ec2(region)
    live_before = {r: sorted(i.instance_id for i in v) for r, v in live(lab).items()}
    # what a crashed run left: an instance, and an image with its snapshot
    image = record(lab)["images"][region]
    tags = aws.tags("20261120T000000-crash0", "lab", "0.0.1", "immutable", "candidate")
    subnet = aws.resolve_subnet(ec2, lab.env.subnet, region)
    group = aws.resolve_security_group(ec2, lab.env.security_group, region)
    orphan = aws.launch(ec2, region=region, image_id=image, count=1, instance_type="t3.micro",
                        subnet_id=subnet, security_group_ids=[group], tag_list=tags,
                        client_token="crash")[0]
    dry = json.loads(lab.cli("gc --older-than 0 --dry-run --json").stdout)
    assert orphan in [i["id"] for i in dry["would_remove"]]
    live_images = set(record(lab)["images"].values())
    assert not live_images & {i["id"] for i in dry["would_remove"]}
    assert aws.find_tagged(ec2, region, {aws.TAG_RUN: "20261120T000000-crash0"})  # dry run
    out = json.loads(lab.cli("gc --older-than 0 --json").stdout)
    assert {"kind": "instance", "region": region, "id": orphan, "run": "20261120T000000-crash0",
            "result": "removed"} in out["removed"]
    assert aws.find_tagged(ec2, region, {aws.TAG_RUN: "20261120T000000-crash0"}) == []
    # the live fleet, its images and the rollback targets are untouched
    assert {r: sorted(i.instance_id for i in v) for r, v in live(lab).items()} == live_before
    for r, image_id in record(lab)["images"].items():
        assert clients.ec2(r).describe_images(ImageIds=[image_id])["Images"]
    assert_serving(lab, record(lab)["release"])


def test_a_tarball_with_paths_outside_the_release_is_refused(lab, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../../etc/cron.d/x")
    proc = lab.cli(f"hotfix --version 6.3.0 --artifact {evil}", check=False)
    assert proc.returncode == 2 and "outside the release" in proc.stderr
