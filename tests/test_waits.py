"""Polling with backoff and a deadline, on a virtual clock."""

from __future__ import annotations

import pytest

from deploylib import waits
from deploylib.errors import WaitTimeout


class Clock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_returns_the_first_truthy_answer():
    answers = iter([None, False, "ready"])
    clock = Clock()
    assert waits.until(lambda: next(answers), timeout=10, what="x", resource="r", fix="f",
                       clock=clock, sleep=clock.sleep) == "ready"
    assert clock.sleeps == [0.1, 0.15000000000000002]


def test_backs_off_to_a_ceiling_and_times_out_naming_resource_and_fix():
    clock = Clock()
    with pytest.raises(WaitTimeout) as info:
        waits.until(lambda: None, timeout=20, what="the image to be available",
                    resource="ami-123 in us-east-1", fix="raise timeouts.image",
                    clock=clock, sleep=clock.sleep)
    assert max(clock.sleeps) == 3.0
    assert clock.now == pytest.approx(20)
    line = info.value.line()
    assert line.startswith("ami-123 in us-east-1: timed out after 20s waiting for the image")
    assert line.endswith("Fix: raise timeouts.image")


def test_a_check_may_give_up_early():
    def check():
        raise RuntimeError("never going to happen")

    with pytest.raises(RuntimeError):
        waits.until(check, timeout=10, what="x", resource="r", fix="f")


def test_the_fix_can_say_what_was_last_seen():
    seen = []

    def check():
        seen.append(len(seen))
        return None

    clock = Clock()
    with pytest.raises(WaitTimeout) as info:
        waits.until(check, timeout=1, what="x", resource="r",
                    fix=lambda: f"last saw {seen[-1]}", clock=clock, sleep=clock.sleep)
    assert info.value.line().endswith(f"Fix: last saw {seen[-1]}")


def test_the_longest_pause_follows_the_environments_poll_setting():
    clock = Clock()
    waits.pace(0.2)
    try:
        with pytest.raises(WaitTimeout):
            waits.until(lambda: None, timeout=3, what="x", resource="r", fix="f",
                        clock=clock, sleep=clock.sleep)
    finally:
        waits.pace(3.0)
    assert max(clock.sleeps) == pytest.approx(0.2)
    assert len(clock.sleeps) > 10  # looked again every 0.2 s, not every 3 s


def test_what_runs_between_looks_can_end_a_wait():
    """The run's lease ends every wait of the process once its lock is gone."""
    from deploylib.errors import LockHeld

    looks = []

    def gone() -> None:
        if len(looks) >= 2:
            raise LockHeld("the lock was broken", resource="lock", fix="resume")

    waits.between_looks(gone)
    try:
        with pytest.raises(LockHeld, match="broken"):
            waits.until(lambda: looks.append(1), timeout=60, what="x", resource="r", fix="",
                        sleep=lambda _: None)
    finally:
        waits.between_looks(None)
    assert len(looks) == 2

