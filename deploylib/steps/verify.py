"""The verification window: once a release reaches users (an in-place canary, each wave,
an image-based release once every region is live), watch what they see before going on.

One step in all three procedures. It reads the load balancer's metrics and the team's
alarms from CloudWatch (deploylib.aws.cloudwatch) and judges them (deploylib.verdict):
- a team alarm in ALARM at any look fails the window at once;
- the metrics are read per whole period once they have arrived (`verify.period`,
  `verify.delay`): a window fails as soon as the periods in fail, and passes only when
  every period of it is in and judged.
A failed window raises WindowFailed; what serves is put back by the procedure's own
means: a rollout switches every updated host back (deploylib.engine.batches), a run
that launched candidates demotes them (the hosts or group they replaced were kept).
"""

from __future__ import annotations

import math
import time

from deploylib import aws
from deploylib.catalog import step
from deploylib.context import Context, by_region
from deploylib.errors import WindowFailed
from deploylib.facts import Window
from deploylib.state import StageKey
from deploylib.verdict import Limits, Traffic, Verdict, judge

# The longest pause between two looks at the alarms.
LOOK_EVERY = 10.0


def _which(ctx: Context) -> tuple[str, float, list[str], str]:
    """(what is watched, for how long, in which regions, the window's name)."""
    settings = ctx.env.verify
    if ctx.option.get("window") != "batch":
        return "the release", settings.live_for, ctx.regions(), "verify"
    batches = ctx.facts.batches or []
    ids = {h.instance_id for h in ctx.batch or []}
    n = next((n for n, b in enumerate(batches, start=1)
              if ids & {h.instance_id for h in b}), 0)
    regions = [r for r in ctx.env.all_regions if r in by_region(ctx.batch or [])]
    if n == 1:
        return "the canary", settings.canary_for, regions, "rollout/1/verify"
    return f"wave {n}", settings.wave_for, regions, f"rollout/{n}/verify"


@step("verify")
def verify(ctx: Context) -> None:
    """Watch users' requests and the team's alarms for the configured window; fail, and
    so put back what served before, when the release hurts them."""
    if ctx.installing is not None or ctx.state.is_done(StageKey("record")):
        # A switch-back goes to what served before; a catch-up after the record is of a
        # release already judged.
        return
    what, seconds, regions, name = _which(ctx)
    if not seconds or not regions:
        ctx.log(f"  no window for {what} (verify settings)")
        return
    settings = ctx.env.verify
    limits = Limits(settings.max_error_rise, settings.max_latency_ratio,
                    settings.min_latency_rise, settings.min_requests, settings.latency)
    period, delay = settings.period, settings.delay
    opened = time.time()
    # Whole periods: the one the window opens in counts (the release served in it).
    start = math.floor(opened / period) * period
    end = start + max(1, math.ceil(seconds / period)) * period
    # Before the run: as long a span, ending with the period the run started in.
    before_end = math.floor(ctx.state.created_at / period) * period
    before_start = before_end - (end - start)
    sources = {r: aws.cloudwatch.source(ctx.aws.elbv2(r), r, ctx.target_group(r))
               for r in regions}
    before = {r: aws.cloudwatch.traffic(ctx.aws.cloudwatch(r), sources[r], before_start,
                                        before_end, settings.latency) for r in regions}
    alarms = {r: ctx.env.alarms(r) for r in regions}
    window = Window(stage=name, regions=regions, began=opened)
    ctx.facts.windows = [w for w in ctx.facts.windows if w.stage != name] + [window]
    ctx.save()
    ctx.log(f"  watching {what} in {' '.join(regions)} for {end - start:g}s of metrics "
            f"(+{delay:g}s for them to arrive), "
            + (f"alarms {', '.join(sorted({a for r in alarms.values() for a in r}))}"
               if any(alarms.values()) else "no alarms"))

    def fail(why: str) -> WindowFailed:
        window.ended, window.passed, window.why = time.time(), False, why
        ctx.save()
        return WindowFailed(
            f"the {name} window failed: {why}", resource=f"release {ctx.release.version}",
            fix="what served before serves again; fix the release and deploy it again "
                "(`invoke status` shows each window's verdict)")

    judged_to = start
    told = opened
    while True:
        if ctx.lease is not None:  # a run whose lock was broken watches nothing more
            ctx.lease.check()
        now = time.time()
        for region in regions:
            firing = aws.cloudwatch.firing(ctx.aws.cloudwatch(region), region, alarms[region])
            if firing:
                alarm, reason = sorted(firing.items())[0]
                raise fail(f"alarm {alarm} in {region} is in ALARM ({reason})")
        # The periods whose metrics are in by now.
        arrived = min(end, math.floor((now - delay) / period) * period)
        if arrived > judged_to:
            verdicts = _judge(ctx, regions, sources, before, start, arrived, limits)
            judged_to = arrived
            failed = [(r, v) for r, v in verdicts.items() if not v.passed]
            if failed:
                region, verdict = failed[0]
                raise fail(f"{region}: {verdict.why}")
            if arrived >= end:
                for region, verdict in verdicts.items():
                    ctx.log(f"  {region}: " + "; ".join(verdict.findings))
                window.ended, window.passed = time.time(), True
                window.why = "; ".join(f"{r}: " + "; ".join(v.findings)
                                       for r, v in verdicts.items())
                ctx.save()
                ctx.log(f"  {what} passed its window")
                return
        left = end + delay - now
        if now - told >= LOOK_EVERY:
            told = now
            ctx.log(f"  {what}: {max(0.0, left):.0f}s of window left, "
                    f"{max(0, judged_to - start):g}s of metrics judged")
        ctx.stopping.wait(max(0.05, min(LOOK_EVERY, period, left if left > 0 else period)))


def _judge(ctx: Context, regions: list[str], sources: dict[str, aws.cloudwatch.Source],
           before: dict[str, Traffic], start: float, end: float, limits: Limits
           ) -> dict[str, Verdict]:
    return {r: judge(aws.cloudwatch.traffic(ctx.aws.cloudwatch(r), sources[r], start, end,
                                            limits.latency), before[r], limits)
            for r in regions}
