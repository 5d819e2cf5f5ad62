"""Rounds: the three procedures again and again on server groups of several hosts, to
show that no boot waits on its launch lifecycle hook.

    python -m benchmarks.rounds [--rounds 10] [--hosts 4]

A lab with `--hosts` hosts per region in each of its 3 regions, its fleet server groups;
then, `--rounds` times, in-place, rebake-light and immutable in a row, each a release of
its own. Every new group's instances boot (their user data installs the release, then
completes the launch lifecycle hook). A boot that could not complete its hook would hold
its region's launch-candidates for the hook's whole timeout (`timeouts.boot`, 900 s) —
so the longest launch-candidates of every run is the figure. Writes
benchmarks/ROUNDS.md. Nothing here is asserted: it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.labbench import REPO

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/deploylib-bench")) / "rounds"
HOOK_TIMEOUT = 900  # the lab environment's timeouts.boot: the hook's heartbeat timeout
MODES = ("in-place", "rebake-light", "immutable")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def invoke(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=3600)


def run_id(stderr: str) -> str | None:
    found = re.findall(r"^run (\d{8}T\d{6}-[0-9a-f]{6}):", stderr, re.M)
    return found[-1] if found else None


def launch_seconds(state: dict) -> list[float]:
    """Every region's launch-candidates, in seconds (the boots of its new group)."""
    out = []
    for key, entry in state.get("stages", {}).items():
        if key.endswith("launch-candidates") and entry.get("seconds") is not None:
            out.append(float(entry["seconds"]))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--hosts", type=int, default=4)
    args = parser.parse_args()
    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    os.chmod(WORK, 0o755)
    runs = WORK / "runs"
    text = (REPO / "deploylib/lab/environment.toml").read_text().replace(
        'state_dir = ".runs"', f'state_dir = "{runs}"').replace(
        'app_source = "examples/app"', f'app_source = "{REPO / "examples/app"}"').replace(
        'smoke_tests = "examples/smoke"', f'smoke_tests = "{REPO / "examples/smoke"}"')
    # Many rebake-lights one over another: the layer limit is not what is measured here.
    text = text.replace("[environments.lab]\n", "[environments.lab]\nmax_layers = 50\n", 1)
    config = WORK / "deploy.toml"
    config.write_text(text)
    env = {**os.environ, "DEPLOY_CONFIG": str(config), "DEPLOY_LAB_DIR": str(WORK / "lab")}
    say(f"lab: {args.hosts} hosts per region, server groups")
    up = invoke(["lab.up", "--hosts", str(args.hosts)], env)
    if up.returncode != 0:
        say(up.stderr[-3000:])
        return 1
    rows = []
    try:
        for n in range(1, args.rounds + 1):
            for i, mode in enumerate(MODES):
                version = f"2.{n}.{i}"
                began = time.monotonic()
                proc = invoke(["deploy", "--mode", mode, "--version", version], env)
                seconds = time.monotonic() - began
                rid = run_id(proc.stderr)
                state = json.loads((runs / f"{rid}.json").read_text()) if rid else {}
                launches = launch_seconds(state)
                rows.append({"round": n, "mode": mode, "version": version,
                             "ok": proc.returncode == 0, "seconds": round(seconds, 2),
                             "longest_launch": round(max(launches), 2) if launches else None,
                             "launches": len(launches)})
                say(f"round {n} {mode:<13} {'ok' if proc.returncode == 0 else 'FAILED'} "
                    f"{seconds:6.1f}s, longest launch-candidates "
                    f"{rows[-1]['longest_launch']}")
                if proc.returncode != 0:
                    say(proc.stderr[-2000:])
    finally:
        invoke(["lab.down"], env)
    write(rows, args)
    return 0 if all(r["ok"] for r in rows) else 1


def write(rows: list[dict], args: argparse.Namespace) -> None:
    launches = [r["longest_launch"] for r in rows if r["longest_launch"] is not None]
    failed = [r for r in rows if not r["ok"]]
    longest = max(launches) if launches else 0.0
    lines = [
        "# Rounds: no boot waits on its lifecycle hook",
        "",
        f"`python -m benchmarks.rounds --rounds {args.rounds} --hosts {args.hosts}` "
        f"(this machine: {os.cpu_count()} cores, {platform.python_version()}; the lab with "
        "no latency profile). A lab of 3 regions, each fleet a server group of "
        f"{args.hosts} hosts; then {args.rounds} rounds of in-place, rebake-light and "
        "immutable in a row. Every launch-candidates stage waits for a new group's "
        "instances to boot (user data: the release installed, then the launch lifecycle "
        f"hook completed); one that could not complete its hook would wait the hook's "
        f"whole timeout ({HOOK_TIMEOUT} s).",
        "",
        f"**Runs: {len(rows)}, failed: {len(failed)}. Longest launch-candidates of any "
        f"run: {longest:.2f} s** (of {len(launches)} runs that launched; the hook's "
        f"timeout {HOOK_TIMEOUT} s).",
        "",
        "| round | in-place | rebake-light (longest launch) | immutable (longest launch) |",
        "|---|---|---|---|",
    ]
    by_round: dict[int, dict[str, dict]] = {}
    for r in rows:
        by_round.setdefault(r["round"], {})[r["mode"]] = r

    def cell(r: dict | None, launch: bool) -> str:
        if r is None:
            return "-"
        mark = "" if r["ok"] else " FAILED"
        extra = f" ({r['longest_launch']:.2f} s)" if launch and r["longest_launch"] else ""
        return f"{r['seconds']:.1f} s{extra}{mark}"

    for n, modes in sorted(by_round.items()):
        lines.append(f"| {n} | {cell(modes.get('in-place'), False)} | "
                     f"{cell(modes.get('rebake-light'), True)} | "
                     f"{cell(modes.get('immutable'), True)} |")
    (REPO / "benchmarks/ROUNDS.md").write_text("\n".join(lines) + "\n")
    (REPO / "benchmarks/rounds.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
