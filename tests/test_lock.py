"""The deploy lock against moto's DynamoDB: one holder, renewals, expiry, release, break."""

from __future__ import annotations

import secrets

import pytest

from deploylib import lock, waits
from deploylib.errors import CloudError, LockHeld


@pytest.fixture
def table(aws_clients):
    name = f"locks-{secrets.token_hex(3)}"
    aws_clients.dynamodb().create_table(
        TableName=name, BillingMode="PAY_PER_REQUEST",
        AttributeDefinitions=[{"AttributeName": "env", "AttributeType": "S"}],
        KeySchema=[{"AttributeName": "env", "KeyType": "HASH"}])
    return aws_clients.dynamodb(), name


class Clock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_second_run_is_refused_at_once_naming_the_holder(table):
    ddb, name = table
    lock.acquire(ddb, name, "prod", "20261127T120000-aaaaaa", ttl=600)
    with pytest.raises(LockHeld) as err:
        lock.acquire(ddb, name, "prod", "20261127T120001-bbbbbb", ttl=600)
    line = err.value.line()
    assert "20261127T120000-aaaaaa" in line and "lock.break --env prod" in line
    assert err.value.exit_code == 3
    # other environments are independent
    lock.acquire(ddb, name, "staging", "20261127T120001-bbbbbb", ttl=600)


def test_the_holder_renews_and_releases_only_its_own(table):
    ddb, name = table
    clock = Clock()
    first = lock.acquire(ddb, name, "prod", "run-a", ttl=600, clock=clock)
    clock.now += 300
    renewed = lock.acquire(ddb, name, "prod", "run-a", ttl=600, clock=clock)
    assert renewed["expires_at"] == first["expires_at"] + 300
    assert lock.release(ddb, name, "prod", "run-b") is False
    assert lock.read(ddb, name, "prod")["run_id"] == "run-a"
    assert lock.release(ddb, name, "prod", "run-a") is True
    assert lock.read(ddb, name, "prod") is None
    lock.acquire(ddb, name, "prod", "run-b", ttl=600)


def test_a_stale_lock_is_taken_over(table):
    ddb, name = table
    clock = Clock()
    lock.acquire(ddb, name, "prod", "crashed", ttl=60, clock=clock)
    clock.now += 30
    with pytest.raises(LockHeld):
        lock.acquire(ddb, name, "prod", "next", ttl=60, clock=clock)
    clock.now += 31
    # past its expiry, but within the clocks' skew: its holder may still be at work
    assert lock.read(ddb, name, "prod", clock=clock)["stale"] is False
    with pytest.raises(LockHeld):
        lock.acquire(ddb, name, "prod", "next", ttl=60, clock=clock)
    clock.now += lock.SKEW
    assert lock.read(ddb, name, "prod", clock=clock)["stale"] is True
    taken = lock.acquire(ddb, name, "prod", "next", ttl=60, clock=clock)
    assert taken["run_id"] == "next" and taken["stale"] is False


def test_break_removes_whoever_holds_it(table):
    ddb, name = table
    lock.acquire(ddb, name, "prod", "run-a", ttl=600)
    assert lock.break_lock(ddb, name, "prod")["run_id"] == "run-a"
    assert lock.break_lock(ddb, name, "prod") is None


def test_a_break_never_removes_a_lock_that_changed_hands_meanwhile(table):
    """The operator saw run-a's lock; run-b took it (run-a's ended) before the delete:
    the break is refused, run-b keeps it."""
    ddb, name = table
    lock.acquire(ddb, name, "prod", "run-a", ttl=600)
    seen = lock.read(ddb, name, "prod")
    lock.release(ddb, name, "prod", "run-a")
    lock.acquire(ddb, name, "prod", "run-b", ttl=600)
    with pytest.raises(LockHeld, match="changed hands"):
        lock.break_lock(ddb, name, "prod", seen)
    assert lock.read(ddb, name, "prod")["run_id"] == "run-b"


def test_a_heartbeat_keeps_the_lock_through_a_stage_that_renews_nothing(table):
    """A stage in a long wait (a copy, hours) outlives lock_ttl; the lease's heartbeat
    renews it meanwhile, so nobody can take it."""
    ddb, name = table
    with lock.held(ddb, name, "prod", "run-a", ttl=0.6, ended=lambda: True,
                   say=print):
        first = lock.read(ddb, name, "prod")["expires_at"]
        waits.until(lambda: lock.read(ddb, name, "prod")["expires_at"] > first + 0.1,
                    timeout=10, what="a heartbeat", resource="lock", fix="")
    assert lock.read(ddb, name, "prod") is None  # and it stops with the run


def test_a_heartbeat_that_finds_the_lock_taken_stops_the_runs_next_stage(table):
    ddb, name = table
    said: list[str] = []
    with lock.held(ddb, name, "prod", "run-a", ttl=0.6, ended=lambda: False,
                   say=said.append) as lease:
        lock.break_lock(ddb, name, "prod")
        lock.acquire(ddb, name, "prod", "run-b", ttl=600)
        waits.until(lambda: lease.lost, timeout=10, what="the heartbeat", resource="lock",
                    fix="")
        with pytest.raises(LockHeld, match="locked by run run-b"):
            lease.renew()  # what the next stage does first
    assert any("no longer this run's" in line for line in said)
    assert lock.read(ddb, name, "prod")["run_id"] == "run-b"


