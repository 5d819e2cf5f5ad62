"""Run state: one JSON file per run, carrying each stage's outputs and status.

Every stage can run in its own process (as Jenkins runs them) because everything a
later stage needs (builder id, image id per region, candidate ids, batches) is read
from here. Writes are atomic (temporary file, then rename), so a crash never leaves a
half-written state. Nothing secret is stored: no credentials, no presigned URLs.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploylib.errors import InputError, StateError

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
_RUN_ID = re.compile(r"^\d{8}T\d{6}-[0-9a-f]{6}$")


def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now or time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise InputError(f"run id {run_id!r} is not valid",
                         fix="use an id printed by `invoke start` or `invoke deploy`, "
                         "e.g. 20261127T120000-a1b2c3")
    return run_id


_SAVING = threading.Lock()


@dataclass
class RunState:
    run_id: str
    env: str
    mode: str
    version: str
    artifact: str
    path: Path
    status: str = PENDING
    created_at: float = field(default_factory=time.time)
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)

    # -- persistence ---------------------------------------------------------------------

    @classmethod
    def create(cls, state_dir: str | Path, *, env: str, mode: str, version: str,
               artifact: str, run_id: str | None = None) -> RunState:
        directory = Path(state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        run_id = run_id or new_run_id()
        state = cls(run_id=run_id, env=env, mode=mode, version=version, artifact=artifact,
                    path=directory / f"{run_id}.json")
        if state.path.exists():
            raise StateError("a run with this id exists already", resource=str(state.path),
                             fix="let the tool choose the run id")
        state.save()
        return state

    @classmethod
    def load(cls, state_dir: str | Path, run_id: str) -> RunState:
        check_run_id(run_id)
        path = Path(state_dir) / f"{run_id}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"no run {run_id} in {state_dir}",
                             fix="check the run id (`ls " + str(state_dir) + "`) "
                             "or start a run with `invoke start`") from None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise StateError("the run state is not valid JSON", resource=str(path),
                             fix="restore it from the build's archived copy") from None
        try:
            return cls(path=path, **{k: data[k] for k in (
                "run_id", "env", "mode", "version", "artifact", "status", "created_at",
                "stages", "facts")})
        except (KeyError, TypeError):
            raise StateError("the run state lacks required fields", resource=str(path),
                             fix="restore it from the build's archived copy") from None

    @classmethod
    def latest(cls, state_dir: str | Path) -> RunState | None:
        runs = sorted(Path(state_dir).glob("*.json"))
        return cls.load(state_dir, runs[-1].stem) if runs else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id, "env": self.env, "mode": self.mode,
            "version": self.version, "artifact": self.artifact, "status": self.status,
            "created_at": self.created_at, "stages": self.stages, "facts": self.facts,
        }

    def save(self) -> None:
        """Write the state atomically. Regions of a run save from their own threads: the
        snapshot is taken by the C encoder, which copies each dict's items without
        letting another thread run, and the lock keeps the file in snapshot order."""
        with _SAVING:
            snapshot = json.loads(json.dumps(self.to_dict(), sort_keys=True))
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".run-", suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(snapshot, f, indent=2, sort_keys=True)
                f.write("\n")
            os.replace(tmp, self.path)

    # -- stage bookkeeping ----------------------------------------------------------------

    def stage(self, name: str) -> dict[str, Any]:
        return self.stages.setdefault(name, {"status": PENDING})

    def is_done(self, name: str) -> bool:
        return self.stages.get(name, {}).get("status") == DONE

    def mark(self, name: str, status: str, **extra: Any) -> None:
        entry = self.stage(name)
        entry["status"] = status
        now = time.time()
        if status == RUNNING:
            entry["started_at"] = now
            entry.pop("error", None)
        elif status in (DONE, FAILED):
            entry["ended_at"] = now
            entry["seconds"] = round(now - entry.get("started_at", now), 3)
        entry.update(extra)
        self.save()


def runs_with_pending_notice(state_dir: str | Path) -> list[RunState]:
    """Runs whose notice to Jenkins was not delivered yet, oldest first."""
    out = []
    for path in sorted(Path(state_dir).glob("*.json")):
        try:
            run = RunState.load(state_dir, path.stem)
        except (StateError, InputError):
            continue
        notice = run.facts.get("notice")
        if notice and not notice.get("sent"):
            out.append(run)
    return out
