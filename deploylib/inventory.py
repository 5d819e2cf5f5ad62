"""What is live: every instance behind the environment's target groups, and its drift.

Reads only. For each live instance: id, address, region, image, the release baked into
that image (the image's deploy:release tag), the release it is running (asked of the
app itself), and drift when the two differ — a hotfix the image does not carry.

Server groups (fleet = "server-groups"): the baked release is that of the image the
instance's group launches from now (what a replacement boots: after `invoke fold`, the
live release), and each instance says how it got what it runs — `baked` (its image had
it), `boot` (installed as it came up: at its boot, the record's release then, or on a
run's candidate before it went live) or `in-place` (a rollout put it there) — and since
when. Under the hosts, each region's drift ledger as the record
keeps it (deploylib.ledger): what its new hosts launch from and what lies on top.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from deploylib import aws, health, ledger, live, parallel
from deploylib.config import Environment

GROUP_TAG = "aws:autoscaling:groupName"


def _when(value: dt.datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M") if value is not None else "-"


def _group_images(env: Environment, clients: aws.AwsClients, region: str) -> dict[str, str]:
    """Each server group's current launch image, by group name."""
    versions = aws.ec2.template_images(clients.ec2(region), region, env.group_prefix)
    return {g.name: versions.get(g.template_version, "") for g in aws.autoscaling.server_groups(
        clients.autoscaling(region), region, env.group_prefix)}


def how(running: str | None, own_release: str | None, launched: dt.datetime | None,
        recorded_at: str, *, launched_by_recording_run: bool = False) -> tuple[str, str]:
    """How an instance got the release it runs, and since when: its image had it
    (`baked`, since its launch), it was installed as it came up (`boot`: launched by the
    run that recorded the release — a rebake-light's candidate — or launched after the
    release was recorded, so its boot read it from the record) or a rollout did
    (`in-place`, since the release was recorded)."""
    if not running:
        return "-", "-"
    if running == own_release:
        return "baked", _when(launched)
    if launched_by_recording_run:
        return "boot", _when(launched)
    try:
        recorded = dt.datetime.strptime(recorded_at, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=dt.UTC)
    except ValueError:
        return "in-place", "-"
    if isinstance(launched, dt.datetime) and launched >= recorded:
        return "boot", _when(launched)
    return "in-place", _when(recorded)


def fleet(env: Environment, clients: aws.AwsClients) -> dict[str, Any]:
    record = live.record(clients, env)
    recorded_run = (record or {}).get("run_id")

    def region_rows(region: str) -> list[dict[str, Any]]:
        # Deregistered targets are shown draining for the whole deregistration delay,
        # long after they served their last request: they are not live.
        states = {i: s for i, s in aws.elb.target_states(
            clients.elbv2(region), region, live.target_group(clients, env, region)).items()
            if s != "draining"}
        instances = aws.ec2.describe(clients.ec2(region), region, sorted(states),
                                     public=env.address == "public")
        launches = _group_images(env, clients, region) if env.server_groups else {}
        baked = aws.ec2.image_tags(clients.ec2(region), region, sorted(
            {i.image_id for i in instances} | {i for i in launches.values() if i}))
        rows = []
        for inst in instances:
            # Over HTTP only: a status-only app's release is proven on the host, in a run.
            running = health.serving(env, inst.address or "", on_host=None)
            own = baked.get(inst.image_id, {}).get(aws.TAG_RELEASE)
            group = inst.tags.get(GROUP_TAG)
            # What a replacement would boot: its group's image now, else its own.
            image_id = launches.get(group or "") or inst.image_id
            image_release = baked.get(image_id, {}).get(aws.TAG_RELEASE)
            row = {
                "instance_id": inst.instance_id, "region": region, "address": inst.address,
                "state": inst.state, "target_health": states.get(inst.instance_id),
                "image_id": image_id, "baked_release": image_release,
                "running_release": running,
                "drift": bool(running and running != image_release),
            }
            if env.server_groups:
                row["server_group"] = group
                row["how"], row["since"] = how(
                    running, own, inst.launched, (record or {}).get("recorded_at", ""),
                    launched_by_recording_run=recorded_run is not None
                    and inst.tags.get(aws.TAG_RUN) == recorded_run)
            rows.append(row)
        return rows

    def recorded_image(region: str) -> dict[str, str]:
        image = ((record or {}).get("images") or {}).get(region)
        tags = aws.ec2.image_tags(clients.ec2(region), region, [image]) if image else {}
        return tags.get(image, {}) if image else {}

    recorded = parallel.each(env.all_regions, recorded_image, key=lambda r: r)
    results = parallel.each(env.all_regions, region_rows, key=lambda r: r)
    errors = {r: str(e) for r, e in results.items() if isinstance(e, Exception)}
    rows = [row for r in env.all_regions if isinstance(results.get(r), list) for row in results[r]]
    images = {r: v for r, v in recorded.items() if not isinstance(v, Exception)}
    return {"environment": env.name, "record": record, "instances": rows, "errors": errors,
            "recorded_image_releases": {r: t.get(aws.TAG_RELEASE) for r, t in images.items()},
            # the release bytes each region's recorded image was baked with
            "recorded_image_digests": {r: t[aws.TAG_DIGEST] for r, t in images.items()
                                       if aws.TAG_DIGEST in t}}


