"""The lab's load balancer keeps target states as an Application Load Balancer documents
them: one passing check for a new target, HealthyThresholdCount for an unhealthy one,
and a deregistered target shown `draining` until the delay though no request goes to it.
Health checks are real HTTP requests to a real server; each round is run by the test."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploylib import waits
from deploylib.lab.balancer import Balancer


class App:
    """A target whose health the test sets."""

    def __init__(self) -> None:
        self.ok = True
        app = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200 if app.ok else 500)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def where(self) -> tuple[str, int]:
        return self.server.server_address[0], self.server.server_address[1]


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as p:
        yield p


@pytest.fixture
def app():
    a = App()
    yield a
    a.server.shutdown()


def balancer(delay: float = 300.0, threshold: int = 5) -> Balancer:
    return Balancer(region="lab", group_arn="arn:test", health_path="/health",
                    deregistration_delay=delay, healthy_threshold=threshold)


def test_a_new_target_is_healthy_after_one_passing_check(app, pool):
    b = balancer(threshold=5)
    b.sync({"i-1": app.where})
    assert b.state("i-1") == "initial"
    b.check(pool)
    assert b.state("i-1") == "healthy"


def test_an_unhealthy_target_needs_the_healthy_threshold_to_come_back(app, pool):
    b = balancer(threshold=3)
    b.sync({"i-1": app.where})
    b.check(pool)
    app.ok = False
    b.check(pool)
    assert b.state("i-1") == "healthy"  # one failure is not enough (UNHEALTHY_THRESHOLD 2)
    b.check(pool)
    assert b.state("i-1") == "unhealthy"
    app.ok = True
    for _ in range(2):
        b.check(pool)
        assert b.state("i-1") == "unhealthy"
    b.check(pool)
    assert b.state("i-1") == "healthy"


def test_a_deregistered_target_is_shown_draining_until_the_delay_and_gets_nothing(app, pool):
    other = App()
    try:
        b = balancer(delay=1.0)
        b.sync({"i-1": app.where, "i-2": other.where})
        b.check(pool)
        b.sync({"i-2": other.where})  # i-1 deregistered, nothing in flight on it
        assert b.state("i-1") == "draining"
        assert {b.pick().instance_id for _ in range(6)} == {"i-2"}  # routed elsewhere at once
        b.sync({"i-2": other.where})
        assert b.state("i-1") == "draining"  # idle, and still shown draining
        waits.until(lambda: b.sync({"i-2": other.where}) or b.state("i-1") is None,
                    timeout=10, what="the deregistration delay", resource="i-1", fix="-")
    finally:
        other.server.shutdown()


def test_a_draining_target_registered_again_starts_over(app, pool):
    b = balancer()
    b.sync({"i-1": app.where})
    b.check(pool)
    b.sync({})
    assert b.state("i-1") == "draining"
    b.sync({"i-1": app.where})
    assert b.state("i-1") == "initial"
    b.check(pool)
    assert b.state("i-1") == "healthy"
