"""Run state: one JSON file per run, carrying each stage's status and the run's facts.

Every stage can run in its own process (as Jenkins runs them) because everything a
later stage needs (builder id, image id per region, candidate ids, batches) is read
from here (deploylib.facts). Writes are atomic (temporary file, then rename), so a crash
never leaves a half-written state. Nothing secret is stored: no credentials, no
presigned URLs.

A stage's entry is keyed by a `StageKey`: the stage, and for a member of a group the
group and its lane (a batch number or a region). In the file each entry is listed under
the key's text (`rollout/3/drain`, `regions/eu-west-1/promote`) and carries the key's
parts, which is what loading reads: no key is ever parsed back from its text.
"""

from __future__ import annotations

import json
import os
import secrets
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, NonNegativeInt, StringConstraints, ValidationError

from deploylib import config
from deploylib.errors import InputError, StateError
from deploylib.facts import Facts, Mode, RunId, Version, first_error

PENDING, RUNNING, DONE, FAILED = "pending", "running", "done", "failed"
ENDED = (DONE, FAILED)


def new_run_id(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now or time.time()))
    return f"{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not config.RUN_ID.fullmatch(run_id):
        raise InputError(f"run id {run_id!r} is not valid",
                         fix="use an id printed by `invoke start` or `invoke deploy`, "
                         "e.g. 20261127T120000-a1b2c3")
    return run_id


@dataclass(frozen=True)
class StageKey:
    """Which stage an entry is for: a stage of its own, or a group's member in one lane."""

    stage: str
    group: str | None = None
    batch: int | None = None  # a rollout's batch (1-based)
    region: str | None = None  # a regions group's region

    @classmethod
    def in_batch(cls, group: str, batch: int, stage: str) -> StageKey:
        return cls(stage=stage, group=group, batch=batch)

    @classmethod
    def in_region(cls, group: str, region: str, stage: str) -> StageKey:
        return cls(stage=stage, group=group, region=region)

    @property
    def lane(self) -> str | None:
        return self.region if self.region is not None else (
            None if self.batch is None else str(self.batch))

    def __str__(self) -> str:
        return self.stage if self.group is None else f"{self.group}/{self.lane}/{self.stage}"


def _key(key: StageKey | str) -> StageKey:
    """A plain name is a stage of its own (never split: a name has no parts)."""
    return key if isinstance(key, StageKey) else StageKey(key)


class StageEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str = PENDING
    step: str | None = None  # the function behind it, or what a group runs over
    started_at: float | None = None
    ended_at: float | None = None
    seconds: float | None = None
    error: str | None = None
    live: bool = False  # the release served users once it was done (plan: Stage.live)
    elsewhere: bool = False  # done on another machine (a bake that handed off)
    was: str | None = None  # its status before a cleanup rewound the run...
    reset_by: str | None = None  # ...and which cleanup step did


class Store(Protocol):
    """Where a run's saves go besides its file (deploylib.runstore.Mirror)."""

    def __call__(self, text: str) -> str:
        """Write the state's text; what the store holds after."""

    def latest(self) -> str | None:
        """The store's copy as it is now."""


_SAVING = threading.Lock()
_FIELDS = ("run_id", "env", "mode", "version", "artifact", "status", "created_at",
           "revision")


