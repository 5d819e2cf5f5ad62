"""The run report: JSON, and one self-contained HTML page with a timeline of each run.

Built from run states only (nothing secret is in them). The page needs no network and
no files beside it: its data is embedded as JSON and drawn by a small inline script as
an SVG timeline, one lane per run, one bar per stage, on one time axis, so the
time-to-live of immutable, rebake-light and in-place compare at a glance. The page is a
template (templates/report.html.j2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploylib.state import RunState, StageEntry

if TYPE_CHECKING:  # imported when a page is rendered, not with the command line
    import jinja2


def run_summary(state: RunState) -> dict[str, Any]:
    """One run: its stages as offsets from its start, and its time-to-live (to the end
    of the last stage that made the release live: the plan marks which those are)."""
    top = {name: e for name, e in state.top.items() if e.started_at is not None}
    began = min((e.started_at for e in top.values() if e.started_at is not None),
                default=None)

    def bar(name: str, e: StageEntry) -> dict[str, Any]:
        assert e.started_at is not None and began is not None
        return {"name": name, "status": e.status, "live": e.live,
                "start": round(e.started_at - began, 3),
                "seconds": round(e.ended_at - e.started_at, 3) if e.ended_at else None,
                "error": e.error}

    stages = []
    for name, e in sorted(top.items(), key=lambda kv: kv[1].started_at or 0.0):
        stages.append(bar(name, e))
        # A group of regions: one lane per region under it, its stages as segments, so
        # a region going live while another still waits for its copy shows.
        lanes: dict[str, list[dict[str, Any]]] = {}
        for key, sub in state.members(name).items():
            if key.region is not None and sub.started_at is not None:
                lanes.setdefault(key.region, []).append(bar(key.stage, sub))
        for region, parts_of in lanes.items():
            parts_of.sort(key=lambda p: p["start"])
            stages.append({"name": region, "region": True, "parts": parts_of,
                           "status": parts_of[-1]["status"]})
    live_at = max((e.ended_at for e in state.stages.values()
                   if e.live and e.status == "done" and e.ended_at is not None), default=None)
    ends = [e.ended_at for e in top.values() if e.ended_at is not None]
    return {
        "run_id": state.run_id, "env": state.env, "mode": state.mode,
        "version": state.version, "status": state.status,
        "started_at": began,
        "time_to_live": round(live_at - began, 2)
        if began is not None and live_at is not None else None,
        "total": round(max(ends) - began, 2) if began is not None and ends else None,
        "stages": stages,
        "windows": [w.model_dump() for w in state.facts.windows],
    }


def build(states: Iterable[RunState]) -> dict[str, Any]:
    runs = [run_summary(s) for s in states]
    runs = [r for r in runs if r["started_at"] is not None]
    runs.sort(key=lambda r: r["started_at"])
    best: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["time_to_live"] is not None and r["status"] == "done":
            best[r["mode"]] = r  # the latest finished run of each procedure
    return {"generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "runs": runs,
            "time_to_live": {m: {"run_id": r["run_id"], "version": r["version"],
                                 "seconds": r["time_to_live"]} for m, r in best.items()}}


def load_states(state_dir: str | Path, limit: int = 12) -> list[RunState]:
    """The newest runs in a state directory (run ids sort by time)."""
    out = []
    for path in sorted(Path(state_dir).glob("*.json"))[-limit:]:
        try:
            out.append(RunState.load(state_dir, path.stem))
        except Exception:  # noqa: BLE001 - a broken state is left out of a report
            continue
    return out


def write(directory: str | Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = json.dumps(report, indent=2, sort_keys=True)
    (out / "report.json").write_text(data + "\n")
    page = out / "report.html"
    page.write_text(render_html(report))
    return out / "report.json", page


@lru_cache(maxsize=1)
def _page() -> jinja2.Template:
    """The page's template (templates/report.html.j2), HTML-escaping what it is given."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("deploylib", "templates"),
                             undefined=jinja2.StrictUndefined, autoescape=True)
    return env.get_template("report.html.j2")


def render_html(report: dict[str, Any]) -> str:
    from markupsafe import Markup

    # The JSON goes in as it is (a script element's text is not HTML-decoded), but must
    # not be able to close the tag.
    data = Markup(json.dumps(report, sort_keys=True).replace("</", "<\\/"))
    return str(_page().render(title=f"deploylib runs — {report['generated_at']}", data=data))
