"""What the operator sees while a run goes: the same events, shown two ways.

On a terminal, a live table of the plan's stages (status, elapsed time, a bar for the
run and one for the in-place batches), with the log scrolling above it. Anywhere else
(Jenkins, a pipe, a file), plain lines with a timestamp each, which Jenkins' Timestamper
and log parsers read well. Everything goes to stderr: stdout is for what a machine reads
(`--json`, run ids).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from deploylib.state import DONE, FAILED, RUNNING, StageKey

if TYPE_CHECKING:  # rich is imported when a table is drawn, not with the command line
    from rich.console import Group
    from rich.live import Live


class Plain:
    """Timestamped lines, one per event."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr

    def log(self, text: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {text}", file=self.stream, flush=True)

    def stage(self, key: StageKey, status: str) -> None:
        pass  # the runner's own log lines say it: "> stage", "ok stage 1.2s", "x stage …"

    def batch(self, group: str, done: int, total: int) -> None:
        pass  # so do its "> batch n/N" lines

    def __enter__(self) -> Plain:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class LiveTable(Plain):
    """A table of stages redrawn in place (rich), the log printed above it."""

    _ICON = {"pending": "[dim]·[/]", RUNNING: "[yellow]▶[/]", DONE: "[green]✓[/]",
             FAILED: "[red]✗[/]"}

    def __init__(self, title: str, stages: Sequence[str], stream: TextIO | None = None):
        from rich.console import Console

        super().__init__(stream)
        self.title = title
        self.console = Console(file=self.stream)
        self.rows: dict[str, dict[str, Any]] = {s: {"status": "pending"} for s in stages}
        self.batches: dict[str, tuple[int, int]] = {}
        # Per group of regions: each region's current stage and its status.
        self.regions: dict[str, dict[str, tuple[str, str]]] = {}
        self.began = time.monotonic()
        self._live: Live | None = None

    def _table(self) -> Group:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        now = time.monotonic()
        done = sum(1 for r in self.rows.values() if r["status"] == DONE)
        # The title above the table, not in it: a table wraps its title to its own width.
        title = Text(f"{self.title} — {done}/{len(self.rows)} stages, "
                     f"{now - self.began:.0f}s", style="bold", no_wrap=True,
                     overflow="ellipsis")
        table = Table(expand=False)
        table.add_column("", width=1)
        table.add_column("stage")
        table.add_column("progress")
        table.add_column("elapsed", justify="right")
        for name, row in self.rows.items():
            secs = row.get("seconds")
            if row["status"] == RUNNING:
                secs = now - row["started"]
            progress = ""
            if name in self.batches:
                n, total = self.batches[name]
                filled = int(20 * n / total) if total else 0
                bar = f"[green]{'━' * filled}[/][dim]{'━' * (20 - filled)}[/]"
                progress = f"{bar} batch {n}/{total}"
            elif name in self.regions:
                progress = "  ".join(
                    f"{region} {self._ICON.get(st, '?')} {stage}"
                    for region, (stage, st) in self.regions[name].items())
            table.add_row(self._ICON.get(row["status"], "?"), name, progress,
                          f"{secs:.1f}s" if secs is not None else "")
        return Group(title, table)

    def log(self, text: str) -> None:
        if self._live is not None:
            from rich.text import Text

            # The line as written (it may hold brackets: never read as markup), after a
            # dimmed time.
            self._live.console.print(Text.assemble((time.strftime("%H:%M:%S"), "dim"), " ",
                                                   text), highlight=False)
            self._live.update(self._table())
        else:
            super().log(text)

    def stage(self, key: StageKey, status: str) -> None:
        if key.region is not None and key.group in self.rows:
            # A region's stage: its group's row shows where each region is.
            self.regions.setdefault(key.group, {})[key.region] = (key.stage, status)
            if self._live is not None:
                self._live.update(self._table())
            return
        if key.group is not None or key.stage not in self.rows:
            return  # a per-batch stage: its group's row shows the batches
        row = self.rows[key.stage]
        if status == RUNNING:
            row.update(status=RUNNING, started=time.monotonic())
        else:
            row.update(status=status, seconds=time.monotonic() - row.get("started", self.began))
        if self._live is not None:
            self._live.update(self._table())

    def batch(self, group: str, done: int, total: int) -> None:
        self.batches[group] = (done, total)
        if self._live is not None:
            self._live.update(self._table())

    def __enter__(self) -> LiveTable:
        from rich.live import Live

        self._live = Live(self._table(), console=self.console, refresh_per_second=4,
                          transient=False)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(None, None, None)
            self._live = None


def for_run(title: str, stages: Sequence[str], stream: TextIO | None = None) -> Plain:
    """The live table on a terminal, plain lines anywhere else (and on TERM=dumb, where
    the table cannot be drawn)."""
    import os

    stream = stream or sys.stderr
    if stream.isatty() and os.environ.get("TERM", "") not in ("", "dumb"):
        try:
            return LiveTable(title, stages, stream)
        except ImportError:
            pass
    return Plain(stream)
