"""The run report: JSON, and one self-contained HTML page with a timeline of each run.

Built from run states only (nothing secret is in them). The page needs no network and
no files beside it: its data is embedded as JSON and drawn by a small inline script as
an SVG timeline, one lane per run, one bar per stage, on one time axis, so the
time-to-live of immutable, rebake-light and in-place compare at a glance.
"""

from __future__ import annotations

import html
import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from deploylib.state import RunState, StageEntry


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


def render_html(report: dict[str, Any]) -> str:
    # JSON inside <script> must not be able to close the tag.
    data = json.dumps(report, sort_keys=True).replace("</", "<\\/")
    title = html.escape(f"deploylib runs — {report['generated_at']}")
    return _PAGE.replace("__TITLE__", title).replace("__DATA__", data)


_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>__TITLE__</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1d2330; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .sub { color: #667; margin-bottom: 16px; }
  table { border-collapse: collapse; margin: 8px 0 20px; }
  th, td { padding: 4px 12px; border-bottom: 1px solid #dde; text-align: left; }
  td.num { text-align: right; font-variant-numeric: tabular-nums; }
  svg text { font: 12px system-ui, sans-serif; fill: #1d2330; }
  .bar.done { fill: #4c8bf5; } .bar.failed { fill: #e5484d; }
  .bar.running, .bar.pending { fill: #f5a524; }
  .bar.live { fill: #30a46c; }
  .ttl { stroke: #30a46c; stroke-width: 2; stroke-dasharray: 4 3; }
  .axis { stroke: #99a; } .grid { stroke: #eef; }
  .legend span { display: inline-block; margin-right: 14px; }
  .legend i { display: inline-block; width: 12px; height: 12px; margin-right: 4px;
              vertical-align: -1px; border-radius: 2px; }
</style>
</head>
<body>
<h1>Runs and their time to live</h1>
<div class="sub" id="sub"></div>
<table id="ttl"><thead><tr><th>procedure</th><th>release</th><th>run</th>
<th>time to live</th></tr></thead><tbody></tbody></table>
<div class="legend"><span><i style="background:#4c8bf5"></i>stage</span>
<span><i style="background:#30a46c"></i>stage that makes the release live</span>
<span><i style="background:#e5484d"></i>failed</span>
<span>dashed line: time to live</span></div>
<svg id="timeline" xmlns="http://www.w3.org/2000/svg"></svg>
<script type="application/json" id="data">__DATA__</script>
<script>
(function () {
  const report = JSON.parse(document.getElementById("data").textContent);
  const NS = "http://www.w3.org/2000/svg";
  const svg = document.getElementById("timeline");
  const el = (name, attrs, text) => {
    const e = document.createElementNS(NS, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  };
  document.getElementById("sub").textContent =
    report.runs.length + " run(s), generated " + report.generated_at;
  const tbody = document.querySelector("#ttl tbody");
  for (const [mode, r] of Object.entries(report.time_to_live)) {
    const tr = document.createElement("tr");
    tr.dataset.mode = mode;
    for (const [v, cls] of [[mode, ""], [r.version, ""], [r.run_id, ""],
                            [r.seconds.toFixed(1) + " s", "num"]]) {
      const td = document.createElement("td");
      td.textContent = v; if (cls) td.className = cls; tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }
  const label = 330, width = 1100, laneH = 26, gap = 6;
  const lanes = report.runs.flatMap(run => [
    {run: run, head: true}, ...run.stages.map(s => ({run: run, stage: s}))]);
  const longest = Math.max(1, ...report.runs.map(r => r.total || 0));
  const scale = (width - label - 70) / longest;  // room for the last bar's label
  const height = 30 + lanes.length * (laneH + gap);
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  svg.setAttribute("viewBox", "0 0 " + width + " " + height);
  const step = longest > 120 ? 30 : longest > 40 ? 10 : longest > 10 ? 2 : 1;
  for (let t = 0; t <= longest; t += step) {
    const x = label + t * scale;
    svg.appendChild(el("line", {x1: x, x2: x, y1: 18, y2: height, class: "grid"}));
    svg.appendChild(el("text", {x: x, y: 12, "text-anchor": "middle"}, t + "s"));
  }
  let y = 24;
  let current = null;
  for (const lane of lanes) {
    if (lane.head) {
      const r = lane.run;
      current = el("g", {class: "run", "data-run": r.run_id, "data-mode": r.mode});
      svg.appendChild(current);
      current.appendChild(el("text", {x: 0, y: y + 17, "font-weight": "bold"},
        r.mode + " " + r.version + " — " + r.status +
        (r.time_to_live != null ? " — live in " + r.time_to_live.toFixed(1) + "s" : "")));
      if (r.time_to_live != null) {
        const x = label + r.time_to_live * scale;
        current.appendChild(el("line", {x1: x, x2: x, y1: y, y2: y + (r.stages.length + 1) *
          (laneH + gap), class: "ttl"}));
      }
    } else if (lane.stage.parts) {
      // One region of a group: its stages side by side in one lane.
      const s = lane.stage;
      current.appendChild(el("text", {x: 32, y: y + 17}, s.name));
      for (const p of s.parts) {
        const live = p.live && p.status === "done";
        const w = Math.max(2, (p.seconds || 0) * scale);
        const bar = el("rect", {x: label + p.start * scale, y: y + 6, width: w,
          height: laneH - 12, rx: 2, class: "bar " + (live ? "live" : p.status),
          "data-region": s.name, "data-part": p.name, "data-status": p.status});
        bar.appendChild(el("title", {}, s.name + " " + p.name + ": " + (p.seconds != null ?
          p.seconds.toFixed(2) + "s" : p.status) + (p.error ? " — " + p.error : "")));
        current.appendChild(bar);
      }
      const last = s.parts[s.parts.length - 1];
      const end = last.start + (last.seconds || 0);
      current.appendChild(el("text", {x: label + end * scale + 6, y: y + 17},
        last.live && last.status === "done" ?
          "live at " + end.toFixed(1) + "s" : last.name + " " + last.status));
    } else {
      const s = lane.stage;
      const live = s.live && s.status === "done";
      current.appendChild(el("text", {x: 16, y: y + 17}, s.name));
      const w = Math.max(2, (s.seconds || 0) * scale);
      const bar = el("rect", {x: label + s.start * scale, y: y + 4, width: w,
        height: laneH - 8, rx: 3, class: "bar " + (live ? "live" : s.status),
        "data-stage": s.name, "data-status": s.status});
      bar.appendChild(el("title", {}, s.name + ": " + (s.seconds != null ?
        s.seconds.toFixed(2) + "s" : s.status) + (s.error ? " — " + s.error : "")));
      current.appendChild(bar);
      current.appendChild(el("text", {x: label + s.start * scale + w + 6, y: y + 17},
        s.seconds != null ? s.seconds.toFixed(1) + "s" : ""));
    }
    y += laneH + gap;
  }
  document.body.dataset.rendered = "yes";
})();
</script>
</body>
</html>
"""
