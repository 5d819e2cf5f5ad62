"""Before every lab test: the lab is whole, as a test may take it to be.

A test starts from whatever release is live and never from what an earlier test did;
but a test that failed may have left the lab broken (a host out, a fault injected, a
lock held). So each test first checks the lab as an operator would — the lock free, no
fault set, in every region `fleet_size` hosts registered, healthy and serving the
recorded release — and repairs it as an operator would (clears the fault, breaks the
lock of the dead run), starting it afresh only when that is not enough, saying why.
After each test, faults are cleared and the tool is held to its own IAM policy again.

Which lab a test gets is its shape (tests/conftest.Shape, `@pytest.mark.lab_shape`);
a test marked `own_lab` starts a lab of its own (the worker's is not started for it).
"""

from __future__ import annotations

from pathlib import Path

import pytest

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


def _repair(lab, why: str) -> str | None:
    """What an operator does first: clear the fault, break the dead run's lock; then
    what is still wrong (None: whole again)."""
    if why == "a fault is still set":
        checks.clear_faults(lab)
    elif why == "the deploy lock is held":
        lab.cli("lock.break --env lab")
    else:
        return why
    return _broken(lab)


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
        while why and (still := _repair(lab, why)) != why:
            why = still
    except Exception as exc:  # noqa: BLE001 - a lab that cannot even be read is broken
        why = f"it cannot be read ({type(exc).__name__}: {exc})"
    if why:
        print(f"the lab is started afresh before {request.node.name}: {why}")
        lab.up()
    yield
    checks.clear_faults(lab)
    checks.restore_policy(lab)


@pytest.fixture
def refuse(lab):
    """Mark a host so that these releases (from app_that_fails_where_marked) refuse to
    start on it."""
    marked: list[Path] = []

    def mark(instance_id: str, *versions: str) -> None:
        path = checks.host_root(lab, instance_id) / "etc/refuse-release"
        path.write_text(" ".join(versions) + "\n")
        marked.append(path)

    yield mark
    for path in marked:
        path.unlink(missing_ok=True)
