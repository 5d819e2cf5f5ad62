"""Faults during in-place releases (hotfixes and their rollback), one at a time, each
checked for "nothing is lost": a non-zero exit with one clear error line (or zero where
the tool is meant to ride the fault out); every live host serving a good release and
the balancers only it; no host's `current` a partial release; nothing of the run left;
the run state saying what happened."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from deploylib import aws, tarball, waits
from tests.conftest import REPO, tool_env
from tests.lab.checks import (
    app_that_fails_where_marked,
    assert_nothing_lost,
    assert_serving,
    broken_hotfix,
    ended,
    failed_clearly,
    host_root,
    hosts_in_rollout_order,
    live_hosts,
    quick_config,
    record,
    registered,
    runs,
    serving,
    start_deploy,
    state_of,
    target_group,
    wait_for_stage,
)

pytestmark = pytest.mark.lab


def test_ctrl_c_in_the_middle_of_a_wave_leaves_every_region_serving(lab, tmp_path):
    before = record(lab)["release"]
    config = lab.write_config(name="waves.toml", rollout="waves")
    proc = start_deploy(lab, "--mode", "in-place", "--version", "5.6.2",
                        "--config", str(config))
    state = wait_for_stage(lab, proc, "rollout/2/drain")  # wave 2: every region's hosts out
    assert {h["region"] for h in state["facts"]["batches"][1]} == set(lab.env.all_regions)
    proc.send_signal(signal.SIGINT)
    done = ended(proc)
    assert done.returncode == 130, done.stderr[-2000:]
    assert "interrupted" in done.stderr
    assert_nothing_lost(lab, state_of(lab, state["run_id"]), before)


@pytest.mark.parametrize("transfer", ["pull", "push"])
def test_health_check_fails_on_host_k_of_n_and_updated_hosts_roll_back(lab, tmp_path, refuse,
                                                                      transfer):
    """Pushed or pulled: the switch-back installs the live release (read back from the
    store when pushing), not the failed one."""
    before = record(lab)["release"]
    order = hosts_in_rollout_order(lab)
    k = len(order)  # the last: every host before it was updated, and goes back
    version = f"5.0.1-{transfer}"
    config = quick_config(lab, f"k-{transfer}.toml", artifact_transfer=transfer)
    state = broken_hotfix(lab, tmp_path, refuse, order[k - 1], version, config,
                          "previous release was restored")
    assert state["stages"][f"rollout/{k}/install-release"]["was"] == "failed"
    assert f"rollout/{k + 1}/drain" not in state["stages"]  # it stopped at host k
    # hosts 1..k-1 had the new release; the switch-back put them on the live one
    assert sorted(state["facts"]["rolled_back"]) == sorted(order[: k - 1]), state["facts"]
    assert state["facts"]["cleanup"] == {"restore-batch": "done", "locate-live": "done",
                                        "resume-scaling": "done"}
    assert record(lab)["release"] == before
    assert_nothing_lost(lab, state, before)


def test_without_rollback_on_failure_the_updated_hosts_keep_the_new_release(lab, tmp_path,
                                                                          refuse):
    before = record(lab)["release"]
    order = hosts_in_rollout_order(lab)
    config = quick_config(lab, "keep.toml", rollback_on_failure=False)
    state = broken_hotfix(lab, tmp_path, refuse, order[1], "5.0.4", config)
    assert state["facts"]["rolled_back"] == [] and "locate-live" not in state["facts"]["cleanup"]
    fleet = {i.instance_id: i for insts in live_hosts(lab).values() for i in insts}
    # the first host stays on the new release, the failed one is back on the live one;
    # the balancer never routes to a host on a failed release
    assert serving(lab, fleet[order[0]]) == "5.0.4"
    assert serving(lab, fleet[order[1]]) == before
    assert record(lab)["release"] == before  # nothing recorded: the rollout did not finish
    # the operator finishes it (the host repaired): the resume goes on from the failed batch
    host_root(lab, order[1]).joinpath("etc/refuse-release").unlink()
    lab.cli(f"resume --run {state['run_id']} --config {config}")
    assert_serving(lab, "5.0.4")


def test_a_failure_budget_leaves_the_failed_host_out_and_finishes(lab, tmp_path, refuse):
    before = record(lab)["release"]
    bad = hosts_in_rollout_order(lab)[1]
    refuse(bad, "5.0.2")
    artifact = app_that_fails_where_marked(tmp_path, "5.0.2")
    proc = lab.cli(f"hotfix --version 5.0.2 --artifact {artifact} "
                   f"--config {quick_config(lab, 'budget.toml', max_failed_hosts=1)}",
                   check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    host_root(lab, bad).joinpath("etc/refuse-release").unlink()  # the host is repaired
    state = state_of(lab, proc)
    assert list(state["facts"]["failed_hosts"]) == [bad]
    clients = lab.clients()
    region = next(r for r in lab.env.all_regions
                  if aws.ec2.describe(clients.ec2(r), r, [bad]))
    # never routed to: the target group does not have it; it still serves the old release
    assert bad not in registered(lab, region)
    assert serving(lab, aws.ec2.describe(clients.ec2(region), region, [bad])[0]) == before
    # back to a whole fleet: the operator fixes the host and puts it back in
    aws.elb.put_in(clients.elbv2(region), region, target_group(lab, region), [bad],
                   lab.env.app_port, timeout=30)
    lab.cli(f"hotfix --version 5.0.3 --artifact {app_that_fails_where_marked(tmp_path, '5.0.3')}")
    assert_serving(lab, "5.0.3")


def test_a_failing_rollback_in_place_switches_back_to_the_release_it_replaced(lab, tmp_path,
                                                                            refuse):
    """The rollback is the in-place procedure: a host that refuses the previous release
    stops it, and the hosts it had switched are put back on the live one."""
    lab.cli(f"hotfix --version 5.0.5 --artifact {app_that_fails_where_marked(tmp_path, '5.0.5')}")
    lab.cli(f"hotfix --version 5.0.6 --artifact {app_that_fails_where_marked(tmp_path, '5.0.6')}")
    order = hosts_in_rollout_order(lab)
    refuse(order[-1], "5.0.5")  # which the rollback installs, on its last host
    proc = lab.cli(f"rollback --config {quick_config(lab)}", check=False)
    failed_clearly(proc, "install-release", order[-1])
    state = state_of(lab, proc)
    assert state["mode"] == "rollback-in-place"
    assert sorted(state["facts"]["rolled_back"]) == sorted(order[:-1])
    assert record(lab)["release"] == "5.0.6"  # unchanged: the rollback did not happen
    assert_nothing_lost(lab, state, "5.0.6")


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
    state = state_of(lab, proc)
    assert "rollout" not in state["stages"]
    assert_nothing_lost(lab, state, before)


def test_sshd_killed_in_the_middle_of_a_transfer(lab, tmp_path, revive_sshd):
    """Push mode, a large artifact: sshd dies while the file is arriving on host 1."""
    before = record(lab)["release"]
    source = tmp_path / "big"
    source.mkdir()
    (source / "app.py").write_text((REPO / "examples/app/app.py").read_text())
    (source / "ballast.bin").write_bytes(os.urandom(64 * 1024 * 1024))
    artifact = tarball.build(source, "5.2.0", tmp_path)
    first = hosts_in_rollout_order(lab)[0]
    config = quick_config(lab, "push.toml", artifact_transfer="push")
    proc = subprocess.Popen([sys.executable, "-m", "invoke", "hotfix", "--version", "5.2.0",
                             "--artifact", str(artifact)], cwd=REPO,
                            env=tool_env(DEPLOY_CONFIG=str(config),
                                         DEPLOY_LAB_DIR=str(lab.cli.lab_dir)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Pushed files land in a directory made for them (named for the instance) in the
    # host's /var/tmp, which for a lab host is this machine's.
    earlier = set(Path("/var/tmp").glob(f"deploylib-push.{first}.*"))

    def transfer_started() -> bool:
        return bool(set(Path("/var/tmp").glob(f"deploylib-push.{first}.*/release.tar.gz")) -
                    {p / "release.tar.gz" for p in earlier}) or proc.poll() is not None

    waits.until(transfer_started, timeout=120, what="the push to begin", resource="/var/tmp",
                fix="-", first=0.01, longest=0.02)
    kill_sshd(lab, first)
    revive_sshd.append(first)
    _, err = proc.communicate(timeout=180)
    for landing in set(Path("/var/tmp").glob(f"deploylib-push.{first}.*")) - earlier:
        shutil.rmtree(landing)  # the partial push the test caused
    done = subprocess.CompletedProcess([], proc.returncode, "", err)
    failed_clearly(done, first)
    state = state_of(lab, done)
    assert state["stages"]["rollout/1/install-release"]["was"] == "failed"
    assert_nothing_lost(lab, state, before)


def test_an_artifact_changed_in_the_store_is_refused_by_the_host(lab, tmp_path):
    before = record(lab)["release"]
    good = tarball.build(REPO / "examples/app", "5.3.0", tmp_path)
    digest = tarball.sha256_file(good)
    # the store holds other bytes under the published digest (tampered, or a bad upload)
    other = tarball.build(REPO / "examples/app", "5.3.0-other", tmp_path)
    lab.clients().s3().put_object(Bucket=lab.env.artifact_bucket,
                                  Key="releases/lab/5.3.0.tar.gz", Body=other.read_bytes(),
                                  Metadata={"sha256": digest})
    proc = lab.cli(f"hotfix --version 5.3.0 --artifact {good} --config {quick_config(lab)}",
                   check=False)
    failed_clearly(proc, "differs from the published one")
    state = state_of(lab, proc)
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
    assert_nothing_lost(lab, state_of(lab, proc), before)


def test_a_corrupt_archive_is_refused_before_anything_starts(lab, tmp_path):
    good = tarball.build(REPO / "examples/app", "5.4.1", tmp_path)
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    before = runs(lab)
    proc = lab.cli(f"hotfix --version 5.4.1 --artifact {corrupt}", check=False)
    assert proc.returncode == 2 and "corrupt or truncated" in proc.stderr
    assert runs(lab) == before


def test_a_tarball_with_paths_outside_the_release_is_refused(lab, tmp_path):
    evil = tmp_path / "evil.tar.gz"
    payload = tmp_path / "x"
    payload.write_text("x")
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(payload, arcname="../../etc/cron.d/x")
    before = runs(lab)
    proc = lab.cli(f"hotfix --version 6.3.0 --artifact {evil}", check=False)
    assert proc.returncode == 2 and "outside the release" in proc.stderr
    assert runs(lab) == before