def table(report: dict[str, Any]) -> str:
    rec = report["record"] or {}
    lines = [
        f"environment {report['environment']}: live release "
        f"{rec.get('release', '(none recorded)')} via {rec.get('procedure', '-')}"
        f" (run {rec.get('run_id', '-')})",
    ]
    groups = any("server_group" in r for r in report["instances"])
    head: tuple[str, ...] = ("instance", "region", "address", "image", "baked", "running")
    if groups:
        head += ("group", "how", "since")
    head += ("drift",)
    rows = [(r["instance_id"], r["region"], r["address"] or "-", r["image_id"],
             r["baked_release"] or "-", r["running_release"] or "?",
             *((r.get("server_group") or "-", r.get("how", "-"), r.get("since", "-"))
               if groups else ()),
             "DRIFT" if r["drift"] else "") for r in report["instances"]]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=False)]
    for row in (head, *rows):
        lines.append("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)).rstrip())
    drifted = [r for r in report["instances"] if r["drift"]]
    if drifted and groups:
        lines.append(f"{len(drifted)} host(s) run a release their group's image does not "
                     "carry: a new or replacement instance installs the recorded release at "
                     "boot; `invoke fold` puts it in the image.")
    elif drifted:
        baked = report.get("recorded_image_releases", {})
        covered = [r for r in drifted if baked.get(r["region"]) == r["running_release"]]
        lines.append(f"{len(drifted)} host(s) run a release their image does not carry.")
        if covered:
            lines.append(f"  {len(covered)} of them: the recorded image of their region carries "
                         "it, so a replacement would match.")
        if len(covered) < len(drifted):
            lines.append(f"  {len(drifted) - len(covered)} of them: no recorded image carries "
                         "it; a replacement would lose it until the next bake.")
    for region, entry in sorted((rec.get("ledger") or {}).items()):
        lines.append(ledger.describe(region, ledger.Entry.model_validate(entry)))
    digests = report.get("recorded_image_digests") or {}
    if digests:
        if len(set(digests.values())) == 1:
            one = next(iter(digests.values()))
            lines.append(f"The recorded images of {', '.join(sorted(digests))} carry the same "
                         f"release bytes (sha256 {one[:12]}…).")
        else:
            lines.append("The recorded images carry different release bytes: " + ", ".join(
                f"{r} {d[:12]}…" for r, d in sorted(digests.items())))
    for region, err in report["errors"].items():
        lines.append(f"{region}: could not be read: {err}")
    last = report.get("last_run") or {}
    for w in last.get("windows") or []:
        verdict = "under way" if w["passed"] is None else "passed" if w["passed"] else "FAILED"
        lines.append(f"window {w['stage']} of run {last['run_id']} ({last['mode']} "
                     f"{last['version']}): {verdict}: {w['why']}")
    return "\n".join(lines)


def last_run(state_dir: str) -> dict[str, Any] | None:
    """This machine's newest run of the environment: its verification windows' verdicts
    (status shows them under the fleet)."""
    from deploylib import report

    states = report.load_states(state_dir, limit=1)
    return report.run_summary(states[0]) if states else None
