"""Each procedure's time-to-live under the timing AWS documents, 3 regions x 4 hosts,
`batch_size = "25%"`, with users' requests through every region's balancer all along.

The lab takes AWS's time at the API, scaled down (one real minute = two lab seconds):
instances stay `pending` and `stopping`, images and copies `pending`; the balancers act as
an Application Load Balancer does (a new target is healthy after one passing check at the
health check interval; a deregistered one is shown `draining` for the deregistration
delay though done at once). The tool's own waits meet those delays as they would on AWS.

What is reported, in AWS minutes: the profile's delays on the run's critical path scaled
back up, plus everything else the run took as measured (SSH, installs, API calls, the
lab's own work), which runs at its own speed and is not scaled. Beside each procedure:
the same stages as usually scripted (regions in turn, every drain waiting out the delay,
immutable copying to every region first and deploying region after region), computed
under the same profile.
"""

from __future__ import annotations

import json
import os
import threading
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.labbench import BenchLab, measure

SCALE = 2 / 60  # lab seconds per real second
# AWS's timings (seconds, real), with where each comes from (README: "The lab's timing").
AWS = {
    "launch": 25,             # RunInstances to SSH up (EC2: pending, boot)
    "stop": 30,               # StopInstances: stopping until stopped
    "image": 300,             # CreateImage until available (an 8 GiB root)
    "copy": 600,              # CopyImage to another region (users report 10-20+ min)
    "health_interval": 30,    # ALB HealthCheckIntervalSeconds default
    "healthy_threshold": 5,   # ALB HealthyThresholdCount default: unhealthy -> healthy
    "deregistration": 300,    # ALB deregistration_delay.timeout_seconds default
}
PROFILE = {k: (v if k == "healthy_threshold" else round(v * SCALE, 3)) for k, v in AWS.items()}
REGIONS = ["us-west-2", "eu-west-1"]  # besides the primary, us-east-1
HOSTS = 4
BATCH = "25%"
POLL = round(3 * SCALE, 3)  # the tool's longest pause between looks (3 s), scaled
QUIET = round(2 * SCALE, 3)  # drain_quiet (2 s), scaled: the lab's nodes stop at once

# Procedures measured: the procedure run, and the keys its config sets.
PROCEDURES = {
    "in-place": ("in-place", {}),
    "in-place, graceful reload": ("in-place", {"reload": "graceful"}),
    "rebake-light": ("rebake-light", {}),
    "immutable": ("immutable", {}),
    "immutable, per-region bake": ("immutable", {"bake": "per-region"}),
}

# Rollbacks after an immutable deploy, by how the fleet is kept: a fleet of instances
# launches the previous image again; a server group kept at 0 is scaled up (a launch); one
# kept at its capacity is attached again (one health check).
ROLLBACKS = {
    "rollback, previous image launched": {},
    "rollback, kept server group at 0": {"fleet": "server-groups", "kept_capacity": "zero"},
    "rollback, kept server group at capacity": {"fleet": "server-groups",
                                                "kept_capacity": "live"},
}


def batches_per_region() -> int:
    return -(-HOSTS // max(1, HOSTS * int(BATCH[:-1]) // 100))


def critical_path(procedure: str) -> float:
    """The profile's delays the procedure cannot avoid, in order, in real seconds."""
    one_check = AWS["health_interval"]  # a new target: one passing check (at most one interval)
    if procedure == "in-place":
        # a canary, then waves: each batch back in its group after one passing check
        return (1 + batches_per_region()) * one_check
    if procedure == "in-place, graceful reload":
        return 0.0  # never leaves its target group: nothing of the balancer's to wait for
    if procedure == "rebake-light":
        return AWS["launch"] + one_check
    if procedure == "immutable":
        # builder launch, stop, image, copy (all regions at once), candidates, one check
        return AWS["launch"] + AWS["stop"] + AWS["image"] + AWS["copy"] + AWS["launch"] + \
            one_check
    if procedure == "immutable, per-region bake":
        # every region at once: builder launch, stop, image, candidates, one check
        return AWS["launch"] + AWS["stop"] + AWS["image"] + AWS["launch"] + one_check
    if procedure in ("rollback, previous image launched", "rollback, kept server group at 0"):
        return AWS["launch"] + one_check  # instances booted from the previous image
    if procedure == "rollback, kept server group at capacity":
        return one_check  # its instances run already: attached, one passing check
    raise ValueError(procedure)


def as_usually_scripted(procedure: str) -> float | None:
    """The same stages as usually scripted, under the same profile, in real seconds:
    regions in turn, each batch drained until the API stops listing it (the delay) and put
    back; immutable copying to every region (at once, as Packer's ami_regions does) and
    then deploying region after region."""
    regions = 1 + len(REGIONS)
    if procedure == "in-place":
        return regions * batches_per_region() * (AWS["deregistration"] + AWS["health_interval"])
    if procedure.startswith("immutable"):
        return AWS["launch"] + AWS["stop"] + AWS["image"] + AWS["copy"] + \
            regions * (AWS["launch"] + AWS["health_interval"])
    return None  # rebake-light, a graceful reload: nothing usual to compare with


def aws_seconds(procedure: str, lab_seconds: float) -> float:
    """A lab run in AWS seconds: the critical path at AWS's timing (its one passing check
    counted as a whole interval, the worst case), plus what the run took beyond the
    critical path at the lab's scale (the tool's own work, which is not scaled)."""
    crit = critical_path(procedure)
    return round(crit + max(0.0, lab_seconds - crit * SCALE), 2)


class Users:
    """`clients` per region asking its balancer for `path`, all through a run; every
    answer counted."""

    def __init__(self, lab: BenchLab, path: str = "/health", clients: int = 1):
        self.urls = {r: v["load_balancer"] + path for r, v in lab.info["regions"].items()}
        self.sent = 0
        self.failed = 0
        self._count = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._ask, args=(u,), daemon=True)
                         for u in self.urls.values() for _ in range(clients)]

    def _ask(self, url: str) -> None:
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        while not self._stop.is_set():
            try:
                with opener.open(url, timeout=5) as resp:
                    ok = resp.status == 200
            except OSError:
                ok = False
            with self._count:
                self.sent += 1
                self.failed += not ok
            self._stop.wait(0.02)  # pacing, not a synchronisation

    def __enter__(self) -> Users:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)


