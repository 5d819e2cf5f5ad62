"""The lab's load balancers: one HTTP proxy per target group, following its registrations.

As an Application Load Balancer does (its documentation is cited in the README, "The lab's
load balancer"):
- a newly registered target starts `initial` and is `healthy` after ONE passing check;
  HealthyThresholdCount (`healthy_threshold`) is what an `unhealthy` target needs to be
  healthy again; UNHEALTHY_THRESHOLD failed checks in a row make a target `unhealthy`;
- it routes only to healthy targets (to all registered ones when none is: fail open);
- a deregistered target gets no new request from that moment, finishes what it has in
  flight, and is *shown* `draining` until the deregistration delay has passed even when
  it was idle at once; then it is gone (DescribeTargetHealth asked for it: `unused`).
The states it sees are what the lab's DescribeTargetHealth answers, so the tool's waits
read the balancer's real view. Every request it forwards is counted as ALB counts it (its
status, whose it is, the target's response time) for the lab's CloudWatch
(deploylib.lab.monitoring).
"""

from __future__ import annotations

import http.client
import http.cookies
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from deploylib.lab.monitoring import Meter

HEALTHY_THRESHOLD = 2  # checks an unhealthy target must pass (ALB's HealthyThresholdCount)
UNHEALTHY_THRESHOLD = 2
# Lab time: a real ALB checks every 5-30 s. Half a second keeps a new target's wait short
# (healthy after one passing check) and an idle lab's checks cheap: a lab left up (six
# hosts) costs about 2.5 % of a core, not the 4 % checks every 0.2 s cost.
CHECK_INTERVAL = 0.5
# How soon a balancer sees its group's registrations change (read from the lab's API)
SYNC_INTERVAL = 0.2
CHECK_TIMEOUT = 1.0
STICKY_COOKIE = "AWSALB"


@dataclass
class Target:
    instance_id: str
    address: str
    port: int
    state: str = "initial"
    good: int = 0
    bad: int = 0
    inflight: int = 0
    drain_until: float | None = None