def test_a_missing_table_says_how_to_create_it(aws_clients):
    with pytest.raises(CloudError) as err:
        lock.acquire(aws_clients.dynamodb(), "no-such-table", "prod", "r", ttl=60)
    assert "create-table --table-name no-such-table" in err.value.line()


def test_held_around_a_run_releases_only_once_the_run_has_ended(table):
    ddb, name = table
    said: list[str] = []
    ended = {"yes": False}
    with lock.held(ddb, name, "prod", "run-a", ttl=600, ended=lambda: ended["yes"],
                   say=said.append) as lease:
        lease.renew()
    assert lock.read(ddb, name, "prod")["run_id"] == "run-a"  # its next stage holds it
    with pytest.raises(RuntimeError):
        with lock.held(ddb, name, "prod", "run-a", ttl=600, ended=lambda: ended["yes"],
                       say=said.append):
            ended["yes"] = True
            raise RuntimeError("the run failed")
    assert lock.read(ddb, name, "prod") is None and said == ["  lock on prod released"]


def test_held_refuses_at_once_when_another_run_has_it(table):
    ddb, name = table
    lock.acquire(ddb, name, "prod", "run-a", ttl=600)
    with pytest.raises(LockHeld), lock.held(ddb, name, "prod", "run-b", ttl=600,
                                             ended=lambda: True, say=print):
        raise AssertionError("never entered")
    assert lock.read(ddb, name, "prod")["run_id"] == "run-a"


def test_a_broken_lock_stops_the_run_and_is_not_taken_back(table):
    """`invoke lock.break` while the run works: its heartbeat does not take the lock back
    (it could be another run's next); the run's next stage stops, and so does its next
    Jenkins stage in a new process. A resume takes it again, deliberately."""
    ddb, name = table
    said: list[str] = []
    with lock.held(ddb, name, "prod", "run-a", ttl=0.6, ended=lambda: False,
                   say=said.append) as lease:
        lock.break_lock(ddb, name, "prod")
        waits.until(lambda: lease.lost, timeout=10, what="the heartbeat", resource="lock",
                    fix="")
        with pytest.raises(LockHeld, match="was broken"):
            lease.renew()
    assert lock.read(ddb, name, "prod") is None
    with pytest.raises(LockHeld, match="resume --run run-a"):
        with lock.held(ddb, name, "prod", "run-a", ttl=600, ended=lambda: False,
                       say=said.append, take=False):
            raise AssertionError("never entered")
    with lock.held(ddb, name, "prod", "run-a", ttl=600, ended=lambda: True, say=said.append):
        assert lock.read(ddb, name, "prod")["run_id"] == "run-a"


def test_every_take_has_a_new_token_and_a_release_keeps_the_counter(table):
    ddb, name = table
    first = lock.acquire(ddb, name, "prod", "run-a", ttl=600)["fence"]
    again = lock.acquire(ddb, name, "prod", "run-a", ttl=600)["fence"]  # a resume
    assert again == first + 1
    assert lock.release(ddb, name, "prod", "run-a", first) is False  # not that take's
    assert lock.release(ddb, name, "prod", "run-a", again) is True
    assert lock.read(ddb, name, "prod") is None
    assert lock.acquire(ddb, name, "prod", "run-b", ttl=600)["fence"] == again + 1


def test_a_renewal_under_an_older_token_is_refused_even_for_the_same_run(table):
    """A process of the run left behind (its resume took the lock again elsewhere) stops
    at its next renewal: the token is the take's, not the run's."""
    ddb, name = table
    old = lock.acquire(ddb, name, "prod", "run-a", ttl=600)["fence"]
    lock.acquire(ddb, name, "prod", "run-a", ttl=600)
    with pytest.raises(LockHeld, match="took its lock on prod again in another process"):
        lock.extend(ddb, name, "prod", "run-a", ttl=600, fence=old)


def test_a_break_names_the_take_it_saw(table):
    """What the operator was shown is what is broken: a lock the same run took again
    since (a resume) is left alone."""
    ddb, name = table
    lock.acquire(ddb, name, "prod", "run-a", ttl=600)
    seen = lock.read(ddb, name, "prod")
    lock.acquire(ddb, name, "prod", "run-a", ttl=600)
    with pytest.raises(LockHeld, match="changed hands"):
        lock.break_lock(ddb, name, "prod", seen)
    assert lock.read(ddb, name, "prod")["fence"] == seen["fence"] + 1


def test_a_broken_lock_stops_the_runs_next_write_before_it_reaches_aws(table, aws_clients):
    """The lease's guard runs before every call that changes something: once the lock is
    broken, the write is not sent (nothing is made), a read still is."""
    ddb, name = table
    aws_clients.ssm().put_parameter(Name="/fence/probe", Value="before", Type="String",
                                    Overwrite=True)
    with lock.held(ddb, name, "prod", "run-a", ttl=600, ended=lambda: True,
                   say=print) as lease:
        aws_clients.guard = lease.renew
        try:
            aws_clients.ssm().put_parameter(Name="/fence/probe", Value="held", Type="String",
                                            Overwrite=True)
            lock.break_lock(ddb, name, "prod")
            with pytest.raises(LockHeld, match="was broken"):
                aws_clients.ssm().put_parameter(Name="/fence/probe", Value="after",
                                                Type="String", Overwrite=True)
            value = aws_clients.ssm().get_parameter(Name="/fence/probe")["Parameter"]["Value"]
        finally:
            aws_clients.guard = None
    assert value == "held"
    assert lock.read(ddb, name, "prod") is None  # a lost lease releases nothing
