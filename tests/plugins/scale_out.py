"""A scale-out (or a scale-in) in the middle of a procedure, at a chosen stage: every
region's server groups the run touches (the live one, and the run's own) grow by one
instance, or the live one shrinks by one, as an autoscaling policy would make them (the
lab's administrator, not the tool)."""

from deploylib import aws, live
from deploylib.catalog import step
from deploylib.lab import control


@step("scale-out")
def scale_out(ctx):
    record = live.record(ctx.aws, ctx.env) or {}
    grown = []
    for region in ctx.regions():
        names = {(record.get("server_groups") or {}).get(region),
                 ctx.facts.server_groups.get(region)}
        for name in sorted(n for n in names if n):
            group = aws.autoscaling.describe(ctx.aws.autoscaling(region), region, name)
            control.scale_group(ctx.env, region, name, group.desired + 1)
            grown.append(f"{region}/{name}")
    ctx.facts.team.setdefault("scaled", []).extend(grown)


@step("scale-in")
def scale_in(ctx):
    """The live groups asked to shrink by one; what each then began to terminate (moto's
    lifecycle state, read at once: the lab marks a scale-in's instances as it is asked)."""
    record = live.record(ctx.aws, ctx.env) or {}
    terminating = {}
    for region in ctx.regions():
        name = (record.get("server_groups") or {}).get(region)
        group = aws.autoscaling.describe(ctx.aws.autoscaling(region), region, name)
        control.scale_group(ctx.env, region, name, group.desired - 1)
        after = aws.autoscaling.describe(ctx.aws.autoscaling(region), region, name)
        terminating[region] = sorted(i for i, st in after.instances.items()
                                     if st.startswith("Terminating"))
    ctx.facts.team["terminating"] = terminating


@step("fail-here")
def fail_here(ctx):
    """A failure at the stage it is anchored to (a test's way to fail any stage)."""
    from deploylib.errors import CloudError

    raise CloudError("failed here on purpose (tests/plugins/scale_out.py)",
                     resource=ctx.region or ctx.env.name, fix="nothing to fix: a test")


@step("hold")
def hold(ctx):
    """Stop here until the run is killed (a test's way to catch a run mid-way)."""
    import threading

    threading.Event().wait()
