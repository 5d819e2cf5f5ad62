"""The lock files (bin/lock-deps): every dependency pinned and hashed, in step with
pyproject.toml, and what this virtualenv holds; pip refuses a file not hashed in one."""

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parent.parent
# The agent's two (the shared library's resources) and the suite's.
BUILD_LOCK = "resources/deploylib/requirements-build.lock"
RUN_LOCK = "resources/deploylib/requirements.lock"
LAB_LOCK = "resources/deploylib/requirements-lab.lock"
LOCKS = (BUILD_LOCK, RUN_LOCK, "requirements-dev.lock", LAB_LOCK)


def _lock_deps():
    loader = importlib.machinery.SourceFileLoader("lock_deps", str(REPO / "bin/lock-deps"))
    spec = importlib.util.spec_from_loader("lock_deps", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def pins(name: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, [sha256])} as pip reads the lock file."""
    text = (REPO / name).read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        spec, *options = line.split(" --hash=")
        req = Requirement(spec.strip())
        (pinned,) = req.specifier
        assert pinned.operator == "==", line
        found[canonicalize_name(req.name)] = (pinned.version,
                                              [o.strip().removeprefix("sha256:")
                                               for o in options])
    return found


@pytest.mark.parametrize("name", LOCKS)
def test_every_entry_is_pinned_with_sha256_hashes(name):
    locked = pins(name)
    assert locked
    for package, (_, digests) in locked.items():
        assert digests, package
        assert all(len(d) == 64 and int(d, 16) >= 0 for d in digests), package


def test_the_locks_satisfy_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    wanted = {RUN_LOCK: project["project"]["dependencies"],
              "requirements-dev.lock": (project["project"]["dependencies"]
                                        + project["project"]["optional-dependencies"]["test"]),
              BUILD_LOCK: project["build-system"]["requires"]}
    for name, requirements in wanted.items():
        locked = pins(name)
        for line in requirements:
            req = Requirement(line)
            version, _ = locked[canonicalize_name(req.name)]
            assert req.specifier.contains(version), f"{name}: {req} but {version} locked"


def test_this_virtualenv_holds_exactly_what_the_dev_lock_pins():
    """./dev setup installs from the lock: a package here at another version means it did
    not (or the lock changed and setup has not been run again)."""
    for package, (version, _) in pins("requirements-dev.lock").items():
        assert importlib.metadata.version(package) == version, package


def _wheel(where: Path) -> Path:
    """The smallest wheel pip installs, made here (the test needs no index)."""
    path = where / "lockprobe-1.0-py3-none-any.whl"
    files = {"lockprobe.py": "VALUE = 1\n",
             "lockprobe-1.0.dist-info/METADATA":
                 "Metadata-Version: 2.1\nName: lockprobe\nVersion: 1.0\n",
             "lockprobe-1.0.dist-info/WHEEL":
                 "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(path, "w") as z:
        for name, body in files.items():
            z.writestr(name, body)
        z.writestr("lockprobe-1.0.dist-info/RECORD",
                   "".join(f"{n},,\n" for n in files) + "lockprobe-1.0.dist-info/RECORD,,\n")
    return path


@pytest.mark.parametrize("honest", [True, False])
def test_pip_installs_a_lock_written_by_lock_deps_only_when_the_digest_matches(
        tmp_path, honest):
    wheel = _wheel(tmp_path)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    lock = tmp_path / "probe.lock"
    _lock_deps().write(lock, "Probe", {"lockprobe": ("lockprobe", "1.0",
                                                     {digest if honest else "0" * 64})})
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index",
                           "--find-links", str(tmp_path), "--require-hashes",
                           "--target", str(tmp_path / "site"), "-r", str(lock)],
                          capture_output=True, text=True, timeout=120)
    if honest:
        assert done.returncode == 0, done.stderr
        assert (tmp_path / "site/lockprobe.py").exists()
    else:
        assert done.returncode != 0
        assert "DO NOT MATCH THE HASHES" in done.stderr
        assert not (tmp_path / "site/lockprobe.py").exists()


def _installed_closure(requirement: str) -> set[str]:
    """What pip installs for `requirement` given this virtualenv's distributions (their
    metadata's Requires-Dist, markers and extras evaluated here)."""
    todo, seen, names = [Requirement(requirement)], set(), set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        names.add(name)
        for line in importlib.metadata.distribution(name).requires or []:
            needed = Requirement(line)
            if needed.marker is None or any(needed.marker.evaluate({"extra": extra})
                                            for extra in (req.extras or {""})):
                todo.append(needed)
    return names - {"deploylib"}


def test_the_lab_lock_is_the_dev_locks_pins_of_what_the_lab_extra_needs():
    """resources/deploylib/requirements-lab.lock: a team's lab from hashes, at the versions
    the suite runs (the tool's own dependencies and moto's server, nothing of the tests')."""
    lab, dev = pins(LAB_LOCK), pins("requirements-dev.lock")
    assert set(lab) == _installed_closure("deploylib[lab]")
    assert {name: dev[name] for name in lab} == lab
    assert set(pins(RUN_LOCK)) <= set(lab)
    assert not {"mypy", "ruff", "hypothesis", "pytest-xdist"} & set(lab)
