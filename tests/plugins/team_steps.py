"""A team's own steps, as a team would write them: no change to deploylib needed."""

from deploylib.catalog import hook, step

CALLS: list[tuple[str, str]] = []


@step("announce")
def announce(ctx):
    """Write the release into a file on the run (a stand-in for a chat message)."""
    CALLS.append(("announce", ctx.state.version))
    ctx.facts.team.setdefault("announced", []).append(ctx.state.version)


@hook("before", "install-release")
def before_install(ctx):
    CALLS.append(("before install-release", ctx.stage.targets))
    ctx.facts.team.setdefault("hooks", []).append(f"before install-release on {ctx.stage.targets}")


@hook("after", "install-release")
def after_install(ctx):
    ctx.facts.team.setdefault("hooks", []).append(f"after install-release on {ctx.stage.targets}")
