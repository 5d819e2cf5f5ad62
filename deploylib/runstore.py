"""A run's state in the environment's store, so any machine can resume it.

Every save of a run (deploylib.state) is written to the artifact bucket as well, at
`runs/ENV/RUN.json`, by a conditional PUT over the version this process last wrote or
read (If-Match on its ETag; the first write only where nothing is yet). So the bucket
always holds the newest state of every run, and only one process at a time can extend
it: a controller that was stopped and comes back after the run was resumed elsewhere
is refused at its next save, whatever its lock heartbeat has or has not noticed yet.
The local state directory stays a cache: a process working on a run first reads the
store's copy, and takes it when it differs from its own.

The writes do not go through the run's guarded clients (every other write of the run
first renews the lock): the condition on the object is their own fence.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from deploylib import aws
from deploylib.config import Environment
from deploylib.errors import LockHeld
from deploylib.state import RunState

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_FIX = "check the tool may read and write runs/ENV/* in artifact_bucket (`invoke policy`)"


def key(env_name: str, run_id: str) -> str:
    return f"runs/{env_name}/{run_id}.json"


class Mirror:
    """Writes a run's saves to the store, each only over the one before it."""

    def __init__(self, s3: S3Client, bucket: str, name: str, etag: str | None):
        self.s3, self.bucket, self.name, self.etag = s3, bucket, name, etag
        # The text of a write whose answer never came (an interrupt between the PUT
        # landing and its ETag arriving): if the store holds exactly that, the write
        # that overtook this process's ETag was its own.
        self.unanswered: str | None = None

    def __call__(self, text: str) -> None:
        interrupted, self.unanswered = self.unanswered, text
        try:
            self.etag = self._put(text)
        except aws.s3.Superseded:
            found = aws.s3.get_text(self.s3, self.bucket, self.name, fix=_FIX)
            if interrupted is None or found is None or found[0] != interrupted:
                raise self._overtaken() from None
            self.etag = found[1]
            try:
                self.etag = self._put(text)
            except aws.s3.Superseded:
                raise self._overtaken() from None
        self.unanswered = None

    def _put(self, text: str) -> str:
        return aws.s3.put_text(self.s3, self.bucket, self.name, text, after=self.etag,
                               fix=_FIX)

    def _overtaken(self) -> LockHeld:
        return LockHeld("another process has saved this run since this one last did (it "
                        "was resumed elsewhere): this process stops without writing",
                        resource=f"s3://{self.bucket}/{self.name}",
                        fix="let the run go on where it was resumed (`invoke status`, "
                        "the run's report)")


def attach(s3: S3Client, env: Environment, state: RunState) -> None:
    """Mirror a run to the store from now on: take the store's copy when it is not what
    this machine has, write this one when the store has none."""
    name = key(env.name, state.run_id)
    found = aws.s3.get_text(s3, env.artifact_bucket, name, fix=_FIX)
    if found is not None:
        text, etag = found
        if text != state.text():
            state.take_from(RunState.parse(text, state.path, state.run_id))
            state.write_local(text)
        state.mirror = Mirror(s3, env.artifact_bucket, name, etag)
        return
    state.mirror = Mirror(s3, env.artifact_bucket, name, None)
    state.save()


def claim(s3: S3Client, env: Environment, state: RunState) -> None:
    """Make this machine's state of the run the store's, over whatever copy is there: a
    handoff adopted here (the bake's machine saved the run; its release phase goes on
    from this one, under a lock take of its own)."""
    name = key(env.name, state.run_id)
    found = aws.s3.get_text(s3, env.artifact_bucket, name, fix=_FIX)
    state.mirror = Mirror(s3, env.artifact_bucket, name, found[1] if found else None)
    state.save()


def fetch(s3: S3Client, env: Environment, run_id: str) -> RunState | None:
    """A run kept in the store, cached in the environment's state directory (None: the
    store has no such run)."""
    found = aws.s3.get_text(s3, env.artifact_bucket, key(env.name, run_id), fix=_FIX)
    if found is None:
        return None
    path = Path(env.state_dir) / f"{run_id}.json"
    state = RunState.parse(found[0], path, run_id)
    if state.env != env.name:
        return None
    state.write_local(found[0])
    return state
