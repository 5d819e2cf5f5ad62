"""Run every benchmark, each with its contenders side by side, and write the results.

    python -m benchmarks.run [--runs 5] [--only startup,cache,ttl,fanout,transfer]

Writes benchmarks/results.json, benchmarks/RESULTS.md and benchmarks/chart.png (drawn as
SVG and photographed by headless Chromium: no plotting library). Timing is the median of
the runs after a warm-up; ratios are to the floor where there is one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import fanout, report, time_to_live, transport
from benchmarks.delay_proxy import DelayProxy
from benchmarks.labbench import REPO, BenchLab, measure
from deploylib.lab.accounts import LOGIN_USER

WORK = Path(os.environ.get("BENCH_WORK", "/tmp/deploylib-bench"))
OUT = REPO / "benchmarks"


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def median(values: list[float]) -> float:
    return round(statistics.median(values), 3)


def make_source(size_mb: int) -> Path:
    """The sample app plus incompressible ballast: a release of about size_mb."""
    source = WORK / f"app-{size_mb}mb"
    if not source.exists():
        shutil.copytree(REPO / "examples/app", source)
        (source / "ballast.bin").write_bytes(os.urandom(size_mb * 1024 * 1024))
    return source


def bench_fanout(runs: int, results: dict[str, Any]) -> None:
    lab = BenchLab(WORK / "fanout", hosts=20)
    say("fan-out: lab with 20 hosts")
    lab.up()
    try:
        source = make_source(20)
        everyone = lab.hosts()
        out = {}
        for n in (1, 5, 20):
            hosts = everyone[:n]
            lab.only(hosts)
            out[str(n)] = fanout.run(lab, hosts, runs=runs, port=2022, config=lab.config,
                                     source=source, label=f"9.{n}", say=say)
        results["fanout"] = out
        # far: every host behind a proxy adding 50 ms each way
        lab.only(everyone)
        routes = [(h.address, 2023, h.address, 2022) for h in everyone]
        far = lab.write_config("far.toml", ssh_port=2023)
        with DelayProxy(routes, delay=0.05):
            results["far"] = fanout.run(lab, everyone, runs=runs, port=2023, config=far,
                                        source=source, label="9.99", say=say)
    finally:
        lab.down()


def bench_transport(runs: int, results: dict[str, Any]) -> None:
    """SSH and Run Command side by side at 20 and at as many hosts as the machine holds."""
    most = int(os.environ.get("BENCH_TRANSPORT_HOSTS", "200"))
    os.environ["DEPLOY_LAB_SSHD"] = "all"  # every host reachable both ways
    lab = BenchLab(WORK / "transport", hosts=most, transport="ssm")
    say(f"transport: lab with {most} hosts")
    lab.up()
    try:
        source = make_source(20)
        everyone = lab.hosts()
        out = {}
        for n in (20, most):
            hosts = everyone[:n]
            lab.only(hosts)
            out[str(n)] = transport.run(lab, hosts, runs=runs if n <= 20 else max(1, runs // 2),
                                        source=source, label=f"10.{n}", say=say,
                                        ansible=n <= 20)
        results["transport"] = out
    finally:
        lab.down()
        os.environ.pop("DEPLOY_LAB_SSHD", None)


def bench_transfer_alone(runs: int, results: dict[str, Any]) -> None:
    lab = BenchLab(WORK / "transfer", hosts=1)
    say("transfer: lab with 1 host")
    lab.up()
    try:
        results["transfer"] = bench_transfer(lab, lab.hosts()[0], runs)
    finally:
        lab.down()


def bench_transfer(lab: BenchLab, host: Any, runs: int) -> dict[str, Any]:
    """100 MB to one host: this tool's push (streamed over its SSH connection), paramiko's
    pipelined SFTP put over the same connection, and OpenSSH's scp."""
    from deploylib import ssh

    data = WORK / "transfer-100mb.bin"
    if not data.exists():
        data.write_bytes(os.urandom(100 * 1024 * 1024))
    known = lab.known_hosts([host], 2022)
    key = ssh.read_public_key_file(str(lab.lab_dir / "hostkeys" / f"{host.instance_id}.pub"))
    ours, sftp, scp = [], [], []
    for n in range(runs + 1):
        endpoint = ssh.Endpoint(host.instance_id, host.address, 2022, (key,))
        with ssh.Connection(endpoint, ssh.Credentials(LOGIN_USER, lab.key)) as conn:
            client = conn.open()
            began = time.perf_counter()
            conn.put(str(data), "/tmp/bench-push.bin")
            took = time.perf_counter() - began
            began = time.perf_counter()
            with client.open_sftp() as channel:
                channel.put(str(data), "/tmp/bench-sftp.bin")
            took_sftp = time.perf_counter() - began
        m = measure(["scp", "-q", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                     "-o", f"UserKnownHostsFile={known}", "-i", lab.key, "-P", "2022",
                     str(data), f"{LOGIN_USER}@{host.address}:/tmp/bench-scp.bin"])
        if not m.ok:
            raise RuntimeError(m.output)
        if n:
            ours.append(100 / took)
            sftp.append(100 / took_sftp)
            scp.append(100 / m.wall)
            say(f"  transfer: push {100 / took:6.1f} MB/s   sftp {100 / took_sftp:6.1f} MB/s"
                f"   scp {100 / m.wall:6.1f} MB/s")
    for p in ("/tmp/bench-push.bin", "/tmp/bench-sftp.bin", "/tmp/bench-scp.bin"):
        Path(p).unlink(missing_ok=True)
    return {"push_mb_s": [round(x, 1) for x in ours], "sftp_mb_s": [round(x, 1) for x in sftp],
            "scp_mb_s": [round(x, 1) for x in scp], "cipher": ssh.CIPHERS[0]}