@dataclass
class Balancer:
    region: str
    group_arn: str
    health_path: str
    deregistration_delay: float
    targets: dict[str, Target] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None
    requests: int = 0
    sticky: bool = True
    interval: float = CHECK_INTERVAL
    healthy_threshold: int = HEALTHY_THRESHOLD
    meter: Meter = field(default_factory=Meter)
    _next_check: float = 0.0
    _rr: itertools.count = field(default_factory=itertools.count)

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def state(self, instance_id: str) -> str | None:
        with self.lock:
            t = self.targets.get(instance_id)
            if t is None:
                return None
            return "draining" if t.drain_until is not None else t.state

    def sync(self, registered: dict[str, tuple[str, int]]) -> None:
        """Follow the target group: add new targets, start draining removed ones."""
        now = time.monotonic()
        with self.lock:
            for iid, (address, port) in registered.items():
                t = self.targets.get(iid)
                if t is None or t.drain_until is not None:
                    self.targets[iid] = Target(iid, address, port)
            for iid, t in list(self.targets.items()):
                if iid in registered:
                    continue
                if t.drain_until is None:
                    t.drain_until = now + self.deregistration_delay
                # As on ALB: routing stopped at once and an idle target is done, but it
                # is shown draining until the delay has passed (in flight or not).
                if now >= t.drain_until:
                    del self.targets[iid]

    def check(self, pool: ThreadPoolExecutor) -> None:
        with self.lock:
            live = [t for t in self.targets.values() if t.drain_until is None]
        results = list(pool.map(self._probe, live))
        with self.lock:
            for t, ok in zip(live, results, strict=True):
                if ok:
                    t.good, t.bad = t.good + 1, 0
                    # A new target is healthy after one passing check; an unhealthy one
                    # after HealthyThresholdCount of them.
                    needed = self.healthy_threshold if t.state == "unhealthy" else 1
                    if t.good >= needed:
                        t.state = "healthy"
                else:
                    t.good, t.bad = 0, t.bad + 1
                    if t.bad >= UNHEALTHY_THRESHOLD:
                        t.state = "unhealthy"

    def _probe(self, t: Target) -> bool:
        try:
            conn = http.client.HTTPConnection(t.address, t.port, timeout=CHECK_TIMEOUT)
            conn.request("GET", self.health_path)
            ok = conn.getresponse().status == 200
            conn.close()
            return ok
        except OSError:
            return False

    def pick(self, sticky_to: str | None = None) -> Target | None:
        """Round robin over healthy targets; a sticky client keeps its target while that
        target is healthy and not draining (ALB's lb_cookie stickiness)."""
        with self.lock:
            routable = [t for t in self.targets.values() if t.drain_until is None]
            healthy = [t for t in routable if t.state == "healthy"]
            choices = sorted(healthy or routable, key=lambda t: t.instance_id)
            if not choices:
                return None
            stuck = [t for t in healthy if t.instance_id == sticky_to]
            t = stuck[0] if stuck else choices[next(self._rr) % len(choices)]
            t.inflight += 1
            self.requests += 1
            return t

    def done(self, t: Target) -> None:
        with self.lock:
            t.inflight -= 1

    def serve(self) -> None:
        balancer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802
                cookies = http.cookies.SimpleCookie(self.headers.get("Cookie", ""))
                sticky = cookies[STICKY_COOKIE].value if STICKY_COOKIE in cookies else None
                target = balancer.pick(sticky if balancer.sticky else None)
                if target is None:
                    balancer.meter.count(503, None, from_target=False)
                    self._reply(503, b"no registered targets\n", "text/plain")
                    return
                began = time.monotonic()
                try:
                    conn = http.client.HTTPConnection(target.address, target.port, timeout=10)
                    conn.request("GET", self.path)
                    resp = conn.getresponse()
                    body = resp.read()
                    conn.close()
                    # TargetResponseTime: from the request sent to the response's last byte
                    balancer.meter.count(resp.status, time.monotonic() - began,
                                         from_target=True)
                    self._reply(resp.status, body, resp.getheader("Content-Type", "text/plain"),
                                target.instance_id)
                except OSError:
                    balancer.meter.count(502, None, from_target=False)
                    self._reply(502, b"bad gateway\n", "text/plain", target.instance_id)
                finally:
                    balancer.done(target)

            def _reply(self, status: int, body: bytes, kind: str, target: str = "") -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                if target:
                    self.send_header("X-Lab-Target", target)
                    if balancer.sticky:
                        self.send_header("Set-Cookie", f"{STICKY_COOKIE}={target}; Path=/")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True,
                         name=f"lb-{self.region}").start()


class Balancers:
    """All the lab's balancers and the loop that keeps them in step with moto."""

    def __init__(self, registrations: Callable[[Balancer], dict[str, tuple[str, int]]]):
        self.by_arn: dict[str, Balancer] = {}
        self._registrations = registrations
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="lb-check")

    def add(self, balancer: Balancer) -> None:
        balancer.serve()
        self.by_arn[balancer.group_arn] = balancer

    def state(self, group_arn: str, instance_id: str) -> str | None:
        b = self.by_arn.get(group_arn)
        return b.state(instance_id) if b else None

    def follow(self, group_arn: str) -> None:
        """Take a target group's registrations now (the API just changed them): as on
        ALB, a deregistered target gets no new request from that moment on."""
        b = self.by_arn.get(group_arn)
        if b is not None:
            b.sync(self._registrations(b))

    def run(self) -> None:
        threading.Thread(target=self._loop, daemon=True, name="lb-loop").start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for b in list(self.by_arn.values()):
                try:
                    b.sync(self._registrations(b))
                    if now >= b._next_check:  # each balancer at its own interval
                        b._next_check = now + b.interval
                        b.check(self._pool)
                except Exception:  # noqa: BLE001 - one bad round must not stop balancing
                    pass
            self._stop.wait(SYNC_INTERVAL)

    def stop(self) -> None:
        self._stop.set()
        for b in self.by_arn.values():
            if b.server:
                b.server.shutdown()
        self._pool.shutdown(wait=False)
