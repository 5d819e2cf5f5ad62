"""In place over Systems Manager Run Command (transport = "ssm"): a lab whose hosts run
no sshd at all (deploylib.lab.runcommand supplies the agents), three regions, traffic
on."""

from __future__ import annotations

import socket

import pytest

from deploylib import aws, waits
from tests.lab.checks import (
    assert_nothing_lost,
    assert_serving,
    broken_hotfix,
    ended,
    hosts_in_rollout_order,
    live_hosts,
    quick_config,
    record,
    start_deploy,
    state_of,
    wait_for_stage,
)
from tests.lab.traffic import Stream

pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(regions=3, transport="ssm")]


def _refuses_ssh(lab, address: str) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((address, lab.env.ssh_port)) != 0


def _fleet(lab) -> list[str]:
    return [i.instance_id for region in lab.env.all_regions
            for i in live_hosts(lab)[region]][:lab.env.fleet_size]


def test_output_past_the_apis_24000_characters_is_read_whole_from_s3(lab):
    clients = lab.clients()
    region = lab.env.primary_region
    host = _fleet(lab)[0]
    said = aws.runcommand.run(
        clients.ssm(region), clients.s3(), region, [host],
        "head -c 30000 /dev/zero | tr '\\0' x; echo; echo done >&2\n",
        bucket=lab.env.artifact_bucket, prefix="runcommand/lab/tests", max_errors=0,
        timeout=30, delivery_timeout=30, comment="tests", poll=0.1)
    assert said[host] == "x" * 30000 + "\n" + "\ndone\n"


def test_the_lab_hands_a_command_out_by_its_concurrency_and_stops_past_its_errors(lab):
    ssm = lab.clients().ssm(lab.env.primary_region)
    hosts = _fleet(lab)
    command = ssm.send_command(
        InstanceIds=hosts, DocumentName="AWS-RunShellScript", MaxConcurrency="1",
        MaxErrors="0", TimeoutSeconds=30,
        Parameters={"commands": ["exit 3"]})["Command"]["CommandId"]

    def ended() -> dict | None:
        found = {i["InstanceId"]: i["Status"] for i in ssm.list_command_invocations(
            CommandId=command)["CommandInvocations"]}
        return found if all(s in aws.runcommand.FINAL for s in found.values()) else None

    statuses = waits.until(ended, timeout=60, what="the command to end", resource=command,
                           fix="-", first=0.1, longest=0.5)
    # one at a time: the first failed, and with no error allowed the rest never ran
    assert statuses == {hosts[0]: "Failed", **{h: "Cancelled" for h in hosts[1:]}}
    got = ssm.get_command_invocation(CommandId=command, InstanceId=hosts[0])
    assert got["ResponseCode"] == 3


def test_a_hotfix_over_run_command_reaches_hosts_with_no_sshd_and_fails_no_request(lab):
    before = record(lab)["release"]
    fleet = [i for hosts in live_hosts(lab).values() for i in hosts]
    assert len(fleet) == 3 * lab.env.fleet_size
    assert all(_refuses_ssh(lab, i.address) for i in fleet)  # port 22 closed everywhere
    with Stream(lab) as users:
        proc = lab.cli("hotfix --version 6.0.0")
    users.assert_one_change("in-place", before, "6.0.0")
    state = state_of(lab, proc)
    assert state["facts"]["ssh_connections"] == 0
    assert_serving(lab, "6.0.0")
    assert record(lab)["release"] == "6.0.0"


def test_a_broken_release_is_refused_and_switched_back_through_run_command(
        lab, tmp_path, refuse):
    before = record(lab)["release"]
    order = hosts_in_rollout_order(lab)
    victim = order[3]  # the second region's second host: three hosts updated before it
    state = broken_hotfix(lab, tmp_path, refuse, victim, "6.1.0",
                          quick_config(lab, f"{tmp_path.name}.toml"))
    assert sorted(state["facts"]["rolled_back"]) == sorted(order[:3])
    assert state["facts"]["ssh_connections"] == 0
    assert_nothing_lost(lab, state, before)


def test_a_host_whose_agent_is_down_is_named_before_anything_is_touched(lab, tmp_path):
    before = record(lab)["release"]
    victim = hosts_in_rollout_order(lab)[-1]
    stopped = lab.cli.lab_dir / "hosts" / victim / "agent.stopped"
    ready = lab.cli("preflight")
    assert f"Run Command in {lab.env.primary_region}" in ready.stdout
    stopped.touch()
    try:
        checked = lab.cli("preflight", check=False)
        proc = lab.cli(f"hotfix --version 6.3.0 --config "
                       f"{quick_config(lab, f'{tmp_path.name}.toml')}", check=False)
    finally:
        stopped.unlink()
    for refused in (checked, proc):
        assert refused.returncode != 0
        assert f"{victim} ConnectionLost" in refused.stdout + refused.stderr
    assert record(lab)["release"] == before
    assert_serving(lab, before)


def test_an_agent_stopped_mid_wave_fails_its_host_within_the_failure_budget(lab, tmp_path):
    order = hosts_in_rollout_order(lab)
    victim = order[2]
    stopped = lab.cli.lab_dir / "hosts" / victim / "agent.stopped"
    config = quick_config(lab, f"{tmp_path.name}.toml", max_failed_hosts=1,
                          timeouts={"delivery": 30})
    proc = start_deploy(lab, "--version", "6.2.0", "--config", str(config), command="hotfix")
    try:
        wait_for_stage(lab, proc, "rollout/1/install-release")
        stopped.touch()  # after select-hosts found every agent online
        done = ended(proc)
    finally:
        stopped.unlink(missing_ok=True)
    assert done.returncode == 0, done.stderr[-3000:]
    state = state_of(lab, done)
    assert list(state["facts"]["failed_hosts"]) == [victim]
    assert "DeliveryTimedOut" in state["facts"]["failed_hosts"][victim]
    assert victim in done.stdout + done.stderr
    assert record(lab)["release"] == "6.2.0"
    serving = {i.instance_id for hosts in live_hosts(lab).values() for i in hosts}
    assert serving == set(order) - {victim}