def _run(lab: BenchLab, config: Path, mode: str, version: str) -> dict[str, Any]:
    command = lab.invoke("rollback") if mode == "rollback" else \
        lab.invoke("deploy", "--mode", mode, "--version", version)
    with Users(lab) as users:
        m = measure(command, lab.env(DEPLOY_CONFIG=str(config)), timeout=1800)
    if not m.ok:
        raise RuntimeError(m.output)
    from deploylib import report
    from deploylib.state import RunState

    state = max((lab.work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    run = report.run_summary(RunState.load(lab.work / "runs", state.stem))
    assert run["status"] == "done", run
    return {"lab_seconds": run["time_to_live"], "sent": users.sent, "failed": users.failed}


def run(work: Path, runs: int, say: Any) -> dict[str, Any]:
    os.environ["DEPLOY_LAB_PROFILE"] = json.dumps(PROFILE)
    lab = BenchLab(work, hosts=HOSTS, copy_regions=REGIONS, batch_size=BATCH,
                   drain_quiet=QUIET, timeouts={"poll": POLL})
    try:
        lab.up()
        out: dict[str, list[dict[str, Any]]] = {p: [] for p in PROCEDURES}
        for n in range(runs + 1):
            for i, (name, (mode, keys)) in enumerate(PROCEDURES.items()):
                config = lab.write_config(f"{mode}-{'-'.join(keys.values()) or 'default'}.toml",
                                          **keys)
                # a version of its own: each procedure installs something new
                got = _run(lab, config, mode, f"7.{n}.{i}-{mode}")
                got["aws_seconds"] = aws_seconds(name, got["lab_seconds"])
                if n:
                    out[name].append(got)
                say(f"  time to live, {name}: {got['lab_seconds']:.2f} lab s = "
                    f"{got['aws_seconds'] / 60:.2f} AWS min; {got['failed']} of "
                    f"{got['sent']} requests failed" + ("" if n else " (warm-up)"))
        # The rollbacks last: a fleet turned to server groups stays so.
        for k, (name, keys) in enumerate(ROLLBACKS.items()):
            config = lab.write_config(f"rollback-{k}.toml", **keys)
            out[name] = []
            if keys and k == 1:  # the first server group (its previous is no group)
                _run(lab, config, "immutable", f"8.{k}.0-immutable")
            for n in range(1, runs + 1):
                _run(lab, config, "immutable", f"8.{k}.{n}-immutable")
                got = _run(lab, config, "rollback", "")
                got["aws_seconds"] = aws_seconds(name, got["lab_seconds"])
                out[name].append(got)
                say(f"  time to live, {name}: {got['lab_seconds']:.2f} lab s = "
                    f"{got['aws_seconds'] / 60:.2f} AWS min; {got['failed']} of "
                    f"{got['sent']} requests failed")
        every = {**PROCEDURES, **ROLLBACKS}
        return {"aws": AWS, "profile": PROFILE, "scale": "1 real minute = 2 lab seconds",
                "regions": 1 + len(REGIONS), "hosts": HOSTS, "batch_size": BATCH,
                "poll": POLL, "drain_quiet": QUIET, "runs": out,
                "critical_path": {p: critical_path(p) for p in every},
                "usually_scripted": {p: as_usually_scripted(p) for p in every}}
    finally:
        os.environ.pop("DEPLOY_LAB_PROFILE", None)
        lab.down()
