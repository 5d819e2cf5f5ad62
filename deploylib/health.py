"""The app's health endpoint over HTTP, and which release a host serves.

Two ways, as the environment's `health_check` says: the app reports its release in its
health JSON (`version`), or its health endpoint only answers 2xx (`status`, as most apps
have it) and the release is proven on the host: the run's SSH connection asks which
release the service runs from (`on_host`, given by the caller).

Used by the health and smoke steps, `invoke status`, the tests and the benchmarks. Hosts
are addressed directly (private or public address), never through a proxy taken from
the environment.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from deploylib import waits

if TYPE_CHECKING:
    from deploylib.config import Environment


def _get(address: str, port: int, path: str, timeout: float) -> http.client.HTTPResponse:
    # Hosts are addressed directly, never through a proxy taken from the environment.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    return opener.open(f"http://{address}:{port}{path}", timeout=timeout)


# The most of a health answer read: a health endpoint says a few fields; a host that
# answers with more is not read further (nor held in memory) but refused.
MAX_BODY = 64 * 1024


def probe(address: str, port: int, path: str, timeout: float = 2.0) -> dict[str, Any]:
    """The health endpoint's JSON answer (raises when it does not answer so)."""
    with _get(address, port, path, timeout) as resp:
        body = resp.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise ValueError(f"the health answer is larger than {MAX_BODY // 1024} KB")
    answer = json.loads(body.decode())
    if not isinstance(answer, dict):
        raise ValueError("the health answer is not a JSON object")
    return answer


def serving_version(address: str, port: int, path: str) -> str | None:
    """The release a host's app reports, or None when it does not answer."""
    try:
        return str(probe(address, port, path).get("version"))
    except (OSError, ValueError, urllib.error.URLError):
        return None


def answers(address: str, port: int, path: str, timeout: float = 2.0) -> bool:
    """The health endpoint answers 2xx."""
    try:
        with _get(address, port, path, timeout) as resp:
            return 200 <= resp.status < 300
    except (OSError, ValueError, urllib.error.URLError):
        return False


def serving(env: Environment, address: str, on_host: Callable[[], str | None] | None) -> str | None:
    """The release a host serves, or None when its app is down or says nothing.
    `on_host`: the release the host's service runs from (None: the host cannot be asked,
    and a status-only app's release is then unknown)."""
    if env.health_check == "version":
        return serving_version(address, env.app_port, env.health_path)
    if not answers(address, env.app_port, env.health_path):
        return None
    return on_host() if on_host is not None else None


def wait_serving(env: Environment, address: str, version: str, *, timeout: float, resource: str,
                 on_host: Callable[[], str | None] | None) -> None:
    """Wait until the host serves `version` (as `serving` proves it)."""
    seen: list[str | None] = [None]

    def check() -> bool:
        seen[0] = serving(env, address, on_host)
        return seen[0] == version

    waits.until(check, timeout=timeout, what=f"the app to report release {version}",
                resource=resource, fix=lambda: f"it reports {seen[0] or 'nothing'}; check "
                "the service's log on the host")
