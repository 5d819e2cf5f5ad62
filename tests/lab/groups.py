"""What the server-group lab tests share: the live group and its instances read back,
waits until a group settles, a deploy with a scale-out (or a fault) at a chosen stage,
and what a run left behind."""

from __future__ import annotations

import subprocess
import sys

from deploylib import aws, waits
from tests.conftest import REPO
from tests.lab import checks, traffic


def asg(lab, region: str):
    return lab.clients().autoscaling(region)


def live_group(lab, region: str) -> aws.autoscaling.ServerGroup:
    name = checks.record(lab)["server_groups"][region]
    return aws.autoscaling.describe(asg(lab, region), region, name)


def groups(lab, region: str) -> list[aws.autoscaling.ServerGroup]:
    return aws.autoscaling.server_groups(asg(lab, region), region, lab.env.group_prefix)


def settled(lab, region: str, count: int) -> list[str]:
    """Wait until the live group has `count` instances in service, each registered and
    healthy in the target group and nothing else registered; returns them."""
    def look() -> list[str] | None:
        group = live_group(lab, region)
        registered = checks.registered(lab, region)
        serving = group.in_service
        if len(serving) == count and len(group.instances) == count and \
                registered == dict.fromkeys(serving, "healthy"):
            return serving
        return None

    return waits.until(look, timeout=120, what=f"{count} instances in service",
                       resource=region, fix="read the instances' cloud-init-output.log")


def boot_log(lab, instance_id: str) -> str:
    return (checks.host_root(lab, instance_id) / "var/log/cloud-init-output.log").read_text()


def scale_all(lab, desired: int) -> None:
    for region in lab.env.all_regions:
        lab.cli(f"lab.scale --region {region} --desired {desired}")


def assert_all_serve(lab, version: str, count: int) -> None:
    for region in lab.env.all_regions:
        ids = settled(lab, region, count)
        # As the tool reads instances the group just launched: EC2 may not list them yet.
        for inst in aws.ec2.wait_instances(lab.clients().ec2(region), region, ids, "running",
                                           timeout=30):
            assert checks.serving(lab, inst) == version, (region, inst.instance_id)


def assert_no_failed_request(stream: traffic.Stream, version: str) -> None:
    report = stream.report("server groups")
    for region, r in report["regions"].items():
        assert r["failed"] == 0, (region, [x for x in stream.seen[region] if x[0] != 200][:5])
        assert r["versions"] == [version], (region, r["versions"])


def with_scale_out(lab, anchor: str, *args: str, step: str = "scale-out"
                    ) -> subprocess.CompletedProcess:
    """A deploy whose every region scales out by one (live group and the run's own) once
    the stage `anchor` is done (tests/plugins/scale_out.py), or the live group is asked
    to scale in by one (step="scale-in")."""
    config = lab.write_config(name="scaling.toml",
                              fleet="server-groups", timeouts={"boot": 120, "health": 5},
                              plugins=["scale_out"],
                              extra_stages=[{"step": step, "after": anchor}])
    env = dict(lab.cli.env(), PYTHONPATH=str(REPO / "tests" / "plugins"),
               DEPLOY_CONFIG=str(config))
    return subprocess.run([sys.executable, "-m", "invoke", *args, "--config", str(config)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=400)


def run_leftovers(lab, run_id: str) -> list[str]:
    out = []
    for region in lab.env.all_regions:
        out += [g.name for g in groups(lab, region) if g.tags.get(aws.TAG_RUN) == run_id]
        template = aws.ec2.launch_template(lab.clients().ec2(region), region,
                                           lab.env.group_prefix)
        out += [f"{region}:{v.version}" for v in (template.versions if template else [])
                if v.tags.get(aws.TAG_RUN) == run_id]
    return out + checks.leftovers(lab, run_id)
