"""Verification windows on the lab, two questions (not part of the suite):

    python -m benchmarks.windows [--good-runs 5] [--bad-runs 1] [--out FILE]

1. **No false rollback.** A good release rolled in place over 4 hosts in batches of one
   (a canary, then 3 waves: 4 windows a run), users' requests going on, non-sticky, on
   the lab's own timing. Every window must pass.
2. **Time to detect and put back** a release failing a fifth of its requests, per
   procedure, under AWS's timing: the time-to-live benchmark's profile (ALB's health
   checks and deregistration delay, EC2's launch and image times) plus ALB's metrics —
   a 60 s period, arriving a minute late — scaled as there (1 real minute = 2 lab
   seconds). Measured from the run's state: from the bad release reaching users (the
   canary back in its target group; every region promoted) to what served before serving
   again (the canary switched back and in its target group; `demote` done), and of that
   how long the window took to fail. In AWS seconds as the time-to-live benchmark counts
   them: the window is all AWS's waiting (periods, the metrics' delay), so it is scaled;
   putting back meets one health check (scaled, counted as a whole interval); the rest
   is the tool's own work, not scaled.

Writes a JSON summary (default benchmarks/windows.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.labbench import REPO, BenchLab, measure
from benchmarks.time_to_live import AWS, PROFILE, SCALE, Users

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/deploylib-bench")) / "windows"
# ALB's metrics: every 60 s, up to a minute late (scaled as the rest of the profile).
METRICS = {"metric_period": round(60 * SCALE, 3), "metric_delay": round(60 * SCALE, 3)}
# Five minutes' window, as a team would give a canary or a live release, scaled.
WINDOW = round(300 * SCALE, 3)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _state(lab: BenchLab) -> dict[str, Any]:
    newest = max((lab.work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text())


def _ended(entry: dict[str, Any]) -> float:
    return float(entry["started_at"]) + float(entry["seconds"])


def false_rollbacks(runs: int) -> dict[str, Any]:
    """Good releases in place, 4 windows a run, on the lab's own timing."""
    work = WORK / "good"
    shutil.rmtree(work, ignore_errors=True)
    lab = BenchLab(work, hosts=4, batch_size=1, rollout="waves",
                   verify={"canary_for": 5, "wave_for": 3, "period": 1, "delay": 1,
                           "min_requests": 20})
    windows: list[dict[str, Any]] = []
    try:
        lab.up()
        with Users(lab, path="/", clients=2) as users:
            for n in range(runs):
                m = measure(lab.invoke("deploy", "--mode", "in-place", "--version",
                                       f"9.{n}.0-good"), lab.env(), timeout=900)
                state = _state(lab)
                windows += state["facts"]["windows"]
                say(f"  run {n + 1}: " + ", ".join(
                    f"{w['stage']} {'passed' if w['passed'] else 'FAILED'}"
                    for w in state["facts"]["windows"]) + ("" if m.ok else " (run failed)"))
                if not m.ok and not state["facts"]["windows"]:
                    raise RuntimeError(m.output)
        return {"runs": runs, "windows": len(windows),
                "passed": sum(1 for w in windows if w["passed"]),
                "requests": users.sent, "failed_requests": users.failed,
                "verdicts": [w["why"] for w in windows]}
    finally:
        lab.down()


PROCEDURES = {
    "in-place (canary)": ("in-place", {}),
    "rebake-light": ("rebake-light", {}),
    "immutable": ("immutable", {}),
    "rebake-light, server groups": ("rebake-light", {"fleet": "server-groups"}),
}


def _bad_app() -> Path:
    app = WORK / "bad-app"
    if not app.exists():
        shutil.copytree(REPO / "examples/app", app)
        (app / "misbehave.json").write_text(json.dumps({"fail": 0.2}))
    return app


def _times(state: dict[str, Any]) -> dict[str, float]:
    """From a run's state, in lab seconds: the bad release live to its window opening,
    the window until it failed, from then to the previous release serving; and the whole
    in AWS seconds (the module's docstring)."""
    stages = state["stages"]
    window = state["facts"]["windows"][-1]
    if state["mode"] == "in-place":
        live = _ended(stages["rollout/1/put-back"])
        back = _ended(stages["rollback/1/put-back"])
    else:
        live = max(_ended(e) for k, e in stages.items() if k.endswith("/promote"))
        back = state["facts"]["cleaned_at"]["demote"]
    times = {"to_window": window["began"] - live, "window": window["ended"] - window["began"],
             "failed_to_back": back - window["ended"]}
    check = AWS["health_interval"]
    times["aws_live_to_back"] = round(
        times["to_window"] + times["window"] / SCALE + check
        + max(0.0, times["failed_to_back"] - check * SCALE), 1)
    times["lab_live_to_back"] = round(back - live, 2)
    return times


