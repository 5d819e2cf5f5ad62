"""The three procedures as data: mode -> ordered stages. Pure; knows no SDK.

A stage names a step from the catalog, the hosts it applies to (`targets`) and its
options. The same step name in two procedures is the same function: the plan only
orders steps, it never defines them. Two kinds of group stage repeat a list of steps:
in-place rolls out in batches (`rollout`, its `per_batch` steps repeated batch after
batch), and the procedures that launch candidates release region by region (`regions`,
its `per_region` steps run for every region at once, each region going on as soon as its
own image is there: the primary region is tested and promoted while copies to the others
are still pending). A region is live when it is promoted; the release is committed when
it is recorded, and only then are the hosts it replaced retired.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from deploylib.config import MODES, ExtraStage, check_mode
from deploylib.errors import ConfigError

# Which hosts a stage works on, resolved from the run state when it runs.
BUILDER = "builder"
CANDIDATES = "candidates"
BATCH = "batch"

# The phase decides what `invoke bake` runs itself and what it hands to Jenkins.
BAKE = "bake"
RELEASE = "release"


@dataclass(frozen=True)
class Stage:
    name: str
    step: str
    targets: str | None = None
    phase: str = RELEASE
    options: tuple[tuple[str, Any], ...] = ()
    per_batch: tuple[Stage, ...] = ()
    per_region: tuple[Stage, ...] = ()
    # For a group: the step that puts a failed batch back in a safe state.
    recover: str | None = None

    @property
    def option(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def members(self) -> tuple[Stage, ...]:
        """A group's stages (per batch or per region); none for a single stage."""
        return self.per_batch or self.per_region

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "step": self.step, "phase": self.phase}
        if self.targets:
            out["targets"] = self.targets
        if self.options:
            out["options"] = dict(self.options)
        if self.per_batch:
            out["per_batch"] = [s.to_dict() for s in self.per_batch]
        if self.per_region:
            out["per_region"] = [s.to_dict() for s in self.per_region]
        if self.recover:
            out["recover"] = self.recover
        return out


@dataclass(frozen=True)
class Plan:
    mode: str
    stages: tuple[Stage, ...] = field(default_factory=tuple)
    # Steps run when the run fails or is interrupted: they remove what it created and
    # never made live, so a failed run leaks nothing.
    cleanup: tuple[str, ...] = ()

    def names(self) -> list[str]:
        return [s.name for s in self.stages]

    def walk(self) -> Iterable[Stage]:
        """Every stage, group members included, in order."""
        for s in self.stages:
            yield s
            yield from s.members

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

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "stages": [s.to_dict() for s in self.stages],
                "cleanup": list(self.cleanup)}


def _s(name: str, targets: str | None = None, phase: str = RELEASE, **options: Any) -> Stage:
    return Stage(name=name, step=name, targets=targets, phase=phase,
                 options=tuple(sorted(options.items())))


def _regions(*per_region: Stage) -> Stage:
    return Stage(name="regions", step="regions", per_region=per_region)


def _immutable() -> tuple[Stage, ...]:
    return (
        _s("publish-release", phase=BAKE),
        _s("launch-builder", phase=BAKE),
        _s("wait-ssh", BUILDER, phase=BAKE),
        _s("provision", BUILDER, phase=BAKE),
        # Snapshot base + packages as a foundation image (the bake cache), unless the
        # builder came from one: the next bake with the same packages skips provisioning.
        _s("cache-foundation", BUILDER, phase=BAKE),
        _s("install-release", BUILDER, phase=BAKE),
        _s("stop-builder", phase=BAKE),
        _s("create-image", BUILDER, phase=BAKE),
        _s("terminate-builder", phase=BAKE),
        # Starts the copies; each region waits only for its own (wait-image).
        _s("copy-image", phase=BAKE),
        _regions(
            _s("wait-image"),
            _s("launch-candidates", image="baked"),
            _s("smoke-test", CANDIDATES),
            _s("promote", CANDIDATES),
        ),
        _s("record"),
        _s("retire"),
    )


def _rebake_light() -> tuple[Stage, ...]:
    return (
        _s("publish-release"),
        _regions(
            _s("launch-candidates", image="live"),
            _s("wait-ssh", CANDIDATES),
            _s("install-release", CANDIDATES),
            _s("smoke-test", CANDIDATES),
            _s("promote", CANDIDATES),
        ),
        # After promotion, so that baking the image never delays time-to-live.
        _s("create-image", CANDIDATES),
        _s("record"),
        _s("retire"),
    )


