"""Verification windows in lab tests: a sample app that misbehaves, a config that
watches, and users' requests counted before a run (what a window is compared with)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from deploylib import aws, waits
from tests.conftest import REPO
from tests.lab.checks import target_group

# The lab's metrics: every second, a second late (deploylib/lab/environment.toml). The
# tests of errors and alarms leave latency out of the verdict (a loaded machine's p90 is
# not what they are about): min_latency_rise is given where latency is judged.
LAB_METRICS = {"period": 1, "delay": 1, "min_requests": 20, "min_latency_rise": 5}


def app_that(tmp_path: Path, **misbehave: float) -> Path:
    """The sample app, made to misbehave as examples/app/app.py reads it."""
    app = tmp_path / "app"
    shutil.copytree(REPO / "examples/app", app)
    (app / "misbehave.json").write_text(json.dumps(misbehave))
    return app


def watched(lab, tmp_path: Path, app: Path | None = None, **verify: object) -> Path:
    """A config with verification windows, beside the lab's own (its runs where the
    lab's checks look). No team smoke tests: they ask for the page, and a release failing
    a fifth of its requests may fail them before any window (as it should)."""
    return lab.write_config(name=f"{tmp_path.name}.toml",
                            app_source=str(app or REPO / "examples/app"), smoke_tests="",
                            verify={**LAB_METRICS, **verify})


def users(lab):
    """Users as the windows' tests need them: non-sticky (any request may reach any
    host), asking for the page, two clients a region (enough requests for a canary's
    window to tell a fifth of its requests failing from chance)."""
    from tests.lab.traffic import Stream

    return Stream(lab, sticky=False, path="/", clients=2)


def before_the_run(lab, seconds: float) -> None:
    """Users' requests in the lab's CloudWatch for `seconds` (what the judge compares a
    window with), in every region, none of them failed: an earlier test's bad release
    is out of what a window is compared with."""
    clients = lab.clients()

    def counted() -> bool:
        now = int(time.time()) - 1  # the period now closing is not in yet
        for region in lab.env.all_regions:
            src = aws.cloudwatch.source(clients.elbv2(region), region,
                                        target_group(lab, region))
            seen = aws.cloudwatch.traffic(clients.cloudwatch(region), src, now - seconds, now,
                                          "p90")
            if seen.requests < LAB_METRICS["min_requests"] or seen.errors:
                return False
        return True

    waits.until(counted, timeout=60, what="users' requests in CloudWatch",
                resource="the lab's balancers", fix="check the lab's metrics (lab.monitoring)")


