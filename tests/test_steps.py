"""Pieces of the step library that need no lab: the sample app as a step sees it.

Every step runs end to end in tests/lab/; here, the health read that smoke tests, health
checks and status share, against the sample application started from its own tarball.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

from deploylib import release, steps, waits
from tests.conftest import REPO


@pytest.fixture
def app(tmp_path):
    """The sample app, unpacked from a release tarball, serving on 127.0.97.1:8080."""
    tarball = release.build(REPO / "examples/app", "4.5.6", tmp_path)
    unpacked = tmp_path / "release"
    with tarfile.open(tarball) as tar:
        tar.extractall(unpacked)  # our own tarball (extractall's filter= needs 3.11.4)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=unpacked,
                            env=dict(os.environ, APP_HOST="127.0.97.1", APP_PORT="8080"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waits.until(lambda: steps.serving_version("127.0.97.1", 8080, "/health"), timeout=10,
                what="the sample app", resource="127.0.97.1:8080", fix="-")
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


def test_the_sample_app_reports_its_release(app):
    assert steps.serving_version("127.0.97.1", 8080, "/health") == "4.5.6"


def test_a_host_that_does_not_answer_reports_nothing(app):
    assert steps.serving_version("127.0.97.1", 8081, "/health") is None
    assert steps.serving_version("127.0.97.1", 8080, "/missing") is None


def test_the_sample_app_stops_promptly_on_sigterm(app):
    app.terminate()
    assert app.wait(timeout=5) == 0


def test_every_install_failure_code_has_a_fix_for_the_operator():
    script = (REPO / "templates/install.sh.j2").read_text()
    for code in steps.INSTALL_FIXES:
        assert f"exit {code}" in script
