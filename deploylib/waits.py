"""Polling with a short backoff and a deadline.

botocore's waiters poll every 15 s, which adds up to 15 s of lag to every wait; these
start at a fraction of a second and back off to a few seconds, and always end in a
WaitTimeout that names the resource and what to check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from deploylib.errors import WaitTimeout

T = TypeVar("T")

# The longest pause between two looks. Set once per run from the environment's
# `timeouts.poll` (runs.open_context): one process serves one environment.
_longest = 3.0


# Called between two looks of every wait while set (runner.holding: the run's lease, which
# raises once the run's lock was broken or taken): a wait of hours does not outlive it.
_between: Callable[[], None] | None = None


def pace(longest: float) -> None:
    """Set the longest pause between two looks, for every wait of this process."""
    global _longest
    _longest = longest


def between_looks(fn: Callable[[], None] | None) -> None:
    """Run `fn` between two looks of every wait of this process (None: nothing); what it
    raises ends the wait."""
    global _between
    _between = fn


def until(
    check: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    resource: str,
    fix: str | Callable[[], str],
    first: float = 0.1,
    longest: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `check` until it returns something other than None/False, or time runs out.

    `check` may raise to give up early (a state that can never become the wanted one).
    `fix` may be a function, to say what was last seen when the deadline passes.
    """
    deadline = clock() + timeout
    longest = _longest if longest is None else longest
    delay = min(first, longest)
    last: T | None = None
    while True:
        last = check()
        if last is not None and last is not False:
            return last
        if _between is not None:
            _between()
        remaining = deadline - clock()
        if remaining <= 0:
            raise WaitTimeout(f"timed out after {timeout:g}s waiting for {what}",
                              resource=resource, fix=fix() if callable(fix) else fix)
        sleep(min(delay, remaining))
        delay = min(delay * 1.5, longest)
