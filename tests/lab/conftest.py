"""Before every lab test: the lab is whole, as a test may take it to be.

A test starts from whatever release is live and never from what an earlier test did;
but a test that failed may have left the lab broken (a host out, a fault injected, a
lock held). So each test first checks the lab as an operator would — the lock free, no
fault set, in every region `fleet_size` hosts registered, healthy and serving the
recorded release — and starts it afresh when it is not, saying why. After each test,
faults are cleared and the tool is held to its own IAM policy again.

`groups_lab`: the lab with its fleet as server groups, for the modules that ask for it.
A test marked `own_lab` starts a lab of its own (the worker's is not started for it).
"""

from __future__ import annotations

import os

import pytest

from tests.conftest import write_config
from tests.lab import checks


def _broken(lab) -> str | None:
    if (lab.cli.lab_dir / "faults.json").exists():
        return "a fault is still set"
    if checks.lock_holder(lab):
        return "the deploy lock is held"
    version = (checks.record(lab) or {}).get("release")
    for region, instances in checks.live_hosts(lab).items():
        if len(checks.registered(lab, region)) != lab.env.fleet_size:
            return f"{region} has {len(checks.registered(lab, region))} registered hosts"
        if len(instances) != lab.env.fleet_size:
            return f"{region} has {len(instances)} healthy hosts"
        for inst in instances:
            if checks.serving(lab, inst) != version:
                return f"{inst.instance_id} does not serve the recorded {version}"
    return None


@pytest.fixture(autouse=True)
def whole_lab(request):
    """The lab as every lab test may take it to be (see the module's docstring); not for
    a test that brings up a lab of its own (marked own_lab)."""
    if request.node.get_closest_marker("own_lab"):
        yield
        return
    lab = request.getfixturevalue("lab")
    try:
        why = _broken(lab)
    except Exception as exc:  # noqa: BLE001 - a lab that cannot even be read is broken
        why = f"it cannot be read ({type(exc).__name__}: {exc})"
    if why:
        print(f"the lab is started afresh before {request.node.name}: {why}")
        lab.up()
    yield
    checks.clear_faults(lab)
    checks.restore_policy(lab)


@pytest.fixture(scope="module")
def groups_lab(lab):
    """The worker's lab started afresh with its fleet as server groups (1.0.0 baked, group
    v001 live), for this module; afterwards afresh as it was."""
    plain = lab.config_path
    config = write_config(plain.parent, name="server-groups.toml", fleet="server-groups",
                          timeouts={"boot": 120})
    saved = os.environ.get("DEPLOY_CONFIG")
    lab.config_path = lab.cli.config = config
    os.environ["DEPLOY_CONFIG"] = str(config)
    lab.up()
    try:
        yield lab
    finally:
        lab.config_path = lab.cli.config = plain
        os.environ["DEPLOY_CONFIG"] = saved or str(plain)
        lab.up()
