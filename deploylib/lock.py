"""The deploy lock, in DynamoDB: one item per environment, written only when it is free.

    env (key) | run_id | owner | acquired_at | expires_at | fence

Taking the lock is one conditional UpdateItem: it succeeds when the item holds no run,
when its run has expired (its holder crashed and stopped renewing), or when it is this
run's own (a resume, or the start of a run's stages). Every take adds one to `fence`, the
item's counter, which is never reset (a release only clears who holds it): the token
tells every holder apart, the same run in a later process included. A run holds it as a
`Lease`, in a `with` block around its stages: taken on entry, renewed by every stage and
by a heartbeat every third of `lock_ttl` while the process works (a two-hour copy wait
outlives any ttl), so a run never expires while it is alive, and released on the way
out once the run has ended (done, or failed and cleaned up) — whatever way it leaves.

Each renewal is conditional on the run *and its token*, and so is every write the run
makes to AWS (the lease's renewal, run by the clients before each call that changes
something): a lock broken, or taken by anyone — another run, or this run's own resume —
stops the holder it was taken from at its next write. Releasing and breaking are
conditional the same way. A second deploy to the same environment therefore fails at
once, naming the holder, and a crashed run blocks others for at most `lock_ttl` seconds
(plus SKEW: an item counts as expired only that long after its expiry, so a machine whose
clock runs ahead cannot take a lock still held).
"""

from __future__ import annotations

import getpass
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from deploylib.aws import calling
from deploylib.errors import CloudError, LockHeld

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_dynamodb import DynamoDBClient

_FREE_OR_OURS = "attribute_not_exists(run_id) OR expires_at < :stale OR run_id = :run"
_HOLDER = ("run_id", "owner", "acquired_at", "expires_at")
# Clocks of the machines that take the lock may differ by this much (NTP keeps them far
# closer; a laptop after sleep may not).
SKEW = 60.0
_READ_FIX = "check the tool may use the lock table (dynamodb:GetItem, UpdateItem)"


def owner() -> str:
    """Who holds it: user@host, and the Jenkins build when running in one."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    who = f"{user}@{socket.gethostname()}"
    build = os.environ.get("BUILD_URL")
    return f"{who} ({build})" if build else who


def _missing_table(exc: CloudError, table: str) -> CloudError:
    return CloudError(
        f"the lock table does not exist ({exc.code})",
        resource=f"DynamoDB table {table}",
        fix=f"create it once: aws dynamodb create-table --table-name {table} "
        "--attribute-definitions AttributeName=env,AttributeType=S "
        "--key-schema AttributeName=env,KeyType=HASH --billing-mode PAY_PER_REQUEST")


def _unless_refused(exc: CloudError, table: str) -> None:
    """Raise what a conditional write met, unless it is the condition's refusal (the
    lock is someone else's, or not this run's): that one the caller explains."""
    if exc.code == "ResourceNotFoundException":
        raise _missing_table(exc, table) from None
    if exc.code != "ConditionalCheckFailedException":
        raise exc


def _describe(item: dict[str, Any], now: float) -> dict[str, Any]:
    out = {k: next(iter(v.values())) for k, v in item.items()}
    for k in ("acquired_at", "expires_at"):
        out[k] = float(out[k])
    out["fence"] = int(out.get("fence", 0))
    out["stale"] = out["expires_at"] < now - SKEW
    return out


def read(ddb: DynamoDBClient, table: str, env: str, *, clock: Callable[[], float] = time.time
         ) -> dict[str, Any] | None:
    """The lock's holder (with `stale` when it stopped renewing), or None when free."""
    try:
        with calling(f"lock {table}/{env}", _READ_FIX):
            item = ddb.get_item(TableName=table, Key={"env": {"S": env}},
                                ConsistentRead=True).get("Item")
    except CloudError as exc:
        if exc.code == "ResourceNotFoundException":
            raise _missing_table(exc, table) from None
        raise
    # A free lock keeps only its counter.
    return _describe(item, clock()) if item and "run_id" in item else None


def _holder_is(run_id: str, fence: int | None) -> tuple[str, dict[str, Any]]:
    """The condition that the lock is still `run_id`'s (and its `fence`'s, when given)."""
    values: dict[str, Any] = {":run": {"S": run_id}}
    if fence is None:
        return "run_id = :run", values
    values[":fence"] = {"N": str(fence)}
    return "run_id = :run AND fence = :fence", values


