"""A lab for benchmarks: one region, N hosts, and what every contender needs to reach
them (addresses, host roots, a known_hosts file, the client key, published releases)."""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Host:
    instance_id: str
    address: str
    root: Path


@dataclass
class Measured:
    wall: float
    cpu: float  # the controller's CPU (user + sys of the command and its children)
    ok: bool
    output: str
    connections: int | None = None  # SSH connections the tool opened (ours only)
    stages: dict[str, float] | None = None  # ours: seconds per stage, from the run state
    extra: dict[str, Any] | None = None  # ours: peak memory, API calls (benchmarks.transport)


def measure(argv: list[str], env: dict[str, str] | None = None,
            stdin: bytes | None = None, timeout: float = 600) -> Measured:
    """Run a command; its wall time and the CPU it and its descendants used here."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began = time.perf_counter()
    proc = subprocess.run(argv, env=env, input=stdin, capture_output=True, timeout=timeout,
                          cwd=REPO)
    wall = time.perf_counter() - began
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    return Measured(wall, cpu, proc.returncode == 0, out[-3000:])


class BenchLab:
    """A lab of its own (its own directory and deploy.toml), driven like an operator."""

    def __init__(self, work: Path, hosts: int, **overrides: Any):
        self.work = work
        self.count = hosts
        self.lab_dir = work / "lab"
        self.overrides = overrides
        self.config = self.write_config("deploy.toml")

    def write_config(self, name: str, **more: Any) -> Path:
        """A deploy.toml for this lab: one region, batch 100%, plus the given keys."""
        text = (REPO / "deploylib/lab/environment.toml").read_text()
        # fleet: loose instances unless a benchmark asks for server groups (the rollback
        # benchmarks do), so the figures stay those of the procedures themselves.
        values = {"copy_regions": [], "batch_size": "100%", "fleet": "instances",
                  "state_dir": str(self.work / "runs"),
                  "app_source": str(REPO / "examples/app"), "smoke_tests": "",
                  **self.overrides, **more}
        lines = [ln for ln in text.splitlines()
                 if not any(ln.startswith(f"{k} =") for k in values)]
        at = lines.index("[environments.lab]") + 1
        for k, v in values.items():
            if isinstance(v, dict):  # a TOML inline table
                v_text = "{ " + ", ".join(f"{kk} = {json.dumps(vv)}" for kk, vv in v.items()) + " }"
            else:
                v_text = json.dumps(v)
            lines.insert(at, f"{k} = {v_text}")
        path = self.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "DEPLOY_CONFIG": str(self.config),
                "DEPLOY_LAB_DIR": str(self.lab_dir), **extra}

    def invoke(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "invoke", *args]

    def cli(self, *args: str) -> str:
        proc = subprocess.run(self.invoke(*args), env=self.env(), cwd=REPO,
                              capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"invoke {' '.join(args)}: {proc.stderr[-2000:]}")
        return proc.stdout

    def up(self) -> None:
        self.down()
        self.cli("lab.up", "--hosts", str(self.count))
        self.info = json.loads((self.lab_dir / "lab.json").read_text())

    def down(self) -> None:
        if self.lab_dir.exists():
            subprocess.run(self.invoke("lab.down"), env=self.env(), cwd=REPO,
                           capture_output=True, timeout=120)

    # -- what the contenders need ---------------------------------------------------------

    def _environment(self) -> Any:
        from deploylib import config

        return config.load(self.config).environment("lab")

    def clients(self) -> Any:
        from deploylib import runs

        os.environ["DEPLOY_LAB_DIR"] = str(self.lab_dir)
        return runs.environment_clients(self._environment())

    def hosts(self) -> list[Host]:
        from deploylib import aws, live

        env = self._environment()
        clients = self.clients()
        region = env.primary_region
        ids = live.hosts(clients, env, region)
        found = aws.ec2.describe(clients.ec2(region), region, ids)
        return sorted((Host(i.instance_id, i.address or "", self.lab_dir / "hosts" /
                            i.instance_id / "root") for i in found),
                      key=lambda h: h.instance_id)

    def only(self, hosts: list[Host]) -> None:
        """Leave only these hosts registered (the tool updates what is live)."""
        from deploylib import aws, live

        env = self._environment()
        region = env.primary_region
        elb = self.clients().elbv2(region)
        group = live.target_group(self.clients(), env, region)
        keep = {h.instance_id for h in hosts}
        registered = set(aws.elb.target_states(elb, region, group))
        aws.elb.take_out(elb, region, group, sorted(registered - keep), env.app_port,
                         timeout=60)
        aws.elb.put_in(elb, region, group, sorted(keep - registered), env.app_port, timeout=60)
        aws.elb.wait_healthy(elb, region, group, sorted(keep), 60)

    def known_hosts(self, hosts: list[Host], port: int) -> Path:
        path = self.work / f"known_hosts-{port}"
        lines = []
        for h in hosts:
            key = (self.lab_dir / "hostkeys" / f"{h.instance_id}.pub").read_text().split()
            lines.append(f"[{h.address}]:{port} {key[0]} {key[1]}")
        path.write_text("\n".join(lines) + "\n")
        return path

    @property
    def key(self) -> str:
        return str(self.lab_dir / "id_ed25519")

    def build(self, source: Path, version: str) -> Path:
        from deploylib import tarball

        return tarball.build(source, version, self.work / "artifacts")

    def publish(self, artifact: Path, version: str) -> dict[str, str]:
        """Publish as the tool does (same key and metadata) and presign a URL."""
        from deploylib import aws, tarball
        from deploylib.steps.release import artifact_key

        env = self._environment()
        s3 = self.clients().s3()
        digest = tarball.sha256_file(artifact)
        key = artifact_key(env.name, version)
        stored = aws.s3.published(s3, env.artifact_bucket, key)
        if stored is None:
            aws.s3.upload_artifact(s3, env.artifact_bucket, key, str(artifact), digest)
        return {"sha256": digest, "url": aws.s3.presign(s3, env.artifact_bucket, key, 3600)}

    def install_script(self, version: str, sha256: str, url: str) -> Path:
        from deploylib import render

        env = self._environment()
        text = render.install_script(
            version=version, sha256=sha256, app_root=env.app_root, app_port=env.app_port,
            health_path=env.health_path, health_check=env.health_check, service=env.service,
            service_user=env.service_user, app=env.app.for_host(),
            restart_command=env.restart_command, keep_releases=env.keep_releases, url=url,
            health_timeout=60)
        path = self.work / f"install-{version}.sh"
        path.write_text(text)
        return path

    def clean(self) -> None:
        self.down()
        shutil.rmtree(self.work, ignore_errors=True)
