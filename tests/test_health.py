"""The app's health endpoint as the steps, status and the tests read it, against the
sample application started from its own tarball."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile

import pytest

from deploylib import health, tarball, waits
from deploylib.errors import WaitTimeout
from tests.conftest import REPO, loopback

ADDRESS = loopback(97)


@pytest.fixture
def app(tmp_path):
    """The sample app, unpacked from a release tarball, serving on ADDRESS:8080."""
    path = tarball.build(REPO / "examples/app", "4.5.6", tmp_path)
    unpacked = tmp_path / "release"
    with tarfile.open(path) as tar:
        tar.extractall(unpacked)  # our own tarball (extractall's filter= needs 3.11.4)
    proc = subprocess.Popen([sys.executable, "app.py"], cwd=unpacked,
                            env=dict(os.environ, APP_HOST=ADDRESS, APP_PORT="8080"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    waits.until(lambda: health.serving_version(ADDRESS, 8080, "/health"), timeout=10,
                what="the sample app", resource=f"{ADDRESS}:8080", fix="-")
    yield proc
    proc.terminate()
    proc.wait(timeout=10)


def test_the_sample_app_reports_its_release(app):
    assert health.serving_version(ADDRESS, 8080, "/health") == "4.5.6"


def test_a_host_that_does_not_answer_reports_nothing(app):
    assert health.serving_version(ADDRESS, 8081, "/health") is None
    assert health.serving_version(ADDRESS, 8080, "/missing") is None


def test_the_sample_app_stops_promptly_on_sigterm(app):
    app.terminate()
    assert app.wait(timeout=5) == 0


def _env(check: str, path: str):
    from types import SimpleNamespace

    return SimpleNamespace(health_check=check, app_port=8080, health_path=path)


def test_waiting_for_a_release_the_app_does_not_report_names_what_it_reports(app):
    env = _env("version", "/health")
    health.wait_serving(env, ADDRESS, "4.5.6", timeout=5, resource="i-1", on_host=None)
    with pytest.raises(WaitTimeout) as info:
        health.wait_serving(env, ADDRESS, "9.9.9", timeout=0.3, resource="i-1", on_host=None)
    assert "it reports 4.5.6" in info.value.line()


def test_a_status_only_health_endpoint_says_up_and_the_host_says_which_release(app):
    """health_check = "status": /healthz answers "ok"; the release is what the host
    proves (on_host), asked only when the app is up."""
    env = _env("status", "/healthz")
    assert health.answers(ADDRESS, 8080, "/healthz")
    assert health.serving(env, ADDRESS, on_host=lambda: "4.5.6") == "4.5.6"
    assert health.serving(env, ADDRESS, on_host=None) is None  # cannot be proven here
    asked = []
    down = _env("status", "/no-such-path")
    assert health.serving(down, ADDRESS, on_host=lambda: asked.append(1) or "4.5.6") is None
    assert not asked  # a host whose app is down is not asked


@pytest.mark.parametrize("body", [b'{"version": "1.0", "pad": "' + b"x" * (70 * 1024) + b'"}',
                                  b'["1.0"]', b"not json"])
def test_a_health_answer_too_large_or_not_an_object_is_not_a_release(body):
    """A host answering more than 64 KB is not read further, nor believed; nor an answer
    that is not a JSON object."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from threading import Thread

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        with pytest.raises(ValueError):
            health.probe("127.0.0.1", port, "/health")
        assert health.serving_version("127.0.0.1", port, "/health") is None
    finally:
        server.shutdown()
        server.server_close()
