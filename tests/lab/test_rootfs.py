"""A bake from a real Debian root filesystem (deploylib.lab.rootfs): the builder and every
host after it are chroots over it, with its own sshd, sudo, apt-get and users, so
provisioning installs a package with the real apt-get from Debian's archive."""

from __future__ import annotations

import pytest

from deploylib.lab import rootfs
from tests.conftest import Cli
from tests.lab.checks import assert_serving, live_hosts, state_of

# A lab of its own, started once the Debian root filesystem is there (so it offers it).
pytestmark = [pytest.mark.lab, pytest.mark.lab_shape(debian=True)]


# The packages every bake here provisions: the second bake starts from the first's
# foundation image (the bake cache), so only the first runs apt-get.
PACKAGES = ["python3", "curl", "ca-certificates", "jq"]


def test_a_bake_from_a_real_debian_root_filesystem_runs_real_apt_get(lab, tmp_path):
    cli = Cli(config=lab.write_config(tmp_path, base_image=rootfs.IMAGE_NAME, os_packages=PACKAGES,
                                      state_dir=str(lab.env.state_dir)), lab_dir=lab.cli.lab_dir)
    proc = cli("deploy --mode immutable --version 8.0.0", timeout=900)
    state = state_of(lab, proc)
    assert not state["facts"]["builder"]["cache_hit"]  # provisioned, not from the cache
    assert_serving(lab, "8.0.0")
    for hosts in live_hosts(lab).values():
        for inst in hosts:
            root = lab.cli.lab_dir / "hosts" / inst.instance_id / "root"
            assert (root / "etc/debian_version").read_text().startswith("12.")
            assert (root / "usr/bin/jq").exists()  # installed by Debian's apt-get
            assert not (root / "var/lib/lab/packages").exists()  # not the lab's stand-in
            # the app's user and the login user are the root filesystem's own
            users = {line.split(":")[0] for line in (root / "etc/passwd").read_text().split()}
            assert {lab.env.service_user, lab.env.ssh_user} <= users


def test_a_server_group_of_a_debian_image_boots_its_instances_into_the_hotfix(lab,
                                                                              tmp_path):
    """The boot script (user data) runs inside the instance's own root filesystem, as
    cloud-init would: Debian's curl signs the record's read with the instance's role, and
    the hotfix its image lacks is installed before the group puts the instance in service."""
    from deploylib import aws, waits
    from tests.lab import checks

    cli = Cli(config=lab.write_config(tmp_path, base_image=rootfs.IMAGE_NAME, os_packages=PACKAGES,
                                      fleet="server-groups", timeouts={"boot": 300},
                                      state_dir=str(lab.env.state_dir)), lab_dir=lab.cli.lab_dir)
    cli("deploy --mode immutable --version 8.1.0", timeout=900)
    cli("hotfix --version 8.1.1", timeout=600)
    region = lab.env.primary_region
    name = checks.record(lab)["server_groups"][region]
    asg = lab.clients().autoscaling(region)
    before = set(aws.autoscaling.describe(asg, region, name).in_service)
    cli(f"lab.scale --region {region} --desired {len(before) + 1}")
    new = waits.until(lambda: set(aws.autoscaling.describe(asg, region, name).in_service)
                      - before or None, timeout=300, what="the new instance in service",
                      resource=name, fix="read its cloud-init-output.log")
    (iid,) = new
    root = lab.cli.lab_dir / "hosts" / iid / "root"
    assert (root / "etc/debian_version").read_text().startswith("12.")
    log = (root / "var/log/cloud-init-output.log").read_text()
    assert "switched current to 8.1.1" in log and "in service on 8.1.1" in log, log
    (inst,) = aws.ec2.wait_instances(lab.clients().ec2(region), region, [iid], "running", 30)
    assert checks.serving(lab, inst) == "8.1.1"
