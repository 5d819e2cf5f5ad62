"""The procedures as data: mode -> ordered stages. Pure; knows no SDK.

Everything that is procedure knowledge lives here and nowhere else: which stages there
are and in which order, which hosts each works on, which stage makes the release live
(time-to-live ends there), which one publishes JUnit XML, which one commits the release
(after it nothing is discarded), and how a release is rolled back. What cleans up a
failed run, and where a resume starts again, is derived from what each step declares
it makes (`@step(name, undo=..., launches=...)`, deploylib.catalog). The engine, the
report, the steps and the Jenkinsfile read these attributes; none of them names a mode
or a stage.

A stage names a step from the catalog, the hosts it applies to (`targets`) and its
options. The same step name in two procedures is the same function: the plan only
orders steps, it never defines them. Two kinds of group stage repeat a list of steps:
in-place rolls out in batches (PER_BATCH: its steps repeated batch after batch), and
the procedures that launch candidates release region by region (PER_REGION: its steps
run for every region at once, each region going on as soon as its own image is there:
the primary region is tested and promoted while copies to the others are still
pending). A region is live when it is promoted; the release is committed when it is
recorded, and only then are the hosts it replaced retired.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from deploylib.errors import ConfigError, InputError

if TYPE_CHECKING:  # the catalog imports the steps, which import this module
    from deploylib.catalog import Step as Declared

# The procedures an operator asks for; the rollbacks are chosen from the record.
MODES = ("immutable", "rebake-light", "in-place")
ROLLBACK_MODES = ("rollback-in-place", "rollback-image")
# Server groups: an image carrying the live release, put in the live groups' launch
# templates (`invoke fold`); the record's release and history are left as they are.
FOLD = "fold"

# Which hosts a stage works on, resolved from the run state when it runs.
BUILDER = "builder"
CANDIDATES = "candidates"
BATCH = "batch"

# The phase decides what `invoke bake` runs itself and what it hands to Jenkins.
BAKE = "bake"
RELEASE = "release"

# Kinds of stage: one step, or a group of steps run per batch or per region.
SINGLE = "step"
PER_BATCH = "per_batch"
PER_REGION = "per_region"


class Extra(Protocol):
    """A team's extra stage, as config gives it (deploylib.config.ExtraStage)."""

    step: str
    before: str | None
    after: str | None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}", fix=f"use one of: {', '.join(MODES)}")
    return mode


@dataclass(frozen=True)
class Stage:
    name: str
    step: str
    targets: str | None = None
    phase: str = RELEASE
    options: tuple[tuple[str, Any], ...] = ()
    kind: str = SINGLE
    members: tuple[Stage, ...] = ()
    # PER_BATCH: the step that puts a failed batch back in a safe state...
    recover: str | None = None
    # ...and the step that chooses the hosts to switch back to the live release when the
    # rollout stops (`rollback_on_failure`); the members then run again over them.
    revert: str | None = None
    # The release serves users once this stage is done: time-to-live ends with the last.
    live: bool = False
    # It writes JUnit XML (smoke tests) for the pipeline to publish.
    junit: bool = False

    @property
    def option(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def is_group(self) -> bool:
        return self.kind != SINGLE

    @property
    def publishes_junit(self) -> bool:
        return self.junit or any(m.publishes_junit for m in self.members)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "step": self.step, "phase": self.phase,
                               "kind": self.kind, "makes_live": self.live,
                               "publishes_junit": self.publishes_junit}
        if self.targets:
            out["targets"] = self.targets
        if self.options:
            out["options"] = dict(self.options)
        if self.is_group:
            out[self.kind] = [s.to_dict() for s in self.members]
        for attr in ("recover", "revert"):
            if getattr(self, attr):
                out[attr] = getattr(self, attr)
        return out


