"""Fan-out: run one function per item on threads; partial failure is data, not a crash.

`each` returns `Results`, a dict of each item's result or exception (as Fabric's
GroupResult): `.succeeded` and `.failed` split it, `.raise_for` turns the failures into
one StepFailed naming every item that failed and the first cause.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from deploylib.errors import StepFailed

T = TypeVar("T")
K = TypeVar("K")


class Results(dict[str, Any], Generic[T]):
    """item key -> its result (T) or the exception it raised."""

    @property
    def succeeded(self) -> dict[str, T]:
        return {k: v for k, v in self.items() if not isinstance(v, Exception)}

    @property
    def failed(self) -> dict[str, Exception]:
        return {k: v for k, v in self.items() if isinstance(v, Exception)}

    def raise_for(self, stage: str, *, fix: str | None = None, kind: str = "host") -> None:
        """Raise StepFailed for the stage when any item failed."""
        if self.failed:
            raise StepFailed(stage, self.failed, fix=fix, kind=kind)


def each(items: Iterable[K], fn: Callable[[K], T], *, key: Callable[[K], str],
         workers: int = 32) -> Results[T]:
    """Run fn for every item in parallel; each item's result or exception, as data."""
    items = list(items)
    out: Results[T] = Results()
    if not items:
        return out
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        futures = {key(item): pool.submit(fn, item) for item in items}
        for name, fut in futures.items():
            try:
                out[name] = fut.result()
            except Exception as exc:  # noqa: BLE001 - partial failure is data here
                out[name] = exc
    return out
