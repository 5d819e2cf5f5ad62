"""A run's state in the environment's store, so any machine can resume it.

Every save of a run (deploylib.state) is written to the artifact bucket as well, at
`runs/ENV/RUN.json`, by a conditional PUT over the version this process last wrote or
read (If-Match on its ETag; the first write only where nothing is yet). So the bucket
always holds the newest state of every run, and a write never lands over one its writer
has not seen. The local state directory stays a cache: a process working on a run first
reads the store's copy, and takes it when it went further than its own (`attach`).

When the store has moved on since this process last wrote, who moved it decides
(the lock's fencing token, `facts.lock_fence`, which every take of the lock raises):
- a newer take of the lock (the run resumed elsewhere, say while this controller was
  stopped): this process is refused at its next save, whatever its lock heartbeat has or
  has not noticed yet, and writes nothing;
- the same take (the run's regions on parallel Jenkins agents, each a process of its
  own under the one lock take): this process's changes since its last write are applied
  onto the store's copy, and that is written (a lane's entries and facts are its own:
  they never meet; where two writers did change one value, a count adds both changes,
  a list both appended to keeps both, and otherwise the later write wins).

The writes do not go through the run's guarded clients (every other write of the run
first renews the lock): the condition on the object is their own fence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

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

    def __init__(self, s3: S3Client, bucket: str, name: str, stored: str | None,
                 etag: str | None):
        self.s3, self.bucket, self.name = s3, bucket, name
        # The store's copy as this process last saw it, and its ETag...
        self.stored, self.etag = stored, etag
        # ...and this process's own state as it last wrote it: what it changed since is
        # what goes onto the store's copy.
        self.written = stored
        # A write whose answer never came (an interrupt between the PUT landing and its
        # ETag arriving): what was sent, and this process's state in it. If the store
        # holds exactly that, the write that overtook this process's ETag was its own.
        self.unanswered: tuple[str, str] | None = None
        self.refused: LockHeld | None = None

    def __call__(self, text: str) -> str:
        """Write `text` (this process's state) to the store; what the store holds now."""
        if self.refused is not None:
            raise self.refused  # overtaken once, overtaken for good
        interrupted = self.unanswered
        for _ in range(_TRIES):
            attempt = text if self.stored == self.written else \
                _text(_onto(_json(self.written), json.loads(text), _json(self.stored)))
            self.unanswered = (attempt, text)
            try:
                self.etag = aws.s3.put_text(self.s3, self.bucket, self.name, attempt,
                                            after=self.etag, fix=_FIX)
            except aws.s3.Superseded:
                found = aws.s3.get_text(self.s3, self.bucket, self.name, fix=_FIX)
                if found is None:
                    raise self._overtaken() from None
                if interrupted is not None and found[0] == interrupted[0]:
                    self.written, interrupted = interrupted[1], None  # its own write
                elif _fence(found[0]) > _fence(text):
                    # (nothing of the newer copy is taken: this process writes no more)
                    raise self._overtaken() from None
                self.stored, self.etag = found
                continue
            self.stored, self.written, self.unanswered = attempt, text, None
            return attempt
        raise self._overtaken()

    def latest(self) -> str | None:
        found = aws.s3.get_text(self.s3, self.bucket, self.name, fix=_FIX)
        return found[0] if found else None

    def _overtaken(self) -> LockHeld:
        self.refused = LockHeld(
            "another process has saved this run since this one last did (it was resumed "
            "elsewhere): this process stops without writing",
            resource=f"s3://{self.bucket}/{self.name}",
            fix="let the run go on where it was resumed (`invoke status`, the run's report)")
        return self.refused


# Writes lost to a sibling's in a row before this process gives up (each loss means a
# sibling wrote in between: a few lanes, saving a few times a stage, rarely lose one).
_TRIES = 8


def _json(text: str | None) -> Any:
    return None if text is None else json.loads(text)


def _text(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"  # RunState.text's form


def _fence(text: str) -> int:
    try:
        return int(json.loads(text)["facts"].get("lock_fence") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0


def _onto(base: Any, ours: Any, theirs: Any) -> Any:
    """What `ours` changed since `base`, applied onto `theirs` (another writer's copy of
    the same run, under the same take of its lock)."""
    if ours == base:
        return theirs
    if isinstance(ours, dict) and isinstance(theirs, dict):
        before = base if isinstance(base, dict) else {}
        out = dict(theirs)
        for name in before.keys() - ours.keys():
            out.pop(name, None)  # ours removed it (a discard, a rewind)
        for name, value in ours.items():
            if name in before and value == before[name]:
                continue
            out[name] = _onto(before.get(name), value, theirs[name]) if name in theirs \
                else value
        return out
    if type(ours) is int and type(base) is int and type(theirs) is int:
        return theirs + ours - base  # a count both added to (ssh_connections)
    if isinstance(ours, list) and isinstance(base, list) and isinstance(theirs, list) \
            and ours[:len(base)] == base and theirs[:len(base)] == base:
        return theirs + ours[len(base):]  # both appended
    return ours


def attach(s3: S3Client, env: Environment, state: RunState) -> None:
    """Mirror a run to the store from now on. The store's copy is taken when it went
    further than this machine's (a resume elsewhere, a newer take of the lock, another
    lane's writes); this machine's is written over it when it is the one ahead (its last
    saves never reached the store: the process was stopped between its file and the
    store), or when the store has none."""
    name = key(env.name, state.run_id)
    found = aws.s3.get_text(s3, env.artifact_bucket, name, fix=_FIX)
    if found is None:
        state.mirror = Mirror(s3, env.artifact_bucket, name, None, None)
        state.save()
        return
    text, etag = found
    stored = RunState.parse(text, state.path, state.run_id)
    state.mirror = Mirror(s3, env.artifact_bucket, name, text, etag)
    if further(state, stored):
        state.save()
    elif text != state.text():
        state.take_from(stored)
        state.write_local(text)


def further(one: RunState, other: RunState) -> bool:
    """Whether one copy of a run went further than the other: the later take of its lock,
    then the later save."""
    return (one.facts.lock_fence or 0, one.revision) > \
        (other.facts.lock_fence or 0, other.revision)


def claim(s3: S3Client, env: Environment, state: RunState) -> None:
    """Make this machine's state of the run the store's, over whatever copy is there: a
    bake adopted here (the bake's machine saved the run; its release phase goes on from
    this one, under a lock take of its own)."""
    name = key(env.name, state.run_id)
    found = aws.s3.get_text(s3, env.artifact_bucket, name, fix=_FIX)
    state.mirror = Mirror(s3, env.artifact_bucket, name, None, found[1] if found else None)
    state.save()


def read(s3: S3Client, env: Environment, run_id: str) -> RunState | None:
    """A run kept in the store, to be kept in the environment's state directory (None: the
    store has no such run)."""
    found = aws.s3.get_text(s3, env.artifact_bucket, key(env.name, run_id), fix=_FIX)
    if found is None:
        return None
    state = RunState.parse(found[0], Path(env.state_dir) / f"{run_id}.json", run_id)
    return state if state.env == env.name else None


def fetch(s3: S3Client, env: Environment, run_id: str) -> RunState | None:
    """A run kept in the store, cached in the environment's state directory."""
    state = read(s3, env, run_id)
    if state is not None:
        state.write_local(state.text())
    return state