@dataclass(frozen=True)
class Plan:
    mode: str
    stages: tuple[Stage, ...] = field(default_factory=tuple)
    # Steps run when the run fails or is interrupted: they remove what it created and
    # never made live, so a failed run leaks nothing (each stage's declared undo).
    cleanup: tuple[str, ...] = ()
    # The stage that commits the release: once it is done, a failure discards nothing.
    commit: str = "record"
    # The procedure that rolls back a release this one made live.
    rollback: str = ""
    # cleanup step -> the stage a resume starts again from once that step has discarded
    # what the stage made (a new builder, new candidates).
    restart_from: tuple[tuple[str, str], ...] = ()

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def walk(self) -> Iterable[Stage]:
        """Every stage, group members included, in order."""
        return _walk(self.stages)

    def stage(self, name: str) -> Stage:
        """A stage that runs on its own (`invoke step NAME`): group members do not."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def find(self, name: str) -> Stage:
        """Any stage, group members included."""
        for s in self.walk():
            if s.name == name:
                return s
        raise KeyError(name)

    def places(self) -> list[tuple[str | None, str]]:
        """Every stage as (its group, its name), in order: a name may stand in a group and
        on its own too (wait-ssh for the builder, and for each region's candidates)."""
        return [place for s in self.stages
                for place in [(None, s.name), *((s.name, m.name) for m in s.members)]]

    def rerun_from(self, name: str) -> set[tuple[str | None, str]]:
        """The places that run again when a run restarts at stage `name` (its first
        place), with the group around any member among them."""
        places = self.places()
        start = next((n for n, (_, stage) in enumerate(places) if stage == name), None)
        if start is None:
            return set()
        later = set(places[start:])
        return later | {(None, group) for group, _ in later if group is not None}

    def group_of(self, name: str) -> Stage | None:
        """The group a member stage runs in (None for a stage of its own)."""
        return next((s for s in self.stages if any(m.name == name for m in s.members)), None)

    @property
    def hands_off(self) -> bool:
        """Whether it has a bake phase that `invoke bake` can hand to Jenkins."""
        return any(s.phase == BAKE for s in self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stages": [s.to_dict() for s in self.stages],
                "cleanup": list(self.cleanup), "commit": self.commit,
                "rollback": self.rollback}

    def restart_after(self, cleanup_step: str) -> str | None:
        """The stage a resume starts from once `cleanup_step` discarded what it made."""
        return dict(self.restart_from).get(cleanup_step)


def _s(name: str, targets: str | None = None, phase: str = RELEASE, *, live: bool = False,
       junit: bool = False, **options: Any) -> Stage:
    return Stage(name=name, step=name, targets=targets, phase=phase, live=live, junit=junit,
                 options=tuple(sorted(options.items())))


def _regions(*per_region: Stage) -> Stage:
    return Stage(name="regions", step="regions", kind=PER_REGION, members=per_region)


def _bake(phase: str, *, in_lane: bool = False) -> tuple[Stage, ...]:
    """A builder launched, provisioned, imaged and terminated. In a region's lane (a
    per-region bake) its SSH wait and install are named apart from the candidates'."""
    def lane(stage: Stage, name: str) -> Stage:
        return replace(stage, name=name) if in_lane else stage

    return (
        _s("launch-builder", phase=phase),
        lane(_s("wait-ssh", BUILDER, phase=phase), "builder-ssh"),
        _s("provision", BUILDER, phase=phase),
        # Snapshot base + packages as a foundation image (the bake cache), unless the
        # builder came from one: the next bake with the same packages skips provisioning.
        _s("cache-foundation", BUILDER, phase=phase),
        lane(_s("install-release", BUILDER, phase=phase), "install-on-builder"),
        _s("stop-builder", phase=phase),
        # The builder is stopped: its disk is consistent without a reboot of its own.
        _s("create-image", BUILDER, phase=phase, no_reboot=False),
        _s("terminate-builder", phase=phase),
    )


def _go_live() -> tuple[Stage, ...]:
    """A region's candidates from the image baked, tested and promoted."""
    return (
        _s("launch-candidates", image="baked"),
        # Reachable and through its first boot before it is tested.
        _s("wait-ssh", CANDIDATES),
        _s("smoke-test", CANDIDATES, junit=True),
        _s("promote", CANDIDATES, live=True),
    )


def _immutable() -> tuple[Stage, ...]:
    return (
        _s("publish-release", phase=BAKE),
        *_bake(BAKE),
        # Starts the copies; each region waits only for its own (wait-image).
        _s("copy-image", phase=BAKE),
        _regions(_s("wait-image"), *_go_live()),
        _s("record", images="run"),
        _s("retire"),
    )


def _immutable_per_region() -> tuple[Stage, ...]:
    # bake = "per-region": every region bakes its own image at once, from its own
    # foundation image (or its base image, provisioned, the first time), from the same
    # release (its digest checked on each builder): no region waits for a copy. The bake
    # is part of each region's release, so there is no bake phase to hand to Jenkins.
    return (
        _s("publish-release"),
        _regions(*_bake(RELEASE, in_lane=True), *_go_live()),
        _s("record", images="run"),
        _s("retire"),
    )


def _rebake_light() -> tuple[Stage, ...]:
    return (
        _s("publish-release"),
        _regions(
            _s("launch-candidates", image="live"),
            _s("wait-ssh", CANDIDATES),
            _s("install-release", CANDIDATES),
            _s("smoke-test", CANDIDATES, junit=True),
            _s("promote", CANDIDATES, live=True),
        ),
        # After promotion, so that baking the image never delays time-to-live; a
        # serving candidate is imaged without a reboot so it keeps serving.
        _s("create-image", CANDIDATES, no_reboot=True),
        # Server groups: the run's group launches from that image (nothing left to
        # install at boot, nothing for a fold to do); a fleet of instances: nothing.
        _s("fold-template"),
        _s("record", images="run"),
        _s("retire"),
    )


def _rollout() -> Stage:
    return Stage(
        name="rollout",
        step="rollout",
        kind=PER_BATCH,
        recover="restore-batch",
        revert="locate-live",
        live=True,
        members=(
            _s("drain", BATCH),
            _s("install-release", BATCH),
            _s("health-check", BATCH),
            _s("put-back", BATCH),
        ),
    )


def _in_place() -> tuple[Stage, ...]:
    # notify: Jenkins keeps a build per hotfix, so its history shows every release that
    # reached production, baked or not. It never fails the run. The record keeps the
    # images it had: the hosts changed, not their images (that is the drift status shows).
    # catch-up: server groups launch instances of their own; one launched during the
    # rollout booted into the release recorded then, and gets this one now.
    return (_s("publish-release"), _s("select-hosts"), _rollout(),
            _s("record", images="unchanged"), _s("catch-up"), _s("notify"))


def _rollback_in_place() -> tuple[Stage, ...]:
    # The in-place procedure with the previous release in place of a new one.
    return (_s("locate-previous"), *_in_place()[1:])


def _rollback_image() -> tuple[Stage, ...]:
    # The previous images need not carry the previous release (a hotfix made in place
    # lives on hosts, not in images): it is installed on the candidates, which is no
    # work at all where the image carries it already.
    return (
        _s("locate-previous"),
        _regions(
            _s("launch-candidates", image="previous"),
            _s("wait-ssh", CANDIDATES),
            _s("install-release", CANDIDATES),
            _s("smoke-test", CANDIDATES, junit=True),
            _s("promote", CANDIDATES, live=True),
        ),
        _s("record", images="run"),
        _s("retire"),
    )


def _fold() -> tuple[Stage, ...]:
    # The live release as the record names it; in each region a clean instance from the
    # live image (a builder, never a host that served), the release installed on it, its
    # image in the region's launch template; the record's images pointed at them.
    return (
        _s("locate-release"),
        _regions(
            _s("launch-builder", image="live"),
            replace(_s("wait-ssh", BUILDER), name="builder-ssh"),
            replace(_s("install-release", BUILDER), name="install-on-builder"),
            _s("stop-builder"),
            _s("create-image", BUILDER, no_reboot=False),
            _s("terminate-builder"),
        ),
        _s("fold-template"),
        _s("record-images"),
    )


@dataclass(frozen=True)
class _Procedure:
    stages: Callable[[], tuple[Stage, ...]]
    # `invoke rollback` picks this from what the record says was the last procedure:
    # hosts changed in place switch back in place; a fleet from an image is replaced by
    # one from the previous image.
    rollback: str


_PROCEDURES = {
    "immutable": _Procedure(_immutable, "rollback-image"),
    "rebake-light": _Procedure(_rebake_light, "rollback-image"),
    "in-place": _Procedure(_in_place, "rollback-in-place"),
    "rollback-in-place": _Procedure(_rollback_in_place, "rollback-in-place"),
    "rollback-image": _Procedure(_rollback_image, "rollback-image"),
    FOLD: _Procedure(_fold, "rollback-image"),
}

# The one place cleanup's order is not the reverse of the stages': a region promoted
# before the failure gets its previous hosts back before anything else is discarded, so
# users are on the release they had at once (the replaced hosts are retired only after
# the record, so they are still there).
_UNDO_FIRST = ("demote",)


def undoing(stages: Sequence[Stage], undo_of: Callable[[str], str | None],
            launches_of: Callable[[str], str | None]
            ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """What a failed run of `stages` runs, from each step's declared undo: the undos in
    reverse order of the stages that make what they remove (`_UNDO_FIRST` first); and
    for each, the stage a resume starts again from once it discarded something: the
    first stage declaring it, or, when that stage works on hosts an earlier stage
    launched (an image made from the builder), that launch: what it needs is gone too."""
    flat = [s for s in _walk(stages) if not s.is_group]
    order: list[str] = []
    restart: dict[str, str] = {}
    for n, stage in enumerate(flat):
        undo = undo_of(stage.step)
        if undo is None or undo in restart:
            continue
        order.append(undo)
        launcher = next((earlier.name for earlier in flat[:n] if stage.targets is not None
                         and launches_of(earlier.step) == stage.targets), None)
        restart[undo] = launcher or stage.name
    order.reverse()
    first = [u for u in _UNDO_FIRST if u in order]
    return (*first, *(u for u in order if u not in first)), tuple(restart.items())


def _walk(stages: Iterable[Stage]) -> Iterable[Stage]:
    for s in stages:
        yield s
        yield from s.members


def _declared(name: str) -> Declared | None:
    from deploylib import catalog  # the steps register themselves on import

    catalog.load()
    return catalog.declared(name)


def undo_of(name: str) -> str | None:
    """The cleanup step a registered step declares (None: it makes nothing to undo)."""
    step = _declared(name)
    return step.undo if step else None


def launches_of(name: str) -> str | None:
    step = _declared(name)
    return step.launches if step else None


def rollback_mode(procedure: str) -> str:
    """The rollback for a release made live by `procedure` (the record's)."""
    known = _PROCEDURES.get(procedure)
    return known.rollback if known else "rollback-image"


def _insert(stages: Sequence[Stage], extra: Extra) -> tuple[tuple[Stage, ...], bool]:
    """Insert one extra stage next to its anchor, inside groups too; report if placed."""
    anchor = extra.before or extra.after
    out: list[Stage] = []
    placed = False
    for s in stages:
        if s.is_group:
            inner, placed_inner = _insert(s.members, extra)
            s = replace(s, members=inner)
            placed = placed or placed_inner
        if s.name == anchor:
            new = Stage(name=extra.step, step=extra.step, targets=s.targets, phase=s.phase)
            out.extend([new, s] if extra.before else [s, new])
            placed = True
        else:
            out.append(s)
    return tuple(out), placed


# What a graceful reload leaves out of a rollout's batch: its hosts stay in their target
# groups while the release is switched and the app reloaded.
_TRAFFIC = ("drain", "put-back")


def _watched(stages: tuple[Stage, ...], mode: str, *, batches: bool, live: bool
             ) -> tuple[Stage, ...]:
    """The verification windows of a procedure a team asked for: after each in-place
    batch (the canary's, then each wave's), and once every region of an image-based
    release is live, before anything is imaged or recorded: until the window passes the
    hosts it replaced serve as they did, ready to take over again. A rollback is not
    watched (it goes back to what served before), nor a fold (it changes no host)."""
    if batches and mode == "in-place":
        return tuple(replace(s, members=(*s.members, _s("verify", BATCH, window="batch")))
                     if s.kind == PER_BATCH else s for s in stages)
    if live and mode in ("immutable", "rebake-light"):
        at = next(n for n, s in enumerate(stages) if s.kind == PER_REGION) + 1
        return (*stages[:at], _s("verify", window="live"), *stages[at:])
    return stages


def plan(mode: str, extra_stages: Sequence[Extra] = (), *, graceful: bool = False,
         per_region_bake: bool = False, verify_batches: bool = False,
         verify_live: bool = False) -> Plan:
    """The ordered stages of a procedure, with a team's extra stages inserted;
    `graceful`: in-place batches reload in place, never leaving their target groups;
    `per_region_bake`: immutable bakes in every region at once instead of copying;
    `verify_batches`, `verify_live`: the verification windows (in-place batches, an
    image-based release once live)."""
    if mode not in _PROCEDURES:
        check_mode(mode)
    procedure = _PROCEDURES[mode]
    stages = base = _immutable_per_region() if per_region_bake and mode == "immutable" \
        else procedure.stages()
    stages = base = _watched(stages, mode, batches=verify_batches, live=verify_live)
    if graceful:
        stages = tuple(replace(s, members=tuple(m for m in s.members if m.name not in _TRAFFIC))
                       if s.kind == PER_BATCH else s for s in stages)
    for extra in extra_stages:
        stages, placed = _insert(stages, extra)
        if not placed and not any(_insert(p.stages(), extra)[1] for p in _PROCEDURES.values()):
            anchor = extra.before or extra.after
            raise ConfigError(
                f"extra stage {extra.step!r} is anchored to {anchor!r}, which is no stage of "
                "any procedure",
                fix="anchor it to a stage shown by `invoke plan --mode MODE`",
            )
    # A name once per scope (the stages on their own, each group's members), and a team's
    # stage a name of its own anywhere.
    scopes = [[s.name for s in stages], *([m.name for m in s.members] for s in stages)]
    builtin = {s.name for s in Plan(mode, base).walk()}
    dupes = sorted({n for names in scopes for n in names if names.count(n) > 1} |
                   {e.step for e in extra_stages if e.step in builtin})
    if dupes:
        raise ConfigError(f"stage name(s) {', '.join(dupes)} appear twice in {mode}",
                          fix="give each extra stage a step name of its own")
    cleanup, restart_from = undoing(stages, undo_of, launches_of)
    return Plan(mode=mode, stages=stages, cleanup=cleanup, rollback=procedure.rollback,
                restart_from=restart_from)


H = TypeVar("H")  # a host, as the caller holds it


def batches(hosts: Sequence[H], size: int) -> list[list[H]]:
    """Split hosts into consecutive batches of at most `size`."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return [list(hosts[i : i + size]) for i in range(0, len(hosts), size)]


def waves(per_region: dict[str, list[list[H]]], first: str) -> list[list[H]]:
    """In-place batches rolled across regions at once: a canary (the first batch of the
    region `first`, alone), then wave i of every region's batches side by side — `first`'s
    next batch beside each other region's batch i. No wave takes more of a region than one
    of its own batches, and every region's batches keep their order."""
    queues = {region: list(b) for region, b in per_region.items() if b}
    out: list[list[H]] = []
    if queues.get(first):
        out.append(list(queues[first].pop(0)))
    while any(queues.values()):
        out.append([h for region in per_region for h in
                    (queues[region].pop(0) if queues.get(region) else [])])
    return out
