"""The lab daemon: moto's server with the lab hooks, the host farm and the balancers.

Started in the background by `invoke lab.up` (deploylib.lab.control); writes lab.json
when ready and tears everything down on SIGTERM or SIGINT.

    python -m deploylib.lab.daemon --dir .lab --spec '{...}'
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import threading
from pathlib import Path

from deploylib.lab import (
    KEY_IDS,
    addresses,
    cloud,
    iam,
    make_keys,
    metadata,
    monitoring,
    rootfs,
    runcommand,
    scaling,
    sigv4,
)
from deploylib.lab import balancer as lb
from deploylib.lab.hosts import HostFarm, write_keypair


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--spec", required=True, help="JSON: regions, names, ports")
    args = parser.parse_args()
    # The lab's own calls (seeding the account) are not the tool's: an observer of the
    # tool's AWS calls through client-side monitoring (the IAM policy check) must not
    # see them.
    for name in ("AWS_CSM_ENABLED", "AWS_CSM_PORT", "AWS_CSM_HOST", "AWS_CSM_CLIENT_ID"):
        os.environ.pop(name, None)
    lab_dir = Path(args.dir).resolve()
    spec = json.loads(args.spec)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from deploylib.aws import AwsClients
    from deploylib.lab.faults import Faults, LabServer

    lab_dir.mkdir(parents=True, exist_ok=True)
    # This lab's loopback ranges, held while it lives: from the one asked for on, the
    # first that no other lab on the machine holds (deploylib.lab.addresses).
    ranges = addresses.claim(int(spec.get("network", 1)), len(spec["regions"]))
    spec["network"] = ranges.first
    client_key = lab_dir / "id_ed25519"
    public = write_keypair(client_key)
    (lab_dir / "authorized_keys").write_text(public + "\n")

    farm = HostFarm(lab_dir, ssh_port=spec["ssh_port"])
    balancers = lb.Balancers(cloud.registrations)
    profile = spec.get("profile") or {}
    # The lab's keys, new for this lab: its endpoint answers only what they (or keys made
    # through its IAM and STS) sign.
    keys = make_keys(lab_dir)
    imds = metadata.MetadataService(keys["instance"])
    imds.start()
    endpoint_box: dict[str, str] = {}
    # Run Command: every host's SSM agent writes its output to S3 as the instance role.
    as_instance: list[AwsClients] = []

    def put_output(region: str, bucket: str, key: str, data: bytes) -> None:
        if not as_instance:
            as_instance.append(AwsClients(region, endpoint_url=endpoint_box["url"],
                                          credentials=keys["instance"], path_style=True))
        as_instance[0].s3().put_object(Bucket=bucket, Key=key, Body=data)

    agents = farm.agents = runcommand.RunCommand(farm.hosts, put_output)
    runcommand.install(agents)
    cloud.install(farm, balancers, profile, boot_env=lambda region, iid: {
        "DEPLOY_IMDS": imds.base(region, iid), "DEPLOY_AWS_ENDPOINT": endpoint_box["url"]},
        sshd=spec.get("sshd", "all"))
    faults = Faults(lab_dir)  # the API's, and the launches a group fails
    stop_scaling = scaling.install(faults=faults)
    # The tool is held to the environment's policy from its first call on.
    (lab_dir / iam.POLICY_FILE).write_text(spec["policy"])
    (lab_dir / iam.INSTANCE_POLICY_FILE).write_text(spec["instance_policy"])
    server = LabServer(faults,
                       iam.Enforcer(lab_dir, KEY_IDS["deployer"], KEY_IDS["instance"],
                                    KEY_IDS["neighbour"]),
                       sigv4.Keys.of_lab(keys))
    server.start()
    host, port = server.get_host_and_port()
    endpoint = endpoint_box["url"] = f"http://{host}:{port}"

    clients = AwsClients(spec["regions"][0], endpoint_url=endpoint,
                         credentials=keys["admin"], path_style=True)
    groups = cloud.seed(clients, spec)
    scaling.settle_iam()
    if spec.get("debian"):
        # A real Debian root filesystem as a second base image (deploylib.lab.rootfs).
        for region in spec["regions"]:
            image = clients.ec2(region).register_image(
                Name=rootfs.IMAGE_NAME.replace("*", "20261101"), Architecture="x86_64",
                Description="lab base image: Debian 12 (debootstrap, minbase)",
                RootDeviceName="/dev/sda1", VirtualizationType="hvm")["ImageId"]
            farm.mark_rootfs(image, rootfs.path())
    feeds = []
    period = float(profile.get("metric_period", monitoring.PERIOD))
    for region, arn in groups.items():
        balancer = lb.Balancer(region=region, group_arn=arn, health_path=spec["health_path"],
                               deregistration_delay=cloud.deregistration_delay(spec),
                               interval=profile.get("health_interval", lb.CHECK_INTERVAL),
                               healthy_threshold=int(profile.get("healthy_threshold",
                                                                 lb.HEALTHY_THRESHOLD)),
                               meter=monitoring.Meter(period))
        balancers.add(balancer)
        (front,) = clients.elbv2(region).describe_target_groups(
            TargetGroupArns=[arn])["TargetGroups"][0]["LoadBalancerArns"]
        feeds.append(monitoring.Feed(region, arn, front, balancer.meter))
    balancers.run()
    stop_metrics = monitoring.run(feeds, spec["regions"],
                                  delay=float(profile.get("metric_delay", monitoring.DELAY)))

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    info = {
        "pid": os.getpid(),
        "endpoint": endpoint,
        "ssh_port": spec["ssh_port"],
        "ssh_key": str(client_key),
        "hostkeys": str(farm.registry),
        "regions": {r: {"target_group": groups[r], "load_balancer": balancers.by_arn[groups[r]].url}
                    for r in spec["regions"]},
        "spec": spec,
    }
    tmp = lab_dir / "lab.json.tmp"
    tmp.write_text(json.dumps(info, indent=2) + "\n")
    os.replace(tmp, lab_dir / "lab.json")
    print(f"lab ready: AWS API at {endpoint}", flush=True)

    stop.wait()
    (lab_dir / "lab.json").unlink(missing_ok=True)
    stop_scaling.set()
    stop_metrics.set()
    agents.stop.set()
    balancers.stop()
    farm.shutdown()
    imds.stop()
    server.stop()
    ranges.release()
    print("lab stopped", flush=True)


if __name__ == "__main__":
    main()