def detect_and_put_back(runs: int) -> dict[str, Any]:
    os.environ["DEPLOY_LAB_PROFILE"] = json.dumps({**PROFILE, **METRICS})
    work = WORK / "bad"
    shutil.rmtree(work, ignore_errors=True)
    verify = {"canary_for": WINDOW, "wave_for": WINDOW, "live_for": WINDOW,
              "period": METRICS["metric_period"], "delay": METRICS["metric_delay"],
              "min_requests": 20}
    lab = BenchLab(work, hosts=4, batch_size=1, rollout="waves", verify=verify,
                   timeouts={"poll": round(3 * SCALE, 3)}, drain_quiet=round(2 * SCALE, 3))
    out: dict[str, Any] = {}
    try:
        lab.up()
        for name, (mode, keys) in PROCEDURES.items():
            config = lab.write_config(f"{mode}-{len(keys)}.toml", app_source=str(_bad_app()),
                                      **keys)
            if keys.get("fleet") == "server-groups":  # the first group: a good immutable
                good = lab.write_config("groups-good.toml", **keys)
                measure(lab.invoke("deploy", "--mode", "immutable", "--version", "6.0.0"),
                        lab.env(DEPLOY_CONFIG=str(good)), timeout=1800)
            got = []
            for n in range(runs):
                with Users(lab, path="/", clients=2) as users:
                    m = measure(lab.invoke("deploy", "--mode", mode, "--version",
                                           f"6.{len(out) + 1}.{n}-bad"),
                                lab.env(DEPLOY_CONFIG=str(config)), timeout=1800)
                state = _state(lab)
                if state["status"] != "failed" or not state["facts"]["windows"]:
                    raise RuntimeError(f"{name}: the bad release was not caught\n{m.output}")
                times = _times(state)
                times["requests"], times["failed_requests"] = users.sent, users.failed
                got.append(times)
                say(f"  {name}: live to back {times['lab_live_to_back']:.1f} lab s = "
                    f"{times['aws_live_to_back'] / 60:.1f} AWS min (window "
                    f"{times['window'] / SCALE / 60:.1f} min); {users.failed} of "
                    f"{users.sent} requests failed")
            out[name] = {
                "aws_live_to_back": statistics.median(t["aws_live_to_back"] for t in got),
                "aws_window": round(statistics.median(t["window"] for t in got) / SCALE, 1),
                "lab_failed_to_back": statistics.median(t["failed_to_back"] for t in got),
                "runs": got}
        return {"aws": {**AWS, "metric_period": 60, "metric_delay": 60,
                        "window": round(WINDOW / SCALE)},
                "scale": "1 real minute = 2 lab seconds", "procedures": out}
    finally:
        os.environ.pop("DEPLOY_LAB_PROFILE", None)
        lab.down()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--good-runs", type=int, default=5)
    parser.add_argument("--bad-runs", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "benchmarks/windows.json"))
    args = parser.parse_args()
    result: dict[str, Any] = {}
    if args.good_runs:
        say(f"no false rollback: {args.good_runs} in-place runs of a good release")
        result["good"] = false_rollbacks(args.good_runs)
        g = result["good"]
        say(f"  {g['passed']} of {g['windows']} windows passed")
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")  # kept if part 2 fails
    if args.bad_runs:
        say("detect and put back, under AWS's timing (AWS seconds)")
        result["bad"] = detect_and_put_back(args.bad_runs)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    results = REPO / "benchmarks/results.json"
    if Path(args.out) == REPO / "benchmarks/windows.json" and results.exists():
        from benchmarks import report  # RESULTS.md's section 6, from what was written

        report.write(json.loads(results.read_text()))
    for name, t in (result.get("bad") or {}).get("procedures", {}).items():
        print(f"{name:30} bad release live to previous serving {t['aws_live_to_back']:6.1f} "
              f"AWS s (its window {t['aws_window']:.1f} s; then {t['lab_failed_to_back']:.2f} "
              "lab s to put back)")
    if "good" in result:
        print(f"good release: {result['good']['passed']} of {result['good']['windows']} "
              "windows passed")


if __name__ == "__main__":
    main()
