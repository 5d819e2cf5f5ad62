"""The run report: its data, and its page rendered by a real headless browser."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from deploylib import report
from deploylib.state import RunState, StageEntry, StageKey

T0 = 1_800_000_000.0


def fake_run(tmp_path: Path, run_id: str, mode: str, version: str,
             stages: list[tuple[str, float, str]]) -> RunState:
    """A run state whose stages took the given seconds, one after another."""
    state = RunState.create(tmp_path, env="lab", mode=mode, version=version, artifact="",
                            run_id=run_id)
    t = T0
    for name, seconds, status in stages:
        # As the engine marks them: the rollout makes an in-place release live.
        state.stages[StageKey(name)] = StageEntry(status=status, started_at=t,
                                                  ended_at=t + seconds, seconds=seconds,
                                                  live=name == "rollout")
        t += seconds
    state.status = "failed" if any(s == "failed" for _, _, s in stages) else "done"
    state.save()
    return state


def in_regions(state: RunState) -> RunState:
    """Give a run's `regions` group two regions, side by side: us-east-1 is live after
    6.5 s of the group, eu-west-1 (slower) at its end."""
    began = state.stages[StageKey("regions")].started_at
    for region, times in (("us-east-1", [3.0, 1.0, 1.0, 0.5, 1.0]),
                          ("eu-west-1", [5.0, 1.0, 2.0, 0.5, 4.0])):
        t = began
        for name, seconds in zip(["launch-candidates", "wait-ssh", "install-release",
                                  "smoke-test", "promote"], times, strict=True):
            state.stages[StageKey.in_region("regions", region, name)] = StageEntry(
                status="done", started_at=t, ended_at=t + seconds, seconds=seconds,
                live=name == "promote")
            t += seconds
    state.save()
    return state


@pytest.fixture
def three_runs(tmp_path):
    return [
        fake_run(tmp_path, "20261127T100000-aaaaaa", "in-place", "1.0.1",
                 [("publish-release", 0.2, "done"), ("select-hosts", 0.3, "done"),
                  ("rollout", 8.0, "done"), ("record", 0.1, "done")]),
        in_regions(fake_run(tmp_path, "20261127T110000-bbbbbb", "rebake-light", "1.0.2",
                            [("publish-release", 0.2, "done"), ("regions", 12.5, "done"),
                             ("create-image", 1.5, "done"), ("record", 0.1, "done")])),
        fake_run(tmp_path, "20261127T120000-cccccc", "immutable", "1.1.0",
                 [("publish-release", 0.2, "done"), ("launch-builder", 2.0, "done"),
                  ("wait-ssh", 1.0, "done"), ("provision", 2.0, "done"),
                  ("install-release", 1.0, "done"), ("stop-builder", 0.5, "done"),
                  ("create-image", 3.0, "done"), ("terminate-builder", 0.2, "done"),
                  ("copy-image", 4.0, "failed")]),
    ]


def test_time_to_live_ends_when_the_release_serves(three_runs):
    data = report.build(three_runs)
    assert [r["mode"] for r in data["runs"]] == ["in-place", "rebake-light", "immutable"]
    assert data["time_to_live"]["in-place"]["seconds"] == pytest.approx(8.5)
    # the release is live when the last region's promotion ends
    assert data["time_to_live"]["rebake-light"]["seconds"] == pytest.approx(12.7)
    lanes = [s for s in data["runs"][1]["stages"] if s.get("region")]
    assert [(s["name"], [p["name"] for p in s["parts"]][-1]) for s in lanes] == [
        ("us-east-1", "promote"), ("eu-west-1", "promote")]
    assert lanes[0]["parts"][-1]["start"] + lanes[0]["parts"][-1]["seconds"] == \
        pytest.approx(0.2 + 6.5)
    assert "immutable" not in data["time_to_live"]  # it failed: never live
    stages = data["runs"][2]["stages"]
    assert stages[-1] == {"name": "copy-image", "status": "failed", "start": pytest.approx(9.9),
                          "seconds": 4.0, "error": None, "live": False}


def test_the_page_is_self_contained_and_data_cannot_close_its_script(three_runs, tmp_path):
    three_runs[0].version = "</script><script>alert(1)</script>"
    page = report.render_html(report.build(three_runs))
    assert "</script><script>alert(1)" not in page
    assert not re.search(r"""(src|href)=["']https?:""", page)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def headless(*args: str) -> subprocess.CompletedProcess:
    assert CHROMIUM, "chromium is not installed (./dev setup installs it)"
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                           "--disable-dev-shm-usage", "--no-first-run", *args],
                          capture_output=True, text=True, timeout=120)


def test_the_timeline_renders_every_stage_of_every_run_in_a_real_browser(three_runs, tmp_path):
    from deploylib.facts import Window

    three_runs[0].facts.windows = [
        Window(stage="rollout/1/verify", regions=["us-east-1"], began=T0, ended=T0 + 60,
               passed=True, why="us-east-1: 5xx 0 of 900 requests"),
        Window(stage="rollout/2/verify", regions=["us-east-1"], began=T0 + 70,
               ended=T0 + 80, passed=False, why="alarm app-5xx in us-east-1 is in ALARM")]
    data = report.build(three_runs)
    assert [w["passed"] for w in data["runs"][0]["windows"]] == [True, False]
    _, page = report.write(tmp_path / "out", data)
    dom = headless("--virtual-time-budget=5000", "--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-rendered="yes"' in html  # the script ran to its end
    for run in three_runs:
        group = re.search(rf'<g class="run" data-run="{run.run_id}" data-mode="{run.mode}">'
                          r"(.*?)</g>", html, re.S)
        assert group, run.run_id
        drawn = re.findall(r'data-stage="([a-z-]+)" data-status="(\w+)"', group.group(1))
        assert drawn == [(name, entry.status) for name, entry in run.top.items()]
        # each region of a group: a lane with every one of its stages
        parts = re.findall(r'data-region="([a-z0-9-]+)" data-part="([a-z-]+)" '
                           r'data-status="(\w+)"', group.group(1))
        assert sorted(parts) == sorted((k.region, k.stage, e.status)
                                       for k, e in run.stages.items() if k.region)
    rows = re.findall(r'<tr data-mode="([a-z-]+)">', html)
    assert rows == ["in-place", "rebake-light"]
    # each window of a run, with its verdict
    windows = re.findall(r'<tr data-window="([a-z0-9/-]+)">(.*?)</tr>', html, re.S)
    assert [(w, "FAILED" in row) for w, row in windows] == [("rollout/1/verify", False),
                                                           ("rollout/2/verify", True)]
    shot = tmp_path / "shot.png"
    taken = headless("--window-size=1200,900", f"--screenshot={shot}", page.as_uri())
    assert taken.returncode == 0 and shot.stat().st_size > 10_000
