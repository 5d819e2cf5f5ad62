"""How the tests are shared among xdist's workers: a unit of work — a test file, or the
files that share a lab (`xdist_group`) — to one worker at a time, the longest first.

The lab units first, then the rest; each part the longest first. The labs first: a
worker stops its labs once it reaches a test that needs none (tests/conftest.py), so a
lab file handed out after one would bring a lab up again (seconds of CPU, on a machine
the suite keeps busy). The longest first: the units are handed out in order of what they
took when last measured (tests/durations.json, as `pytest --record-durations` writes it
after a whole run), so the last unit a worker takes is a short one and the workers end
together, as pytest-split orders by its stored durations. A unit not measured yet goes
by its kind: one bringing up a lab of its own or sharing one first, other lab files
next, the rest last.

The groups reach xdist's controller in a file: xdist's own `--dist loadgroup` carries a
test's group as a suffix of its node id, which pytest 9.2's structured node ids no longer
let a plugin change (pytest-dev/pytest-xdist#1386): the groups were silently dropped, and
every worker ran a part of every lab file, each bringing up a lab of every shape. Here
each worker writes what it collected, `{node id: unit}`, before it reports its
collection, and the controller's scheduler (xdist's LoadScope, scoped by that map) reads
it when it first hands out work, after every worker reported.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).parent / "durations.json"
_KEY = "deploylib_test_groups"
_groups_dir = pytest.StashKey[Path]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--record-durations", action="store_true",
                     help="after a whole run, write each unit's seconds to "
                          "tests/durations.json (the order units are handed out in)")


def unit_of(item: pytest.Item) -> str:
    """The unit of work `item` is handed out in: its `xdist_group`s, else its file."""
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    return "_".join(names) or item.nodeid.split("::")[0]


def _unmeasured(item: pytest.Item) -> float:
    """What a unit not in tests/durations.json is taken to last, by its kind."""
    if item.get_closest_marker("own_lab") or item.get_closest_marker("xdist_group"):
        return 1000.0
    return 100.0 if item.get_closest_marker("lab") else 0.0


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    recorded = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    units = {item.nodeid: unit_of(item) for item in items}
    longest: dict[str, float] = {}
    needs_lab: set[str] = set()
    for item in items:
        unit = units[item.nodeid]
        longest[unit] = max(longest.get(unit, 0.0), recorded.get(unit, _unmeasured(item)))
        if item.get_closest_marker("lab"):
            needs_lab.add(unit)
    # stable: each unit's tests keep their order, and units of a length their file order
    items.sort(key=lambda item: (units[item.nodeid] not in needs_lab,
                                 -longest[units[item.nodeid]]))
    path = getattr(config, "workerinput", {}).get(_KEY)
    if path:  # a worker: the units, for the controller (written whole, then renamed)
        tmp = Path(f"{path}.{os.getpid()}")
        tmp.write_text(json.dumps(units))
        os.replace(tmp, path)


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config, "workerinput"):
        return
    if config.getoption("dist", "no") == "loadgroup":
        config.stash[_groups_dir] = Path(tempfile.mkdtemp(prefix="deploylib-test-groups-"))
    if config.getoption("record_durations"):
        config.pluginmanager.register(DurationRecorder(config), "deploylib-durations")


class DurationRecorder:
    """`--record-durations`: each test's setup, call and teardown added up by unit (on
    the controller, where every report arrives), written after a whole run that passed."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.seconds: dict[str, float] = defaultdict(float)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.seconds[report.nodeid] += report.duration

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        from tests.iam_audit import whole_suite

        if exitstatus != 0 or not whole_suite(self.config):
            print("\n--record-durations: only a whole run that passed is recorded")
            return
        directory = self.config.stash.get(_groups_dir, None)
        written = directory / "groups.json" if directory else None
        units = json.loads(written.read_text()) if written and written.exists() else {}
        totals: dict[str, float] = defaultdict(float)
        for nodeid, seconds in self.seconds.items():
            totals[units.get(nodeid) or nodeid.split("::")[0]] += seconds
        DURATIONS.write_text(json.dumps({u: round(s) for u, s in sorted(totals.items())},
                                        indent=1) + "\n")


def pytest_unconfigure(config: pytest.Config) -> None:
    if (directory := config.stash.get(_groups_dir, None)) is not None:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # noqa: ANN001 - xdist's WorkerController
    if (directory := node.config.stash.get(_groups_dir, None)) is not None:
        node.workerinput[_KEY] = str(directory / "groups.json")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201
    if (directory := config.stash.get(_groups_dir, None)) is None:
        return None  # another --dist: xdist's own
    from xdist.scheduler import LoadScopeScheduling

    class LoadGroupScheduling(LoadScopeScheduling):
        """xdist's LoadScope, a scope being a test's unit (`unit_of`)."""

        units: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.units is None:  # every worker wrote it before reporting
                written = directory / "groups.json"
                self.units = json.loads(written.read_text()) if written.exists() else {}
            return self.units.get(nodeid) or nodeid.split("::")[0]

    return LoadGroupScheduling(config, log)
