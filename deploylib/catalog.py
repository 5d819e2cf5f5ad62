"""The step catalog: a registry of step functions and of hooks around stages.

Built-in steps live in deploylib.steps. A team adds its own without editing deploylib:

    from deploylib.catalog import step, hook

    @step("warm-cache")
    def warm_cache(ctx): ...

    @step("launch-canary", undo="discard-canary", launches="candidates")
    def launch_canary(ctx): ...

    @hook("after", "promote")
    def tell_chat(ctx): ...

and names the module in deploy.toml (`plugins = ["team_steps"]`) or exposes it through
the `deploylib.steps` entry-point group. A step is placed into procedures with
`extra_stages`; a hook runs around its stage in every procedure that has that stage.

A step that makes something a failed run must not leave behind declares the step that
undoes it (`undo`): the plan derives each procedure's cleanup from those declarations
(deploylib.plan), so a new step never needs a table kept in step with it. A step that
launches hosts later stages work on says which (`launches`): a resume after its hosts
were discarded starts again from it.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from deploylib.errors import ConfigError, InputError

if TYPE_CHECKING:  # a step is given the run's context; the context's module imports this one
    from deploylib.context import Context

StepFn = Callable[["Context"], None]
ENTRY_POINT_GROUP = "deploylib.steps"
WHEN = ("before", "after")


@dataclass(frozen=True)
class Step:
    name: str
    fn: StepFn
    summary: str
    # The cleanup step that removes what this one made, when the run fails before the
    # release is committed.
    undo: str | None = None
    # The hosts it launches (a plan's targets: "builder", "candidates").
    launches: str | None = None

    @property
    def function(self) -> str:
        """Where the function is imported from, as module:qualname (what `invoke plan`
        shows): the outermost package that exports it (deploylib.steps for the built-in
        steps, whichever submodule defines them), else its own module."""
        module, name = self.fn.__module__, self.fn.__qualname__
        parts = module.split(".")
        for n in range(1, len(parts)):
            parent = sys.modules.get(".".join(parts[:n]))
            if parent is not None and getattr(parent, name, None) is self.fn:
                return f"{parent.__name__}:{name}"
        return f"{module}:{name}"


_steps: dict[str, Step] = {}
_hooks: dict[tuple[str, str], list[StepFn]] = {}
_loaded: set[str] = set()


def step(name: str, *, undo: str | None = None,
         launches: str | None = None) -> Callable[[StepFn], StepFn]:
    """Register a function as the step `name` (`undo`, `launches`: see the module's
    docstring); registering a name twice is an error."""

    def register(fn: StepFn) -> StepFn:
        existing = _steps.get(name)
        if existing and existing.fn is not fn:
            raise ConfigError(
                f"step {name!r} is registered twice ({existing.function} and "
                f"{fn.__module__}:{fn.__qualname__})",
                fix="give the team step a name of its own",
            )
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _steps[name] = Step(name=name, fn=fn, summary=summary, undo=undo, launches=launches)
        return fn

    return register


def hook(when: str, stage: str) -> Callable[[StepFn], StepFn]:
    """Run a function before or after every stage named `stage`."""
    if when not in WHEN:
        raise ConfigError(f"hook time {when!r} is not valid", fix="use 'before' or 'after'")

    def register(fn: StepFn) -> StepFn:
        fns = _hooks.setdefault((when, stage), [])
        if fn not in fns:
            fns.append(fn)
        return fn

    return register


def hooks(when: str, stage: str) -> list[StepFn]:
    return list(_hooks.get((when, stage), ()))


def get(name: str) -> Step:
    load()
    try:
        return _steps[name]
    except KeyError:
        raise InputError(
            f"unknown step {name!r}",
            fix=f"use a stage of the run's plan (`invoke plan`); known steps: "
            f"{', '.join(sorted(_steps))}",
        ) from None


def names() -> list[str]:
    load()
    return sorted(_steps)


def load(plugins: Iterable[str] = ()) -> None:
    """Import the built-in steps, entry-point plugins and the modules named in config."""
    modules = ["deploylib.steps", *plugins]
    for module in modules:
        if module in _loaded:
            continue
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(
                f"plugin module {module!r} cannot be imported ({exc})",
                fix="install it or put it on PYTHONPATH, or remove it from plugins",
            ) from None
        _loaded.add(module)
    if "entry-points" not in _loaded:
        _loaded.add("entry-points")
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            ep.load()


def declared(name: str) -> Step | None:
    """The step registered as `name`, if any (no loading, no error)."""
    return _steps.get(name)
