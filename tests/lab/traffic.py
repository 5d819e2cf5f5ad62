"""A steady stream of user requests through the lab's load balancers during a deploy.

One client per region, keeping its cookies as a browser does (the lab's target groups
use sticky sessions, as most web fleets do). Every response is recorded with the
release it came from, so a test can check that no request failed and that each client
saw the release change exactly once, from old to new.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from deploylib import waits


@dataclass
class Stream:
    lab: Any
    interval: float = 0.02  # pacing of the stream, not a synchronisation
    # a browser's cookies (stays on its target); False: every request may go anywhere, as
    # many clients' would (what reaches a target the moment it is registered)
    sticky: bool = True
    # what users ask for: the health path (the release as JSON), or another (the sample
    # app's page: "hello from release X")
    path: str | None = None
    # clients per region (each with its own cookies): more requests a second
    clients: int = 1
    seen: dict[str, list[tuple[int | None, str]]] = field(default_factory=dict)
    # every failed request: (region, the target that answered it, when)
    failed: list[tuple[str, str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, region: str) -> None:
        path = self.path or self.lab.env.health_path
        url = self.lab.info["regions"][region]["load_balancer"] + path
        handlers: list[Any] = [urllib.request.ProxyHandler({})]
        if self.sticky:
            handlers.append(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
        opener = urllib.request.build_opener(*handlers)
        out = self.seen[region]
        while not self._stop.is_set():
            try:
                with opener.open(url, timeout=5) as resp:
                    body = resp.read()
                    out.append((resp.status, json.loads(body)["version"]
                                if path == self.lab.env.health_path
                                else body.decode().split()[-1]))
            except Exception as exc:  # noqa: BLE001 - a failed request is the data
                out.append((getattr(exc, "code", None), f"{type(exc).__name__}: {exc}"))
                headers = getattr(exc, "headers", None)
                self.failed.append((region, headers.get("X-Lab-Target", "") if headers
                                    else "", time.time()))
            self._stop.wait(self.interval)

    def __enter__(self) -> Stream:
        for region in self.lab.env.all_regions:
            self.seen[region] = []
            for _ in range(self.clients):
                t = threading.Thread(target=self._client, args=(region,), daemon=True)
                t.start()
                self._threads.append(t)
        waits.until(lambda: all(self.seen.values()), timeout=10, what="first responses",
                    resource="lab load balancers", fix="check the lab is up")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)

    def report(self, procedure: str) -> dict[str, Any]:
        out: dict[str, Any] = {"procedure": procedure, "regions": {}}
        for region, seen in self.seen.items():
            changes = [v for n, (_, v) in enumerate(seen) if n == 0 or seen[n - 1][1] != v]
            out["regions"][region] = {"sent": len(seen),
                                      "failed": sum(1 for s, _ in seen if s != 200),
                                      "versions": changes}
        out["sent"] = sum(r["sent"] for r in out["regions"].values())
        out["failed"] = sum(r["failed"] for r in out["regions"].values())
        if os.environ.get("DEPLOY_TRAFFIC_REPORT"):
            with open(os.environ["DEPLOY_TRAFFIC_REPORT"], "a") as f:
                f.write(json.dumps(out) + "\n")
        return out

    def assert_one_change(self, procedure: str, old: str, new: str) -> dict[str, Any]:
        report = self.report(procedure)
        for region, r in report["regions"].items():
            assert r["failed"] == 0, (region, [x for x in self.seen[region] if x[0] != 200][:5])
            assert r["versions"] == [old, new], (region, r["versions"])
        return report


@dataclass
class Membership:
    """Every region's target group watched during a deploy: whatever live host is, at
    any look, not registered and healthy is noted (a graceful reload must never take one
    out)."""

    lab: Any
    interval: float = 0.05  # pacing of the looks, not a synchronisation
    left: list[tuple[str, str, str | None]] = field(default_factory=list)
    looks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _watch(self) -> None:
        from deploylib import aws
        from tests.lab.checks import target_group

        clients = self.lab.clients()
        groups = {r: target_group(self.lab, r) for r in self.lab.env.all_regions}
        hosts = {r: set(aws.elb.healthy(clients.elbv2(r), r, g)) for r, g in groups.items()}
        while not self._stop.is_set():
            for region, group in groups.items():
                states = aws.elb.target_states(clients.elbv2(region), region, group)
                self.left += [(region, i, states.get(i)) for i in sorted(hosts[region])
                              if states.get(i) != "healthy"]
            self.looks += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> Membership:
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        waits.until(lambda: self.looks > 0, timeout=10, what="a first look",
                    resource="lab target groups", fix="check the lab is up")
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
