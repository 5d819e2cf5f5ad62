"""What the lab tests check, as an operator would: what every host and balancer
serves, what the record says, and "nothing is lost" — a good release serving, every
`current` a whole release, nothing of a run left in the cloud, the lock free."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path

from deploylib import aws, health, live, lock, tarball, waits
from tests.conftest import REPO


def instances(lab) -> list[str]:
    """Every instance not terminated, in every region, whoever made it."""
    clients = lab.clients()
    ids = []
    for region in lab.env.all_regions:
        ids += [i.instance_id for i in aws.ec2.find_tagged(clients.ec2(region), region, {})]
    return sorted(ids)


def runs(lab) -> list[Path]:
    """The run states in the lab's state directory."""
    return sorted(Path(lab.env.state_dir).glob("*.json"))


def live_hosts(lab) -> dict[str, list[aws.ec2.Instance]]:
    """Each region's instances that its balancer routes to."""
    clients = lab.clients()
    return {region: aws.ec2.describe(clients.ec2(region), region,
                                     live.hosts(clients, lab.env, region))
            for region in lab.env.all_regions}


def target_group(lab, region: str) -> str:
    return live.target_group(lab.clients(), lab.env, region)


def registered(lab, region: str) -> dict[str, str]:
    """The targets registered in the region's group, with their states: not those a
    deregistration left shown `draining` until the delay ends."""
    states = aws.elb.target_states(lab.clients().elbv2(region), region,
                                   target_group(lab, region))
    return {i: s for i, s in states.items() if s != "draining"}


def record(lab) -> dict:
    return live.record(lab.clients(), lab.env)


def plant_image(lab, region: str, name: str, tags: dict[str, str]) -> str:
    """An image in the lab's account with these tags, as if made with them (moto's
    RegisterImage drops TagSpecifications: they are written once EC2 knows the new id)."""
    from botocore.exceptions import ClientError

    ec2 = lab.clients().ec2(region)
    image = ec2.register_image(Name=name, Architecture="x86_64", RootDeviceName="/dev/sda1",
                               VirtualizationType="hvm")["ImageId"]

    def tagged() -> bool | None:
        try:
            ec2.create_tags(Resources=[image],
                            Tags=[{"Key": k, "Value": v} for k, v in tags.items()])
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "InvalidAMIID.NotFound":
                return None  # not known yet (EC2's eventual consistency)
            raise

    waits.until(tagged, timeout=30, what=f"the tags of {image}", resource=region,
                fix="read the lab's daemon.log")
    return image


def serving(lab, inst: aws.ec2.Instance) -> str | None:
    return health.serving_version(inst.address or "", lab.env.app_port, lab.env.health_path)


def balancer_versions(lab, region: str, requests: int = 8) -> set[str]:
    url = lab.info["regions"][region]["load_balancer"] + lab.env.health_path
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return {json.loads(opener.open(url, timeout=5).read())["version"] for _ in range(requests)}


def assert_serving(lab, version: str, hosts: int = 2) -> dict[str, list[aws.ec2.Instance]]:
    """Every region: `hosts` live hosts, each and its balancer serving `version`."""
    fleet = live_hosts(lab)
    for region, instances in fleet.items():
        assert len(instances) == hosts, f"{region} has {len(instances)} live hosts"
        for inst in instances:
            assert serving(lab, inst) == version, inst
        assert balancer_versions(lab, region) == {version}, region
    return fleet


def host_root(lab, instance_id: str) -> Path:
    return lab.cli.lab_dir / "hosts" / instance_id / "root"


def assert_current_whole(lab, version: str) -> None:
    """Every live host's `current` is a complete release: its VERSION file says so."""
    for instances in live_hosts(lab).values():
        for inst in instances:
            current = host_root(lab, inst.instance_id) / lab.env.app_root.lstrip("/") / "current"
            assert (current / "VERSION").read_text().strip() == version, inst.instance_id
            assert (current / "app.py").exists(), inst.instance_id


