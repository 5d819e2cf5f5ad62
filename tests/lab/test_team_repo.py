"""The adoption walkthrough, as a team runs it: deploylib's wheel in a virtualenv outside
this checkout, the example team's repository (copied elsewhere) with its own tasks.py,
deploy.toml and a service that is not Python (a C server it builds with make), on the
lab's Debian root filesystem — in place (restart, then graceful), rebake-light,
immutable, and an instance a scale-out adds booting into the live release."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import pytest

from deploylib import waits
from deploylib.lab import rootfs
from tests.conftest import REPO, open_to_services

pytestmark = [pytest.mark.lab, pytest.mark.own_lab]


@pytest.fixture(scope="module")
def greeter(tool_venv, tmp_path_factory):
    """The team's repository, outside this checkout, with the tool's lab extra installed
    as docs/lab.md says (the lab runs the AWS API with moto), from its hashed lock."""
    extra = subprocess.run(
        # (not compiled ahead: the few modules a lab imports compile as they are imported)
        [str(tool_venv.bin / "python"), "-m", "pip", "install", "-q", "--require-hashes",
         "--no-build-isolation", "--no-compile", "-r",
         str(REPO / "resources/deploylib/requirements-lab.lock")],
        capture_output=True, text=True, timeout=900)
    assert extra.returncode == 0, extra.stderr[-2000:]
    repo = open_to_services(tmp_path_factory.mktemp("team")) / "greeter"
    shutil.copytree(REPO / "examples/team-repo", repo,
                    ignore=shutil.ignore_patterns("server", "dist", ".runs", ".lab"))
    # The team's own file, its lab in one region (regions are tested in tests/lab); and
    # graceful in-place, as a variant of it.
    text = (repo / "deploy.toml").read_text().replace(
        '[environments.lab]\n', '[environments.lab]\ncopy_regions = []\n', 1)
    (repo / "deploy.toml").write_text(text)
    (repo / "graceful.toml").write_text(text.replace(
        '[environments.lab]\n', '[environments.lab]\nreload = "graceful"\n', 1))
    yield repo
    subprocess.run(["invoke", "lab.down"], cwd=repo, env=tool_venv.env(), timeout=120,
                   capture_output=True)


def invoke(tool_venv, repo: Path, args: str, timeout: float = 900) -> str:
    proc = subprocess.run(["invoke", *args.split()], cwd=repo, env=tool_venv.env(),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"invoke {args}:\n{proc.stderr[-3000:]}"
    return proc.stdout


def balancers(repo: Path) -> dict[str, str]:
    info = json.loads((repo / ".lab/lab.json").read_text())
    return {region: r["load_balancer"] for region, r in info["regions"].items()}


def answers(url: str, requests: int = 12) -> list[dict]:
    """What the balancer's hosts say at /health (no cookie: spread over its targets)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    out = []
    for _ in range(requests):
        with opener.open(url + "/health", timeout=5) as resp:
            out.append(json.loads(resp.read()))
    return out


def assert_serves(repo: Path, version: str, hosts: int = 2) -> None:
    for region, url in balancers(repo).items():
        seen = answers(url)
        assert {a["version"] for a in seen} == {version}, (region, seen)
        assert len({a["host"] for a in seen}) == hosts, (region, seen)


def test_a_team_deploys_its_own_service_with_the_installed_wheel(tool_venv, greeter):
    repo = greeter
    invoke(tool_venv, repo, "lab.up --hosts 2")
    assert_serves(repo, "1.0.0")
    # the hosts run the team's compiled server, from the release's own word
    status = json.loads(invoke(tool_venv, repo, "status --json"))
    assert status
    invoke(tool_venv, repo, "hotfix --version 1.0.1")
    assert_serves(repo, "1.0.1")
    invoke(tool_venv, repo, f"hotfix --version 1.0.2 --config {repo / 'graceful.toml'}")
    assert_serves(repo, "1.0.2")
    invoke(tool_venv, repo, "deploy --mode rebake-light --version 1.0.3")
    assert_serves(repo, "1.0.3")
    invoke(tool_venv, repo, "deploy --mode immutable --version 1.1.0")
    assert_serves(repo, "1.1.0")
    # a scale-out: the new instance boots into the live release before it serves
    region = next(iter(balancers(repo)))
    invoke(tool_venv, repo, f"lab.scale --region {region} --desired 3")

    def three() -> bool:
        seen = answers(balancers(repo)[region], requests=15)
        assert {a["version"] for a in seen} == {"1.1.0"}, seen
        return len({a["host"] for a in seen}) == 3

    waits.until(three, timeout=300, what="a third host serving 1.1.0", resource=region,
                fix="read the new instance's console output")
    # what runs on a host is the team's binary, not an interpreter
    hosts = list((repo / ".lab/hosts").iterdir())
    servers = [p for h in hosts for p in h.glob("root/srv/app/releases/*/bin/server")]
    assert servers, "no host unpacked the team's server"
    pids = [(rootfs.pid_dir(h / "root") / "greeter.pid").read_text().strip() for h in hosts
            if (rootfs.pid_dir(h / "root") / "greeter.pid").exists()]
    assert len(pids) >= 3  # the region's 2, and the third
    assert all(Path(f"/proc/{pid}/exe").resolve().name == "server" for pid in pids)
