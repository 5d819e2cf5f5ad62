"""Fan-out: run one function per item on threads; partial failure is data, not a crash."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")
K = TypeVar("K")


def each(items: Iterable[K], fn: Callable[[K], T], *, key: Callable[[K], str],
         workers: int = 32) -> dict[str, T | Exception]:
    """Run fn for every item in parallel; each item's result or exception, as data."""
    items = list(items)
    if not items:
        return {}
    out: dict[str, Any] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        futures = {key(item): pool.submit(fn, item) for item in items}
        for name, fut in futures.items():
            try:
                out[name] = fut.result()
            except Exception as exc:  # noqa: BLE001 - partial failure is data here
                out[name] = exc
    return out
