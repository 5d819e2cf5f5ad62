"""The step registry: built-in steps, a team's plugin module, entry points, hooks."""

from __future__ import annotations

import sys
import textwrap

import pytest

from deploylib import catalog, config
from deploylib import plan as planning
from deploylib.errors import ConfigError, InputError
from deploylib.steps import bake
from tests.conftest import REPO

sys.path.insert(0, str(REPO / "tests" / "plugins"))


def test_builtin_steps_are_registered_with_their_summaries():
    names = catalog.names()
    for name in ("publish-release", "install-release", "promote", "record", "drain"):
        assert name in names
    assert catalog.get("install-release").summary.startswith("Install the release")
    assert catalog.get("install-release").function == "deploylib.steps:install_release"


def test_unknown_step_is_bad_input():
    with pytest.raises(InputError, match="unknown step 'nope'"):
        catalog.get("nope")


def test_a_plugin_named_in_config_adds_a_step_and_hooks_without_editing_deploylib():
    cfg = config.parse(textwrap.dedent("""
        [environments.lab]
        provider = "lab"
        primary_region = "us-east-1"
        base_image = "deploylab/ubuntu-22.04-base-*"
        subnet = "s"
        security_group = "g"
        target_group = "t"
        artifact_bucket = "deploylab-artifacts"
        plugins = ["team_steps"]
        extra_stages = [{ step = "announce", after = "promote" }]
    """))
    env = cfg.environment("lab")
    catalog.load(env.plugins)
    assert catalog.get("announce").function == "team_steps:announce"
    assert [h.__name__ for h in catalog.hooks("before", "install-release")] == ["before_install"]
    # every procedure that promotes now announces right after
    for mode in ("immutable", "rebake-light"):
        names = [s.name for s in planning.plan(mode, env.extra_stages).walk()]
        assert names[names.index("promote") + 1] == "announce"


def test_a_plugin_found_through_an_entry_point(tmp_path, monkeypatch):
    pkg = tmp_path / "site"
    (pkg / "ep_steps.py").parent.mkdir(parents=True)
    (pkg / "ep_steps.py").write_text(
        "from deploylib.catalog import step\n"
        "@step('from-entry-point')\n"
        "def f(ctx):\n    'Registered through an entry point.'\n")
    dist = pkg / "ep_steps-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-steps\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[deploylib.steps]\nteam = ep_steps\n")
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.setattr(catalog, "_loaded", set(catalog._loaded) - {"entry-points"})
    catalog.load()
    assert catalog.get("from-entry-point").summary == "Registered through an entry point."


def test_a_step_name_registered_twice_is_refused():
    with pytest.raises(ConfigError, match="registered twice"):
        catalog.step("install-release")(lambda ctx: None)


def test_a_missing_plugin_module_names_the_fix():
    with pytest.raises(ConfigError, match="cannot be imported"):
        catalog.load(["no_such_team_module"])


def test_hook_time_must_be_before_or_after():
    with pytest.raises(ConfigError, match="hook time"):
        catalog.hook("during", "promote")


# -- each step that makes something declares what undoes it -------------------------------

# Roles of resources a run makes on purpose to outlive it, failed or not.
KEPT = {
    # the bake cache: the next bake with the same packages starts from it (gc ages it out)
    "foundation",
}


def tagged_roles(fn, seen=None) -> set[str]:
    """The roles `fn` tags new resources with (`ctx.tags(role)`), itself or through the
    step library's functions it calls, however deep."""
    import ast
    import inspect

    seen = set() if seen is None else seen
    if fn in seen:
        return set()
    seen.add(fn)
    roles: set[str] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and f.attr == "tags" and \
                isinstance(f.value, ast.Name) and f.value.id == "ctx":
            arg = node.args[0] if node.args else None
            roles.add(arg.value if isinstance(arg, ast.Constant) else "?")
            continue
        path = []
        while isinstance(f, ast.Attribute):
            path.insert(0, f.attr)
            f = f.value
        if not isinstance(f, ast.Name):
            continue
        target = fn.__globals__.get(f.id)
        for attr in path:
            target = getattr(target, attr, None)
        if inspect.isfunction(target) and target.__module__.startswith("deploylib.steps"):
            roles |= tagged_roles(target, seen)
    return roles


def test_every_step_that_tags_a_new_resource_declares_its_undo():
    catalog.load()
    missing = {name: sorted(roles) for name in catalog.names()
               if (roles := tagged_roles(catalog.get(name).fn) - KEPT)
               and catalog.get(name).undo is None}
    assert missing == {}
    # what it reads is what the steps do: the launches, the images, the templates
    for name in ("launch-builder", "launch-candidates", "create-image", "copy-image",
                 "fold-template"):
        assert tagged_roles(catalog.get(name).fn) - KEPT, name


def _launch_thing(ctx):  # a step's body tagging through the library's helper
    return bake.image_tags(ctx, None)


def test_a_step_that_tags_without_declaring_its_undo_is_found(monkeypatch):
    assert tagged_roles(_launch_thing) == {"image"}
    monkeypatch.setattr(catalog, "_steps", dict(catalog._steps))  # the registry, for this test
    catalog.step("t-launch-thing")(_launch_thing)  # registered with no undo
    with pytest.raises(AssertionError, match="t-launch-thing"):
        test_every_step_that_tags_a_new_resource_declares_its_undo()


def test_every_declared_undo_is_a_registered_step():
    catalog.load()
    for name in catalog.names():
        step = catalog.get(name)
        if step.undo:
            assert catalog.get(step.undo).name == step.undo