def leftovers(lab, run_id: str) -> list[str]:
    """What the run created that still exists and is not serving (not a registered
    instance, not an image the record names, nor one of its snapshots) nor kept on
    purpose (a foundation image: the bake cache, with its snapshots)."""
    clients = lab.clients()
    live_images = set(record(lab)["images"].values())
    out = []
    for region in lab.env.all_regions:
        ec2 = clients.ec2(region)
        on = set(registered(lab, region))
        out += [i.instance_id for i in aws.ec2.find_tagged(ec2, region, {aws.TAG_RUN: run_id})
                if i.instance_id not in on]
        images = aws.ec2.tagged_images(ec2, region, {aws.TAG_RUN: run_id})
        kept = live_images | {i["ImageId"] for i in images
                              if any(t["Key"] == aws.TAG_FOUNDATION for t in i.get("Tags", []))}
        out += [i["ImageId"] for i in images if i["ImageId"] not in kept]
        used = set(aws.ec2.snapshots_of(i for i in images if i["ImageId"] in kept))
        out += [s["SnapshotId"] for s in aws.ec2.tagged_snapshots(ec2, region,
                                                                  {aws.TAG_RUN: run_id})
                if s["SnapshotId"] not in used]
    return out


def lock_holder(lab) -> str | None:
    held = lock.read(lab.clients().dynamodb(), lab.env.lock_table, "lab")
    return held["run_id"] if held else None


def assert_nothing_lost(lab, state: dict, version: str) -> None:
    assert_serving(lab, version)
    assert_current_whole(lab, version)
    left = leftovers(lab, state["run_id"])
    assert left == [], f"the run left these behind: {left}"
    assert lock_holder(lab) is None


def run_id_of(proc: subprocess.CompletedProcess | str) -> str:
    """The run a command made, from the summary it ends with ("run ID: …")."""
    text = proc if isinstance(proc, str) else proc.stderr
    found = re.findall(r"^run (\d{8}T\d{6}-[0-9a-f]{6}):", text, re.M)
    assert found, text[-2000:]
    return found[-1]


def state_of(lab, run: str | subprocess.CompletedProcess) -> dict:
    run_id = run if isinstance(run, str) else run_id_of(run)
    return json.loads((Path(lab.env.state_dir) / f"{run_id}.json").read_text())


