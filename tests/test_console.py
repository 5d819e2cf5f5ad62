"""What the operator sees: plain timestamped lines off a terminal, a live table on one."""

from __future__ import annotations

import io
import re

from deploylib import console
from deploylib.state import StageKey


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_every_line_is_timestamped():
    out = io.StringIO()
    reporter = console.for_run("in-place 1.2.3", ["publish-release", "rollout"], out)
    assert type(reporter) is console.Plain
    with reporter:
        reporter.stage(StageKey("publish-release"), console.RUNNING)
        reporter.log("> publish-release")
        reporter.batch("rollout", 1, 3)
    assert re.fullmatch(r"\[\d\d:\d\d:\d\d\] > publish-release\n", out.getvalue())


def test_on_a_terminal_a_table_shows_each_stage_with_its_state_and_the_batches(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out = Tty()
    reporter = console.for_run("in-place 1.2.3 to lab", ["publish-release", "select-hosts",
                                                         "rollout", "record"], out)
    assert isinstance(reporter, console.LiveTable)
    with reporter:
        reporter.stage(StageKey("publish-release"), console.RUNNING)
        reporter.stage(StageKey("publish-release"), console.DONE)
        reporter.stage(StageKey("select-hosts"), console.RUNNING)
        reporter.stage(StageKey("select-hosts"), console.FAILED)
        reporter.stage(StageKey("rollout"), console.RUNNING)
        reporter.batch("rollout", 2, 6)
        reporter.log("  6 host(s) reachable")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())  # colours, cursor
    assert "in-place 1.2.3 to lab — 1/4 stages" in text
    for name, icon in (("publish-release", "✓"), ("select-hosts", "✗"), ("rollout", "▶"),
                       ("record", "·")):
        assert re.search(rf"{icon}\s*│\s*{name}", text), name
    assert "batch 2/6" in text and "6 host(s) reachable" in text


def test_a_dumb_terminal_gets_plain_lines(monkeypatch):
    monkeypatch.setenv("TERM", "dumb")
    assert type(console.for_run("x", ["a"], Tty())) is console.Plain


def test_the_regions_row_shows_where_each_region_is(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out = Tty()
    reporter = console.for_run("immutable 2.0.0 to lab", ["copy-image", "regions", "record"],
                               out)
    with reporter:
        reporter.stage(StageKey("regions"), console.RUNNING)
        reporter.stage(StageKey.in_region("regions", "us-east-1", "promote"), console.DONE)
        reporter.stage(StageKey.in_region("regions", "eu-west-1", "wait-image"),
                       console.RUNNING)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert re.search(r"us-east-1 ✓ promote\s+eu-west-1 ▶ wait-image", text), text
    assert "0/3 stages" in text  # a region's stage is no row of its own


def test_log_lines_above_the_table_are_shown_as_written_with_no_markup_left(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    out = Tty()
    with console.for_run("in-place 1.2.3 to lab", ["rollout"], out) as reporter:
        reporter.log("> rollout/1/drain [not markup] [bold]x[/]")
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert re.search(r"\d\d:\d\d:\d\d > rollout/1/drain \[not markup\] \[bold\]x\[/\]", text)
    assert "[dim]" not in text


def test_the_title_never_wraps_onto_a_second_line(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "200")
    out = Tty()
    title = "immutable 2026.12.01-abcdef to production (run 20261201T120000-abcdef)"
    with console.for_run(title, ["publish-release", "regions"], out) as reporter:
        reporter.stage(StageKey("publish-release"), console.DONE)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert f"{title} — 1/2 stages," in text  # on one line, whatever the table's width
