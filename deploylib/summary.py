"""A run's stage timings and time-to-live, as data and as the text printed at its end."""

from __future__ import annotations

from typing import Any

from deploylib.state import RunState


def timings(state: RunState) -> dict[str, Any]:
    """Stage timings and time-to-live (first stage start to the release serving)."""
    from deploylib import report

    run = report.run_summary(state)
    return {
        "stages": [{"name": name, "status": e.status, "seconds": e.seconds}
                   for name, e in state.top.items()],
        "time_to_live": run["time_to_live"],
        "total": run["total"],
    }


def text(state: RunState) -> str:
    t = timings(state)
    lines = [f"run {state.run_id}: {state.mode} {state.version} to {state.env} — {state.status}"]
    for s in t["stages"]:
        secs = f"{s['seconds']:7.2f}s" if s["seconds"] is not None else "        "
        lines.append(f"  {s['name']:<20} {s['status']:<8} {secs}")
        per_batch: dict[str, list[float]] = {}
        per_region: dict[str, list[str]] = {}
        for key, entry in state.members(s["name"]).items():
            if key.batch is not None:
                # A rollout's stages, summed over its batches: where the time goes.
                per_batch.setdefault(key.stage, []).append(entry.seconds or 0.0)
            elif key.region is not None:
                # The regions ran side by side: each region's own stages, in order.
                per_region.setdefault(key.region, []).append(
                    f"{key.stage} {entry.seconds or 0.0:.2f}s")
        for name, secs_list in per_batch.items():
            lines.append(f"    {name:<18} x{len(secs_list):<6} {sum(secs_list):7.2f}s")
        for region, parts_done in per_region.items():
            lines.append(f"    {region:<18} {', '.join(parts_done)}")
    if t["time_to_live"] is not None:
        lines.append(f"  time to live: {t['time_to_live']:.2f}s   total: {t['total']:.2f}s")
    return "\n".join(lines)