def failed_clearly(proc: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 1 with one error line, naming the fix and holding the words."""
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Fix:" in errors[0], proc.stderr[-2000:]
    for word in words:
        assert word in errors[0], errors[0]
    return errors[0]


def quick_config(lab, name: str = "quick.toml", **overrides) -> Path:
    """A config whose waits for a failing release are short (it cannot become healthy),
    rolling one host at a time, region after region (hosts_in_rollout_order) unless told
    otherwise: the faults here are about a batch's steps, not about waves."""
    timeouts = {"health": 5, "ssh_retry": 2, **overrides.pop("timeouts", {})}
    overrides.setdefault("rollout", "regions-in-turn")
    return lab.write_config(name=name, timeouts=timeouts, **overrides)


def set_faults(lab, *rules: dict) -> None:
    (lab.cli.lab_dir / "faults.json").write_text(json.dumps({"rules": list(rules)}))


def clear_faults(lab) -> None:
    (lab.cli.lab_dir / "faults.json").unlink(missing_ok=True)
    (lab.cli.lab_dir / "faults-hits.json").unlink(missing_ok=True)


def hold_to_policy(lab, policy: str, instance_policy: str | None = None) -> None:
    """Hold the tool (and, given, the instances' role) to another IAM policy from its
    next call (deploylib.lab.iam)."""
    from deploylib.lab import iam

    (lab.cli.lab_dir / iam.POLICY_FILE).write_text(policy)
    if instance_policy is not None:
        (lab.cli.lab_dir / iam.INSTANCE_POLICY_FILE).write_text(instance_policy)


def restore_policy(lab) -> None:
    """The environment's own policies again, as the lab started with them."""
    from deploylib import render

    hold_to_policy(lab, render.iam_policy(lab.env), render.instance_policy(lab.env))


def fault_hits(lab) -> int:
    path = lab.cli.lab_dir / "faults-hits.json"
    return sum(json.loads(path.read_text()).values()) if path.exists() else 0


def release_that_cannot_start(directory: Path) -> Path:
    """A release tarball whose app exits at once: it never becomes healthy anywhere."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text("raise SystemExit('this release cannot start')\n")
    path = directory / "broken.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(directory / "app.py", arcname="app.py")
    return path


def app_that_fails_where_marked(tmp_path: Path, version: str) -> Path:
    """A release that refuses to start on hosts whose etc/refuse-release names it."""
    source = tmp_path / f"app-{version}"
    source.mkdir()
    real = (REPO / "examples/app/app.py").read_text()
    (source / "app.py").write_text(
        "import os, sys\n"
        "marker = os.environ.get('DEPLOY_HOST_ROOT', '') + '/etc/refuse-release'\n"
        f"if os.path.exists(marker) and {version!r} in open(marker).read().split():\n"
        "    sys.exit('refused on this host')\n" + real)
    return tarball.build(source, version, tmp_path)


def broken_hotfix(lab, tmp_path: Path, refuse, victim: str, version: str,
                  config: Path, *words: str) -> dict:
    """A hotfix whose release refuses to start on `victim` (`refuse`: the lab fixture
    marking it): it fails in one line at install-release naming the host (and `words`);
    the run's state."""
    refuse(victim, version)
    artifact = app_that_fails_where_marked(tmp_path, version)
    proc = lab.cli(f"hotfix --version {version} --artifact {artifact} --config {config}",
                   check=False)
    failed_clearly(proc, "install-release", victim, *words)
    return state_of(lab, proc)


def hosts_in_rollout_order(lab) -> list[str]:
    """The live hosts in the order a `quick_config` hotfix takes them (regions in turn)."""
    return [i.instance_id for region in lab.env.all_regions for i in sorted(
        live_hosts(lab)[region], key=lambda i: i.instance_id)]


# -- a run going on in the background ---------------------------------------------------


def _as_from_a_terminal() -> None:
    # An operator's shell delivers Ctrl-C; a test worker's inherited signal state
    # (disposition, mask) must not decide whether the run hears it.
    import signal

    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_deploy(lab, *args: str, cli=None, command: str = "deploy") -> subprocess.Popen:
    """`invoke deploy ARGS` (or another command) started, not waited for (with `cli`:
    under its config); it hears SIGINT as from a terminal."""
    proc = subprocess.Popen([sys.executable, "-m", "invoke", command, *args], cwd=REPO,
                            env=(cli or lab.cli).env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_from_a_terminal)
    proc.runs_before = set(runs(lab))  # type: ignore[attr-defined]
    return proc


def state_when(lab, proc: subprocess.Popen, ready, what: str) -> dict:
    """The new run's state once `ready(state)` holds (the run must still be going)."""
    def look() -> dict | None:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        new = set(runs(lab)) - proc.runs_before
        state = json.loads(next(iter(new)).read_text()) if new else {}
        return state if state and ready(state) else None

    return waits.until(look, timeout=180, what=what, resource="the run",
                       fix="read the run's output", first=0.05, longest=0.2)


def wait_for_stage(lab, proc: subprocess.Popen, key: str, status: str = "done") -> dict:
    """The new run's state once its stage `key` has `status`."""
    return state_when(lab, proc,
                      lambda s: s.get("stages", {}).get(key, {}).get("status") == status,
                      f"stage {key} {status}")


def ended(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    out, err = proc.communicate(timeout=300)
    return subprocess.CompletedProcess([], proc.returncode, out, err)