def bench_startup(runs: int, results: dict[str, Any]) -> None:
    out: dict[str, list[float]] = {"invoke --list": [], "invoke plan --mode in-place": []}
    for n in range(max(runs, 10) + 1):
        for name in out:
            m = measure([sys.executable, "-m", "invoke", *name.split()[1:]])
            if n:
                out[name].append(round(m.wall, 3))
    results["startup"] = out
    say(f"  startup: {', '.join(f'{k} {median(v)}s' for k, v in out.items())}")


def bench_cache(runs: int, results: dict[str, Any]) -> None:
    """Bake time (the bake phase) when the foundation image is found, and when not."""
    lab = BenchLab(WORK / "cache", hosts=1)
    lab.up()
    try:
        spare = ["jq", "git", "rsync", "unzip", "wget", "vim", "less", "gnupg", "openssl",
                 "nginx", "apache2", "redis-tools"]
        base = ["python3", "curl", "ca-certificates"]
        out: dict[str, list[float]] = {"miss": [], "hit": []}
        for n in range(runs + 1):
            config = lab.write_config(f"cache-{n}.toml", os_packages=[*base, spare[n]])
            for kind in ("miss", "hit"):
                env = lab.env(DEPLOY_CONFIG=str(config))
                version = f"8.{n}.{kind}"
                m = measure(lab.invoke("deploy", "--mode", "immutable", "--version", version),
                            env)
                if not m.ok:
                    raise RuntimeError(m.output)
                state = max((lab.work / "runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
                data = json.loads(state.read_text())
                assert data["facts"]["builder"]["cache_hit"] == (kind == "hit"), kind
                bake = data["stages"]["copy-image"]["ended_at"] - \
                    data["stages"]["publish-release"]["started_at"]
                if n:
                    out[kind].append(round(bake, 3))
                    say(f"  bake cache {kind}: {bake:.2f}s")
        results["cache"] = out
    finally:
        lab.down()


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ssh = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    ansible = subprocess.run(["ansible-playbook", "--version"], capture_output=True,
                             text=True).stdout.splitlines()[:1]
    import fabric
    import paramiko

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "os": platform.platform(), "openssh": ssh, "ansible": " ".join(ansible),
            "fabric": fabric.__version__, "paramiko": paramiko.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def bench_ttl(runs: int, results: dict[str, Any]) -> None:
    results["ttl"] = time_to_live.run(WORK / "ttl", runs, say)
    # what this benchmark measured before, under a kinder lab
    results.pop("image", None)
    results.get("dates", {}).pop("image", None)


# In the order they run: each writes its part of the results.
BENCHMARKS = {"startup": bench_startup, "cache": bench_cache, "ttl": bench_ttl,
              "fanout": bench_fanout, "transfer": bench_transfer_alone,
              "transport": bench_transport}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--only", default=",".join(BENCHMARKS))
    args = parser.parse_args()
    chosen = args.only.split(",")
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"no benchmark named {', '.join(unknown)}; choose from "
                     f"{','.join(BENCHMARKS)}")
    WORK.mkdir(parents=True, exist_ok=True)
    path = OUT / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    results["machine"] = machine()
    results["runs"] = args.runs

    def save(name: str) -> None:  # after each benchmark: a later failure loses nothing
        results.setdefault("dates", {})[name] = time.strftime("%Y-%m-%d %H:%M UTC",
                                                              time.gmtime())
        path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")

    for name, bench in BENCHMARKS.items():
        if name in chosen:
            bench(args.runs, results)
            save(name)
    report.write(results, OUT)
    say(f"wrote {OUT / 'RESULTS.md'} and {OUT / 'chart.png'}")


if __name__ == "__main__":
    main()
