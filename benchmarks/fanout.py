"""In-place fan-out: one release to N lab hosts, the full install, four contenders.

    ours     `invoke hotfix` (batch 100%: drain, install, health-check, put back)
    ansible  ansible-playbook, forks = N, pipelining on, an idiomatic playbook
    fabric   Fabric 3, one uploaded install script per host, a thread per host
    floor    the plain OpenSSH client, `xargs -P N`, the same script per host

Every contender installs a release of its own each round (so none is a no-op), in turn,
in the same lab; the first round is a warm-up and is not counted.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from benchmarks.labbench import REPO, BenchLab, Host, Measured, measure
from deploylib.lab.accounts import LOGIN_USER


def _ssh_options(lab: BenchLab, known: Path, port: int) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={known}", "-o", "LogLevel=ERROR",
            "-i", lab.key, "-p", str(port)]


def ours(lab: BenchLab, hosts: list[Host], version: str, artifact: Path, release: dict,
         port: int, config: Path) -> Measured:
    env = lab.env(DEPLOY_CONFIG=str(config))
    m = measure(lab.invoke("hotfix", "--version", version, "--artifact", str(artifact)), env)
    state = max((lab.work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    data = json.loads(state.read_text())
    m.connections = data["facts"].get("ssh_connections")
    # where the time went: the per-batch stages of the rollout and the top-level ones
    m.stages = {v["stage"]: v.get("seconds") for v in data["stages"].values()
                if v["stage"] != "rollout" and v.get("group") in (None, "rollout")}
    return m


def floor(lab: BenchLab, hosts: list[Host], version: str, artifact: Path, release: dict,
          port: int, config: Path) -> Measured:
    script = lab.install_script(version, release["sha256"], release["url"])
    known = lab.known_hosts(hosts, port)
    ssh = " ".join(shlex.quote(a) for a in ["ssh", *_ssh_options(lab, known, port)])
    per_host = shlex.quote(f"{ssh} {LOGIN_USER}@HOST sudo -n bash -s < {script}")
    command = (f"printf '%s\\n' {' '.join(h.address for h in hosts)} | "
               f"xargs -P {len(hosts)} -IHOST sh -c {per_host}")
    return measure(["bash", "-c", command])


def fabric(lab: BenchLab, hosts: list[Host], version: str, artifact: Path, release: dict,
           port: int, config: Path) -> Measured:
    script = lab.install_script(version, release["sha256"], release["url"])
    job = lab.work / "fabric.json"
    job.write_text(json.dumps({"hosts": [[h.address, port] for h in hosts],
                               "user": LOGIN_USER,
                               "key": lab.key, "script": str(script),
                               "known_hosts": str(lab.known_hosts(hosts, port))}))
    import sys

    try:
        return measure([sys.executable, str(REPO / "benchmarks/fabric_install.py"), str(job)])
    finally:  # its scripts, outside the measured time
        for left in Path("/tmp").glob("fabric-install-*.sh"):
            left.unlink(missing_ok=True)


def ansible(lab: BenchLab, hosts: list[Host], version: str, artifact: Path, release: dict,
            port: int, config: Path) -> Measured:
    known = lab.known_hosts(hosts, port)
    inventory = lab.work / "inventory.ini"
    inventory.write_text("[fleet]\n" + "".join(
        f"{h.instance_id} ansible_host={h.address} ansible_port={port} root={h.root} "
        f"address={h.address}\n" for h in hosts))
    cfg = lab.work / "ansible.cfg"
    cfg.write_text("\n".join([
        "[defaults]", f"forks = {len(hosts)}", "host_key_checking = True",
        "interpreter_python = /usr/bin/python3", f"remote_user = {LOGIN_USER}",
        f"private_key_file = {lab.key}", "retry_files_enabled = False", "",
        "[privilege_escalation]", "become = True",
        "[ssh_connection]", "pipelining = True",
        f"ssh_args = -o ControlMaster=auto -o ControlPersist=60s "
        f"-o UserKnownHostsFile={known} -o StrictHostKeyChecking=yes", ""]))
    env = dict(os.environ, ANSIBLE_CONFIG=str(cfg),
               ANSIBLE_LOCAL_TEMP=str(lab.work / "ansible-tmp"))
    extra = json.dumps({"version": version, "sha256": release["sha256"], "url": release["url"]})
    return measure(["ansible-playbook", "-i", str(inventory), "-e", extra,
                    str(REPO / "benchmarks/ansible/install.yml")], env)


RUNNERS = {"ours": ours, "ansible": ansible, "fabric": fabric, "floor": floor}


def run(lab: BenchLab, hosts: list[Host], *, runs: int, port: int, config: Path,
        source: Path, label: str, say: Any,
        runners: dict[str, Any] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Warm-up plus `runs` rounds; each round every contender (RUNNERS, or those given,
    in their order) installs its own release."""
    runners = runners or RUNNERS
    results: dict[str, list[dict[str, Any]]] = {c: [] for c in runners}
    for round_ in range(runs + 1):
        for n, (contender, runner) in enumerate(runners.items()):
            version = f"{label}.{round_}.{n}"
            artifact = lab.build(source, version)
            release = lab.publish(artifact, version)
            m = runner(lab, hosts, version, artifact, release, port, config)
            if not m.ok:
                raise RuntimeError(f"{contender} failed installing {version}:\n{m.output}")
            if round_ == 0:
                continue  # warm-up: caches, ControlPersist masters, page cache
            results[contender].append({"wall": round(m.wall, 3), "cpu": round(m.cpu, 3),
                                       "connections": m.connections, "stages": m.stages,
                                       **(m.extra or {})})
            say(f"  {label} round {round_}: {contender:<8} {m.wall:6.2f}s wall "
                f"{m.cpu:6.2f}s cpu")
    return results
