"""The image path under an AWS-like latency profile, scaled down (one real minute = two lab
seconds), applied at the API so the tool's real waits meet it.

Measured per procedure: time-to-live, and the tool's overhead over the critical path (the
profile's delays the procedure cannot avoid). The tool's waits poll at most every 3 s,
which is small against real minutes; the benchmark scales that pause like the cloud's
delays (`timeouts.poll`), so that the overhead measured is the tool's and not an
artefact of the scaling. Immutable is run with one copy region and with two: copies run
at once, so copying to two regions should cost little more than copying to one. Each
region goes live on its own: the primary region's time-to-live (its promotion) is
recorded apart from the last region's (it is the primary's: it has no copy to wait for).
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


POLL = round(3 * SCALE, 3)  # the tool's longest pause between looks (3 s), scaled


def critical_path(mode: str, region: str = "last") -> float:
    """The delays a procedure must wait out, in order, under the profile (in the primary
    region, or until the last region is live)."""
    healthy = PROFILE["health_interval"] * PROFILE["healthy_threshold"]
    if mode.startswith("immutable") and region == "primary":
        # builder launch, image, candidates launch, healthy: no copy on its path
        return PROFILE["launch"] + PROFILE["image"] + PROFILE["launch"] + healthy
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


def _ttl(lab: BenchLab, config: Path, mode: str, version: str) -> tuple[float, float]:
    """Time-to-live of the run, and of the first region to go live (in-place: the run)."""
    m = measure(lab.invoke("deploy", "--mode", mode, "--version", version),
                lab.env(DEPLOY_CONFIG=str(config)), timeout=1200)
    if not m.ok:
        raise RuntimeError(m.output)
    state = max((lab.work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    data = json.loads(state.read_text())
    from deploylib import report
    from deploylib.state import RunState

    loaded = RunState.load(lab.work / "runs", state.stem)
    run = report.run_summary(loaded)
    assert data["status"] == "done"
    promoted = [e.ended_at for k, e in loaded.stages.items()
                if k.region is not None and e.live and e.ended_at is not None]
    first = min(promoted) - run["started_at"] if promoted else run["time_to_live"]
    return run["time_to_live"], first


def run(work: Path, runs: int, say: Any) -> dict[str, Any]:
    os.environ["DEPLOY_LAB_PROFILE"] = json.dumps(PROFILE)
    lab = BenchLab(work, hosts=2, copy_regions=REGIONS)
    try:
        lab.up()
        paced = {"timeouts": {"poll": POLL}}
        three = lab.write_config("three-regions.toml", copy_regions=REGIONS, **paced)
        two = lab.write_config("two-regions.toml", copy_regions=REGIONS[:1], **paced)
        modes = {"immutable": three, "immutable-2-regions": two, "rebake-light": three,
                 "in-place": three}
        out: dict[str, list[float]] = {m: [] for m in modes}
        first: dict[str, list[float]] = {m: [] for m in modes}
        for n in range(runs + 1):
            for mode, config in modes.items():
                procedure = "immutable" if mode.startswith("immutable") else mode
                ttl, primary = _ttl(lab, config, procedure, f"7.{n}.{len(out[mode])}-{mode}")
                if n:
                    out[mode].append(round(ttl, 2))
                    first[mode].append(round(primary, 2))
                    say(f"  image path {mode}: first region live in {primary:.2f}s, all in "
                        f"{ttl:.2f}s (critical path {critical_path(mode):.2f}s)")
        return {"profile": PROFILE, "scale": "1 real minute = 2 lab seconds", "poll": POLL,
                "time_to_live": out, "primary_live": first,
                "critical_path": {m: round(critical_path(m), 2) for m in out},
                "critical_path_primary": {m: round(critical_path(m, "primary"), 2)
                                          for m in out}}
    finally:
        os.environ.pop("DEPLOY_LAB_PROFILE", None)
        lab.down()
