"""The app's health endpoint over HTTP: which release a host's app reports serving.

Used by the health and smoke steps, `invoke status`, the tests and the benchmarks. Hosts
are addressed directly (private or public address), never through a proxy taken from
the environment.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from deploylib import waits


def probe(address: str, port: int, path: str, timeout: float = 2.0) -> dict[str, Any]:
    """The health endpoint's JSON answer (raises when it does not answer so)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(f"http://{address}:{port}{path}", timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def serving_version(address: str, port: int, path: str) -> str | None:
    """The release a host's app reports, or None when it does not answer."""
    try:
        return str(probe(address, port, path).get("version"))
    except (OSError, ValueError, urllib.error.URLError):
        return None


def wait_serving(address: str, port: int, path: str, version: str, *, timeout: float,
                 resource: str) -> None:
    """Wait until the app at address answers its health path with `version`."""
    seen: list[str | None] = [None]

    def check() -> bool:
        seen[0] = serving_version(address, port, path)
        return seen[0] == version

    waits.until(check, timeout=timeout, what=f"the app to report release {version}",
                resource=resource, fix=lambda: f"it reports {seen[0] or 'nothing'}; check "
                "the service's log on the host")
