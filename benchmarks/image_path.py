"""The image path under an AWS-like latency profile, scaled down (one real minute = two lab
seconds), applied at the API so the tool's real waits meet it.

Measured per procedure: time-to-live, and the tool's overhead over the critical path (the
profile's delays the procedure cannot avoid). Immutable is run with one region and with
two: copies to the other regions run at once, so copying to two regions should cost
little more than copying to one.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from benchmarks.labbench import BenchLab, measure

SCALE = 2 / 60  # lab seconds per real second
PROFILE = {
    "launch": 25 * SCALE,             # launch to SSH
    "image": 300 * SCALE,             # image creation
    "copy": 600 * SCALE,              # cross-region copy
    "health_interval": 30 * SCALE,    # target group health checks (ALB default 30 s)
    "healthy_threshold": 5,           # ALB default
    "deregistration": 300 * SCALE,    # ALB default 300 s (ends early with nothing in flight)
}
REGIONS = ["us-west-2", "eu-west-1"]


def critical_path(mode: str) -> float:
    """The delays a procedure must wait out, in order, under the profile."""
    healthy = PROFILE["health_interval"] * PROFILE["healthy_threshold"]
    if mode.startswith("immutable"):
        # builder launch, image, copy (all regions at once), candidates launch, healthy
        return PROFILE["launch"] + PROFILE["image"] + PROFILE["copy"] + \
            PROFILE["launch"] + healthy
    if mode == "rebake-light":
        return PROFILE["launch"] + healthy
    if mode == "in-place":
        # one batch per region (2 hosts, batch 100%), each put back only once healthy
        return (1 + len(REGIONS)) * healthy
    return 0.0


def _ttl(lab: BenchLab, config: Path, mode: str, version: str) -> float:
    m = measure(lab.invoke("deploy", "--mode", mode, "--version", version),
                lab.env(DEPLOY_CONFIG=str(config)), timeout=1200)
    if not m.ok:
        raise RuntimeError(m.output)
    state = max((lab.work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    data = json.loads(state.read_text())
    from deploylib import report
    from deploylib.state import RunState

    run = report.run_summary(RunState.load(lab.work / "runs", state.stem))
    assert data["status"] == "done"
    return run["time_to_live"]


def run(work: Path, runs: int, say: Any) -> dict[str, Any]:
    os.environ["DEPLOY_LAB_PROFILE"] = json.dumps(PROFILE)
    lab = BenchLab(work, hosts=2, copy_regions=REGIONS)
    try:
        lab.up()
        two = lab.write_config("two-regions.toml", copy_regions=REGIONS[:1])
        out: dict[str, list[float]] = {"immutable": [], "immutable-2-regions": [],
                                       "rebake-light": [], "in-place": []}
        for n in range(runs + 1):
            for mode, config in (("immutable", lab.config), ("immutable-2-regions", two),
                                 ("rebake-light", lab.config), ("in-place", lab.config)):
                procedure = "immutable" if mode.startswith("immutable") else mode
                ttl = _ttl(lab, config, procedure, f"7.{n}.{len(out[mode])}-{mode}")
                if n:
                    out[mode].append(round(ttl, 2))
                    say(f"  image path {mode}: live in {ttl:.2f}s "
                        f"(critical path {critical_path(mode):.2f}s)")
        return {"profile": PROFILE, "scale": "1 real minute = 2 lab seconds",
                "time_to_live": out,
                "critical_path": {m: round(critical_path(m), 2) for m in out}}
    finally:
        os.environ.pop("DEPLOY_LAB_PROFILE", None)
        lab.down()
