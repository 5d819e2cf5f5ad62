"""SSH and Run Command side by side: one release to N lab hosts by the tool over each
transport, against Fabric, the OpenSSH floor and (at 20 hosts) Ansible, in one run.

    ours-ssh  `invoke hotfix`, transport = "ssh" (batch 100%: drain, install, health-check,
              put back), the run's own SSH connection to every host
    ours-ssm  the same, transport = "ssm": every script one SendCommand, results read as
              Systems Manager gives them (the lab's agents, deploylib.lab.runcommand)
    fabric, floor, ansible   as in the fan-out benchmark (benchmarks/fanout.py)

The lab's hosts run both an sshd and an SSM agent here (DEPLOY_LAB_SSHD=all), so every
contender reaches the same hosts. Besides wall time and controller CPU, the tool's own
runs are measured for their peak memory (GNU time's maximum resident set) and their AWS
API calls (botocore's client-side monitoring, counted by API).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from benchmarks import fanout
from benchmarks.labbench import BenchLab, Host, Measured, measure

CONTENDERS = ("ours-ssh", "ours-ssm", "fabric", "floor", "ansible")
_MAXRSS = re.compile(r"MAXRSS (\d+)")


class Calls:
    """botocore's client-side monitoring messages on a loopback UDP port, by API."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.counted: Counter[str] = Counter()
        self.lock = threading.Lock()
        threading.Thread(target=self._loop, daemon=True).start()

    def env(self) -> dict[str, str]:
        return {"AWS_CSM_ENABLED": "true", "AWS_CSM_HOST": "127.0.0.1",
                "AWS_CSM_PORT": str(self.sock.getsockname()[1]),
                "AWS_CSM_CLIENT_ID": "bench"}

    def _loop(self) -> None:
        while True:
            try:
                msg = json.loads(self.sock.recv(65536))
            except (OSError, ValueError):
                continue
            if msg.get("Type") == "ApiCall":
                with self.lock:
                    self.counted[f"{msg.get('Service')}.{msg.get('Api')}"] += 1

    def take(self) -> dict[str, int]:
        import time

        time.sleep(0.2)  # UDP on loopback: what was sent is in the buffer by now
        with self.lock:
            out = dict(self.counted)
            self.counted.clear()
        return out


def _ours(transport: str, calls: Calls) -> Any:
    def ours(lab: BenchLab, hosts: list[Host], version: str, artifact: Path, release: dict,
             port: int, config: Path) -> Measured:
        calls.take()  # the set-up's own calls (build, publish) are not the contender's
        config = lab.write_config(f"{transport}.toml", transport=transport)
        env = lab.env(DEPLOY_CONFIG=str(config), **calls.env())
        m = measure(["/usr/bin/time", "-f", "MAXRSS %M",
                     *lab.invoke("hotfix", "--version", version, "--artifact", str(artifact))],
                    env)
        found = _MAXRSS.findall(m.output)
        state = max((lab.work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
        data = json.loads(state.read_text())
        m.connections = data["facts"].get("ssh_connections")
        m.stages = {v["stage"]: v.get("seconds") for v in data["stages"].values()
                    if v["stage"] != "rollout" and v.get("group") in (None, "rollout")}
        m.extra = {"max_rss_kb": int(found[-1]) if found else None, "calls": calls.take()}
        return m
    return ours


def run(lab: BenchLab, hosts: list[Host], *, runs: int, source: Path, label: str,
        say: Any, ansible: bool) -> dict[str, list[dict[str, Any]]]:
    """Warm-up plus `runs` rounds; each round every contender installs its own release."""
    calls = Calls()
    runners = {"ours-ssh": _ours("ssh", calls), "ours-ssm": _ours("ssm", calls),
               "fabric": fanout.fabric, "floor": fanout.floor, "ansible": fanout.ansible}
    chosen = {c: runners[c] for c in CONTENDERS if ansible or c != "ansible"}
    return fanout.run(lab, hosts, runs=runs, port=2022, config=lab.config, source=source,
                      label=label, say=say, runners=chosen)