def _in_place() -> tuple[Stage, ...]:
    rollout = Stage(
        name="rollout",
        step="rollout",
        recover="restore-batch",
        per_batch=(
            _s("drain", BATCH),
            _s("install-release", BATCH),
            _s("health-check", BATCH),
            _s("put-back", BATCH),
        ),
    )
    # notify: Jenkins keeps a build per hotfix, so its history shows every release that
    # reached production, baked or not. It never fails the run.
    return (_s("publish-release"), _s("select-hosts"), rollout, _s("record"), _s("notify"))


def _rollback_in_place() -> tuple[Stage, ...]:
    # The in-place procedure with the previous release in place of a new one.
    return (_s("locate-previous"), *_in_place()[1:])


def _rollback_image() -> tuple[Stage, ...]:
    return (
        _s("locate-previous"),
        _regions(
            _s("launch-candidates", image="previous"),
            _s("smoke-test", CANDIDATES),
            _s("promote", CANDIDATES),
        ),
        _s("record"),
        _s("retire"),
    )


_PROCEDURES = {"immutable": _immutable, "rebake-light": _rebake_light, "in-place": _in_place,
               "rollback-in-place": _rollback_in_place, "rollback-image": _rollback_image}
# `invoke rollback` picks one of these from what the environment's record says was the
# last procedure: hosts changed in place switch back in place; a fleet from an image is
# replaced by one from the previous image.
ROLLBACK_MODES = ("rollback-in-place", "rollback-image")
# Procedures that change live hosts rather than their images.
IN_PLACE_MODES = ("in-place", "rollback-in-place")


def rollback_mode(procedure: str) -> str:
    return "rollback-in-place" if procedure in IN_PLACE_MODES else "rollback-image"


# When a cleanup step discarded what a stage made, the run starts again from that stage
# on resume (a new builder, new candidates).
RESTART_FROM = {"discard-builder": "launch-builder", "discard-candidates": "launch-candidates",
                "discard-images": "launch-builder"}
# demote first: a region promoted before another region failed gets its previous hosts
# back (they are retired only once the release is recorded), so a failed run leaves every
# region on the release it had, and its candidates can then be discarded.
_CLEANUP = {
    "immutable": ("demote", "discard-candidates", "discard-images", "discard-builder"),
    "rebake-light": ("demote", "discard-candidates", "discard-images"),
    "in-place": (),
    "rollback-in-place": (),
    "rollback-image": ("demote", "discard-candidates"),
}


def _insert(stages: Sequence[Stage], extra: ExtraStage) -> tuple[tuple[Stage, ...], bool]:
    """Insert one extra stage next to its anchor, inside groups too; report if placed."""
    anchor = extra.before or extra.after
    out: list[Stage] = []
    placed = False
    for s in stages:
        if s.per_batch:
            inner, placed_inner = _insert(s.per_batch, extra)
            s = replace(s, per_batch=inner)
            placed = placed or placed_inner
        if s.per_region:
            inner, placed_inner = _insert(s.per_region, extra)
            s = replace(s, per_region=inner)
            placed = placed or placed_inner
        if s.name == anchor:
            new = Stage(name=extra.step, step=extra.step, targets=s.targets, phase=s.phase)
            out.extend([new, s] if extra.before else [s, new])
            placed = True
        else:
            out.append(s)
    return tuple(out), placed


def plan(mode: str, extra_stages: Sequence[ExtraStage] = ()) -> Plan:
    """The ordered stages of a procedure, with a team's extra stages inserted."""
    if mode not in _PROCEDURES:
        check_mode(mode)
    stages = _PROCEDURES[mode]()
    for extra in extra_stages:
        stages, placed = _insert(stages, extra)
        if not placed and not any(
            _insert(_PROCEDURES[m](), extra)[1] for m in (*MODES, *ROLLBACK_MODES)
        ):
            anchor = extra.before or extra.after
            raise ConfigError(
                f"extra stage {extra.step!r} is anchored to {anchor!r}, which is no stage of "
                "any procedure",
                fix="anchor it to a stage shown by `invoke plan --mode MODE`",
            )
    names = [s.name for s in Plan(mode, stages).walk()]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"stage name(s) {', '.join(dupes)} appear twice in {mode}",
                          fix="give each extra stage a step name of its own")
    return Plan(mode=mode, stages=stages, cleanup=_CLEANUP[mode])


def batches(hosts: Sequence[Any], size: int) -> list[list[Any]]:
    """Split hosts into consecutive batches of at most `size`."""
    if size < 1:
        raise ValueError("batch size must be at least 1")
    return [list(hosts[i : i + size]) for i in range(0, len(hosts), size)]