class _Header(BaseModel):
    """A state file's own fields, held to the shapes input is held to when read back."""

    model_config = ConfigDict(extra="forbid")

    run_id: RunId
    env: Annotated[str, StringConstraints(pattern=config.ENV_NAME.pattern)]
    mode: Mode
    version: Version
    artifact: str
    status: str
    created_at: float
    revision: NonNegativeInt = 0


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
    # One more at every save: which of two copies of the run (this machine's file, the
    # store's) went further, when neither was superseded by a newer take of the lock.
    revision: int = 0
    stages: dict[StageKey, StageEntry] = field(default_factory=dict)
    facts: Facts = field(default_factory=Facts)
    # Where every save is also written: the environment's store (deploylib.runstore), so
    # any machine with the environment's credentials can resume the run. Set when the
    # run's clients are built; raises when another process has written the run since.
    # Returns what the store holds after the write: this state, with what other
    # processes of the run's lock take (its regions on other agents) wrote there.
    mirror: Store | None = field(default=None, repr=False, compare=False)

    # -- persistence ---------------------------------------------------------------------

    @classmethod
    def create(cls, state_dir: str | Path, *, env: str, mode: str, version: str,
               artifact: str, run_id: str | None = None) -> RunState:
        directory = Path(state_dir)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)  # runs are private
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
            text = path.read_text()
        except FileNotFoundError:
            raise InputError(f"no run {run_id} in {state_dir}",
                             fix="check the run id (`ls " + str(state_dir) + "`) "
                             "or start a run with `invoke start`") from None
        except UnicodeDecodeError:
            text = ""
        return cls.parse(text, path, run_id)

    @classmethod
    def parse(cls, text: str, path: Path, run_id: str) -> RunState:
        """A run's state from its JSON (a file's, or the store's), to be kept at `path`."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise StateError("the run state is not valid JSON", resource=str(path),
                             fix="restore it from the build's archived copy") from None
        try:
            stages = {}
            for entry in data["stages"].values():
                key = StageKey(stage=entry.pop("stage"), group=entry.pop("group", None),
                               batch=entry.pop("batch", None), region=entry.pop("region", None))
                stages[key] = StageEntry.model_validate(entry)
            header = _Header.model_validate({**{k: data[k] for k in _FIELDS[:-1]},
                                             "revision": data.get("revision", 0)})
            facts = Facts.model_validate(data["facts"])
        except ValidationError as exc:
            raise StateError(f"the run state holds a bad value: {first_error(exc)}",
                             resource=str(path),
                             fix="restore it from the build's archived copy") from None
        except (KeyError, TypeError, AttributeError):
            raise StateError("the run state lacks required fields or has the wrong shape",
                             resource=str(path),
                             fix="restore it from the build's archived copy") from None
        if header.run_id != run_id:
            raise StateError(f"the run state names run {header.run_id}, not {run_id}",
                             resource=str(path), fix="restore it from the build's archived copy")
        return cls(path=path, stages=stages, facts=facts, **header.model_dump())

    @classmethod
    def latest(cls, state_dir: str | Path) -> RunState | None:
        runs = sorted(Path(state_dir).glob("*.json"))
        return cls.load(state_dir, runs[-1].stem) if runs else None

    def to_dict(self) -> dict[str, Any]:
        stages = {}
        for key, entry in list(self.stages.items()):
            parts = {"stage": key.stage, "group": key.group, "batch": key.batch,
                     "region": key.region}
            stages[str(key)] = {**{k: v for k, v in parts.items() if v is not None},
                                **entry.model_dump(exclude_defaults=True), "status": entry.status}
        return {**{k: getattr(self, k) for k in _FIELDS}, "stages": stages,
                "facts": self.facts.model_dump(mode="json")}

    def text(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save(self) -> None:
        """Write the state atomically, then to the store (`mirror`). Regions of a run save
        from their own threads: the snapshot is built by pydantic's serializer, which
        holds the interpreter for the whole dump, and the lock keeps the file, and the
        store, in snapshot order."""
        with _SAVING:
            self.revision += 1
            text = self.text()
            self.write_local(text)
            if self.mirror is not None:
                stored = self.mirror(text)
                if stored != text:
                    self.write_local(stored)  # the cache as full as the store

    def write_local(self, text: str) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".run-", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, self.path)

    def stored(self) -> RunState | None:
        """The run as the store has it now, with what other processes of the run wrote
        (None: not kept in a store)."""
        text = self.mirror.latest() if self.mirror is not None else None
        return None if text is None else RunState.parse(text, self.path, self.run_id)

    def take_from(self, newer: RunState) -> None:
        """Become the store's newer copy of this run (a resume on another machine went
        further than this machine's cache)."""
        for name in (*_FIELDS, "stages", "facts"):
            setattr(self, name, getattr(newer, name))

    # -- stage bookkeeping ----------------------------------------------------------------

    def entry(self, key: StageKey | str) -> StageEntry:
        return self.stages.setdefault(_key(key), StageEntry())

    def is_done(self, key: StageKey | str) -> bool:
        entry = self.stages.get(_key(key))
        return entry is not None and entry.status == DONE

    def mark(self, key: StageKey | str, status: str, **extra: Any) -> None:
        entry = self.entry(key)
        entry.status = status
        now = time.time()
        if status == RUNNING:
            entry.started_at = now
            entry.error = None
        elif status in ENDED:
            entry.ended_at = now
            entry.seconds = round(now - (entry.started_at or now), 3)
        for name, value in extra.items():
            setattr(entry, name, value)
        self.save()

    def rewind(self, keys: Iterable[StageKey], by: str) -> None:
        """Set stages to run again (pending), keeping what happened readable: each entry
        keeps its error and says what it was and which step rewound it."""
        for key in keys:
            entry = self.stages.get(key)
            if entry is not None and entry.status != PENDING:
                entry.was, entry.status, entry.reset_by = entry.status, PENDING, by
        self.save()

    def members(self, group: str) -> dict[StageKey, StageEntry]:
        """The entries of a group's members, in the order they were first run."""
        return {k: e for k, e in self.stages.items() if k.group == group}

    @property
    def top(self) -> dict[str, StageEntry]:
        """The entries of stages of their own, by name."""
        return {k.stage: e for k, e in self.stages.items() if k.group is None}


def runs_with_pending_notice(state_dir: str | Path) -> list[RunState]:
    """Runs whose notice to Jenkins was not delivered yet, oldest first."""
    out = []
    for path in sorted(Path(state_dir).glob("*.json")):
        try:
            run = RunState.load(state_dir, path.stem)
        except (StateError, InputError):
            continue
        if run.facts.notice and not run.facts.notice.sent:
            out.append(run)
    return out