def acquire(ddb: DynamoDBClient, table: str, env: str, run_id: str, *, ttl: float,
            clock: Callable[[], float] = time.time) -> dict[str, Any]:
    """Take the environment's lock for `run_id` (free, expired, or the run's own), with a
    new fencing token (`fence` in what it returns), or raise LockHeld at once."""
    now = clock()
    try:
        with calling(f"lock {table}/{env}", _READ_FIX):
            done = ddb.update_item(
                TableName=table, Key={"env": {"S": env}},
                UpdateExpression="SET run_id = :run, #owner = :owner, acquired_at = :now, "
                "expires_at = :exp ADD fence :one",
                ConditionExpression=_FREE_OR_OURS,
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":run": {"S": run_id}, ":owner": {"S": owner()},
                                           ":now": {"N": f"{now:.3f}"},
                                           ":exp": {"N": f"{now + ttl:.3f}"},
                                           ":stale": {"N": f"{now - SKEW:.3f}"},
                                           ":one": {"N": "1"}},
                ReturnValues="ALL_NEW")
    except CloudError as exc:
        _unless_refused(exc, table)
        held = read(ddb, table, env, clock=clock) or {}
        left = max(0, int(held.get("expires_at", now) - now))
        raise LockHeld(
            f"environment {env} is locked by run {held.get('run_id', '?')} of "
            f"{held.get('owner', '?')} (expires in {left}s)",
            resource=f"lock {table}/{env}",
            fix="wait for that run to finish, or if it is dead: "
            f"`invoke lock.break --env {env}`") from None
    return _describe(done["Attributes"], now)


def extend(ddb: DynamoDBClient, table: str, env: str, run_id: str, *, ttl: float,
           fence: int | None = None, clock: Callable[[], float] = time.time
           ) -> dict[str, Any]:
    """Renew a lock this run holds — only if it still does (with `fence`: the very take
    that token came from): a lock broken (`invoke lock.break`) or taken since is not
    taken back, and the run must stop."""
    now = clock()
    condition, values = _holder_is(run_id, fence)
    try:
        with calling(f"lock {table}/{env}", _READ_FIX):
            done = ddb.update_item(TableName=table, Key={"env": {"S": env}},
                                   UpdateExpression="SET expires_at = :exp",
                                   ConditionExpression=condition,
                                   ExpressionAttributeValues={
                                       **values, ":exp": {"N": f"{now + ttl:.3f}"}},
                                   ReturnValues="ALL_NEW")
    except CloudError as exc:
        _unless_refused(exc, table)
        held = read(ddb, table, env, clock=clock)
        if held and held["run_id"] != run_id:
            raise LockHeld(f"environment {env} is locked by run {held['run_id']} of "
                           f"{held.get('owner', '?')}: this run's lock was taken",
                           resource=f"lock {table}/{env}",
                           fix="let that run finish; then `invoke cleanup --run "
                           f"{run_id}`") from None
        if held:
            raise LockHeld(f"run {run_id} took its lock on {env} again in another process "
                           f"({held.get('owner', '?')}): this one no longer holds it",
                           resource=f"lock {table}/{env}",
                           fix="let that process go on; this one stops here") from None
        raise LockHeld(f"this run's lock on {env} was broken: it no longer holds it",
                       resource=f"lock {table}/{env}",
                       fix=f"if the run should go on, `invoke resume --run {run_id}` takes "
                       "the lock again; else `invoke cleanup --run " + run_id + "`") from None
    return _describe(done["Attributes"], now)


def _clear(ddb: DynamoDBClient, table: str, env: str, condition: str,
           values: dict[str, Any]) -> None:
    """Free the lock (its holder's fields removed, its counter kept), under `condition`."""
    with calling(f"lock {table}/{env}", _READ_FIX):
        ddb.update_item(TableName=table, Key={"env": {"S": env}},
                        UpdateExpression="REMOVE " + ", ".join(f"#{k}" for k in _HOLDER),
                        ConditionExpression=condition,
                        ExpressionAttributeNames={f"#{k}": k for k in _HOLDER},
                        ExpressionAttributeValues=values)


def release(ddb: DynamoDBClient, table: str, env: str, run_id: str,
            fence: int | None = None) -> bool:
    """Free the lock if this run (with `fence`: this take of it) still holds it; True
    when it did."""
    try:
        _clear(ddb, table, env, *_holder_is(run_id, fence))
        return True
    except CloudError as exc:
        if exc.code in ("ConditionalCheckFailedException", "ResourceNotFoundException"):
            return False
        raise


def break_lock(ddb: DynamoDBClient, table: str, env: str, seen: dict[str, Any] | None = None
               ) -> dict[str, Any] | None:
    """Free the lock of the run that holds it (an operator's decision: `seen`, what they
    were shown, or what is read now): what it was, or None. Conditional on that holder
    and its token: a lock taken meanwhile (by another run, or the same run again) is not
    broken."""
    held = seen if seen is not None else read(ddb, table, env)
    if held:
        try:
            _clear(ddb, table, env, *_holder_is(held["run_id"], held.get("fence")))
        except CloudError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise
            raise LockHeld(f"the lock on {env} changed hands while it was being broken",
                           resource=f"lock {table}/{env}",
                           fix="look again (`invoke lock.status`) before breaking it") from None
    return held


class Lease:
    """A run's hold on its environment's lock, for as long as it works: the token of the
    take it came from (`fence`), renewed by a heartbeat, asserted before every write."""

    def __init__(self, ddb: DynamoDBClient, table: str, env: str, run_id: str, *, ttl: float,
                 fence: int | None = None):
        self.ddb, self.table, self.env, self.run_id, self.ttl = ddb, table, env, run_id, ttl
        self.fence = fence
        self.lost: LockHeld | None = None  # a renewal (heartbeat, stage or write) found it gone
        self._stop = threading.Event()

    def take(self) -> int:
        """Take it (free, expired, or this run's already: a start, a resume), with a new
        token."""
        self.fence = acquire(self.ddb, self.table, self.env, self.run_id,
                             ttl=self.ttl)["fence"]
        self.lost = None
        return self.fence

    def renew(self) -> None:
        """Hold it longer, as long as it is still this take's: a run whose lock was
        broken, or taken since, must stop (and stays stopped: it is never taken back).
        Every stage, the heartbeat and every write of the run (AwsClients.guard) renew
        it: a write is made only once this has passed."""
        self.check()
        try:
            extend(self.ddb, self.table, self.env, self.run_id, ttl=self.ttl,
                   fence=self.fence)
        except LockHeld as exc:
            self.lost = exc
            raise

    def check(self) -> None:
        """LockHeld if a renewal found the lock gone; asks nothing of
        AWS (a wait runs it between its looks)."""
        if self.lost is not None:
            raise self.lost

    def release(self) -> bool:
        return release(self.ddb, self.table, self.env, self.run_id, self.fence)

    def beat(self, say: Callable[[str], None]) -> threading.Thread:
        """Renew every third of the ttl until stopped (in its own thread: a stage in a
        long wait renews nothing itself). A renewal refused because the lock was broken
        or taken since is kept, and the run's next write or stage stops on it; one the
        network lost is said and tried again at the next beat."""
        def loop() -> None:
            while not self._stop.wait(self.ttl / 3):
                try:
                    self.renew()
                except LockHeld as exc:
                    say(f"x the lock on {self.env} is no longer this run's: {exc.line()}")
                    return
                except CloudError as exc:
                    say(f"  could not renew the lock on {self.env} ({exc.line()}); "
                        "trying again")
        thread = threading.Thread(target=loop, name=f"lock-{self.env}", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def held(ddb: DynamoDBClient, table: str, env: str, run_id: str, *, ttl: float,
         ended: Callable[[], bool], say: Callable[[str], None],
         take: bool = True, fence: int | None = None) -> Iterator[Lease]:
    """Hold the lock around a run's stages: taken on entry with a new token (or, with
    `take` false — the next Jenkins stage of a run going on — renewed under the token
    `fence` the run has, only while still that take's); released on the way out when
    `ended()` says the run is over, kept for the run's next process when it is not. A
    failed release is reported, not raised over what the run did: the lock expires after
    its ttl anyway."""
    lease = Lease(ddb, table, env, run_id, ttl=ttl, fence=fence)
    if take:
        lease.take()
    else:
        lease.renew()
    heartbeat = lease.beat(say)
    try:
        yield lease
    finally:
        lease.stop()
        heartbeat.join()
        if ended() and lease.lost is None:
            try:
                if lease.release():
                    say(f"  lock on {env} released")
            except CloudError as exc:
                say(f"x could not release the lock on {env}: {exc.line()}")
