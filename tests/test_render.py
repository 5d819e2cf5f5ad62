"""The host-side scripts: rendered, then run for real with bash on a host directory.

The install script fetches over real HTTP, verifies, unpacks, switches, restarts the app
through the lab's systemctl stand-in and health-checks it, exactly as on a lab host.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from pydantic import ValidationError

from deploylib import aws, render, tarball
from deploylib.errors import InputError
from deploylib.facts import RECORD_SHAPES
from deploylib.health import serving_version
from deploylib.lab import BIN
from deploylib.live import Record
from deploylib.manifest import Manifest
from tests.conftest import REPO, SAMPLE_APP, loopback, open_to_services

_addresses = itertools.count(1)
SERVICE_USER = "deploylab-app"  # as the lab's hosts have it
# How a release runs where its release.toml is silent: the sample app's way, as the lab
# tests' environments give it.
LAB_APP = Manifest.model_validate(SAMPLE_APP).for_host()
# No defaults at all: everything from the release's own release.toml.
NO_DEFAULTS = Manifest().for_host()


class Host:
    """A host directory provisioned by the real provision script."""

    def __init__(self, root: Path, address: str, files: Path, url: str):
        self.root, self.address, self.files, self.url = root, address, files, url

    def env(self) -> dict[str, str]:
        return dict(os.environ, DEPLOY_HOST_ROOT=str(self.root),
                    PATH=f"{BIN}:{os.environ['PATH']}")

    def bash(self, script: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-s"], input=script, text=True, capture_output=True,
                              env=self.env(), timeout=60)

    def artifact(self, version: str) -> tuple[str, str]:
        path = tarball.build(REPO / "examples/app", version, self.files)
        return path.name, tarball.sha256_file(path)

    def install(self, version: str, *, name: str | None = None, sha: str | None = None,
                keep: int = 3, push: Path | None = None, health_check: str = "version",
                restart: str = "systemctl restart app", health_timeout: int = 3,
                app: dict | None = None) -> subprocess.CompletedProcess:
        if name is None:
            name, sha = self.artifact(version)
        script = render.install_script(
            version=version, sha256=sha, app_root="/srv/app", app_port=8080,
            health_path="/health" if health_check == "version" else "/healthz",
            restart_command=restart, keep_releases=keep,
            url=None if push else f"{self.url}/{name}", pushed_path=str(push) if push else None,
            health_timeout=health_timeout, service="app", service_user=SERVICE_USER,
            app=app or LAB_APP, health_check=health_check)
        return self.bash(script)

    def runs_from(self) -> str:
        """The release the host proves it runs (the serving script, as a run asks)."""
        return self.bash(render.serving_script(app_root="/srv/app",
                                               service="app")).stdout.strip()

    def current(self) -> str:
        return os.readlink(self.root / "srv/app/current")

    def serving(self) -> str | None:
        return serving_version(self.address, 8080, "/health")

    def releases(self) -> list[str]:
        return sorted(p.name for p in (self.root / "srv/app/releases").iterdir())


@pytest.fixture
def host(tmp_path):
    files = tmp_path / "files"
    files.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0),
                                 partial(SimpleHTTPRequestHandler, directory=str(files)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    root = open_to_services(tmp_path) / "root"
    (root / "etc").mkdir(parents=True)
    address = loopback(98, next(_addresses))
    (root / "etc/app.env").write_text(f"APP_HOST={address}\n")
    h = Host(root, address, files, f"http://127.0.0.1:{server.server_address[1]}")
    out = h.bash(render.provision_script(packages=["python3", "curl"], service="app",
                                         service_user=SERVICE_USER, app_root="/srv/app",
                                         app_port=8080))
    assert out.returncode == 0, out.stderr
    yield h
    h.bash("systemctl stop app")
    server.shutdown()


@pytest.mark.parametrize("quote", ["", '"'])
def test_the_apps_environment_file_is_read_as_data_never_run_as_root(host, quote):
    """/etc/app.env is the app's: the install script (root) takes the address from it and
    runs none of it."""
    marker = host.root / "ran-as-root"
    (host.root / "etc/app.env").write_text(
        f"touch {marker}\nAPP_HOST={quote}{host.address}{quote}\n$(touch {marker})\n")
    out = host.install("1.0.0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert host.serving() == "1.0.0" and not marker.exists()


def test_provision_records_packages_and_enables_the_unit(host):
    assert (host.root / "var/lib/lab/packages").read_text().split() == ["curl", "python3"]
    unit = (host.root / "etc/systemd/system/app.service").read_text()
    assert "WorkingDirectory=/srv/app/current" in unit and "APP_PORT=8080" in unit
    assert (host.root / "etc/systemd/system/multi-user.target.wants/app.service").is_symlink()


def test_install_fetches_verifies_switches_and_serves(host):
    out = host.install("1.0.0")
    assert out.returncode == 0, out.stdout + out.stderr
    assert host.current() == "releases/1.0.0"
    assert host.serving() == "1.0.0"
    out = host.install("1.0.1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert host.current() == "releases/1.0.1" and host.serving() == "1.0.1"
    assert not list((host.root / "srv/app/.incoming").iterdir())


def test_the_app_runs_as_its_own_user_from_a_release_that_stays_roots(host):
    import pwd

    assert host.install("1.0.0").returncode == 0
    pid = (host.root / "var/run/app.pid").read_text().strip()
    uid = next(line.split()[1] for line in Path(f"/proc/{pid}/status").read_text().splitlines()
               if line.startswith("Uid:"))
    assert int(uid) == pwd.getpwnam(SERVICE_USER).pw_uid
    release_dir = (host.root / "srv/app/releases/1.0.0").stat()
    assert release_dir.st_uid == 0 and release_dir.st_mode & 0o777 == 0o755
    assert "User=deploylab-app" in (host.root / "etc/systemd/system/app.service").read_text()


def test_an_app_whose_health_only_answers_200_is_proven_on_the_host(host):
    """health_check = "status": /healthz says "ok"; the release is the one the service
    runs from, started after the switch."""
    assert host.install("1.0.0", health_check="status").returncode == 0
    assert host.current() == "releases/1.0.0" and host.runs_from() == "1.0.0"
    out = host.install("1.0.1", health_check="status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert host.runs_from() == "1.0.1" and host.serving() == "1.0.1"
    assert host.install("1.0.1", health_check="status").stdout.strip().endswith(
        "already live; nothing to do")


def test_a_switch_the_service_was_not_restarted_after_is_not_healthy(host):
    """A 200 from the old process is not the new release: with a restart that does not
    restart, the new release is refused and the old one put back."""
    assert host.install("1.0.0", health_check="status").returncode == 0
    out = host.install("1.0.1", health_check="status", restart="true")
    assert out.returncode == 5, out.stdout + out.stderr
    assert host.current() == "releases/1.0.0" and host.runs_from() == "1.0.0"


def test_installing_the_live_release_again_changes_nothing(host):
    assert host.install("1.0.0").returncode == 0
    before = (host.root / "var/run/app.pid").read_text()
    out = host.install("1.0.0")
    assert out.returncode == 0 and "already live" in out.stdout
    assert (host.root / "var/run/app.pid").read_text() == before  # not even restarted


def test_a_checksum_mismatch_is_refused_and_nothing_changes(host):
    assert host.install("1.0.0").returncode == 0
    name, _ = host.artifact("1.0.1")
    out = host.install("1.0.1", name=name, sha="0" * 64)
    assert out.returncode == 3
    assert "checksum mismatch" in out.stdout + out.stderr
    assert host.current() == "releases/1.0.0" and host.serving() == "1.0.0"
    assert host.releases() == ["1.0.0"]
    assert not list((host.root / "srv/app/.incoming").iterdir())


def test_a_corrupt_archive_leaves_no_partial_release(host):
    assert host.install("1.0.0").returncode == 0
    corrupt = b"\x1f\x8b" + os.urandom(2048)
    (host.files / "corrupt.tar.gz").write_bytes(corrupt)
    out = host.install("1.0.1", name="corrupt.tar.gz", sha=hashlib.sha256(corrupt).hexdigest())
    assert out.returncode == 4
    assert host.releases() == ["1.0.0"]  # no releases/1.0.1, no .unpack-* left
    assert host.current() == "releases/1.0.0" and host.serving() == "1.0.0"


def test_an_unhealthy_release_is_switched_back(host, tmp_path):
    assert host.install("1.0.0").returncode == 0
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "app.py").write_text("raise SystemExit('cannot start')\n")
    path = tarball.build(broken, "1.0.1", host.files)
    out = host.install("1.0.1", name=path.name, sha=tarball.sha256_file(path))
    assert out.returncode == 5, out.stdout + out.stderr
    assert "restored" in out.stderr
    assert host.current() == "releases/1.0.0" and host.serving() == "1.0.0"


def _release(host, tmp_path, version: str, source: str) -> tuple[str, str]:
    app = tmp_path / version
    app.mkdir()
    (app / "app.py").write_text(source)
    path = tarball.build(app, version, host.files)
    return path.name, tarball.sha256_file(path)


def test_a_release_that_exits_at_start_is_given_up_on_at_once(host, tmp_path):
    """The health wait ends when the service has exited, not at the health timeout (a
    timeout the test sets long: were it waited out, the test would show it by taking it)."""
    assert host.install("1.0.0").returncode == 0
    name, sha = _release(host, tmp_path, "1.0.1", "raise SystemExit('cannot start')\n")
    out = host.install("1.0.1", name=name, sha=sha, health_timeout=600)
    assert out.returncode == 5, out.stdout + out.stderr
    assert "the service exited" in out.stderr and "restored" in out.stderr
    assert host.current() == "releases/1.0.0" and host.serving() == "1.0.0"


def test_a_release_that_runs_but_never_answers_is_waited_for(host, tmp_path):
    assert host.install("1.0.0").returncode == 0
    name, sha = _release(host, tmp_path, "1.0.1", "import signal\nsignal.pause()\n")
    out = host.install("1.0.1", name=name, sha=sha, health_timeout=2)
    assert out.returncode == 5, out.stdout + out.stderr
    assert "the service exited" not in out.stderr  # it did not: the timeout ended it
    assert "not healthy after restart" in out.stderr


def _main_pid(host) -> str:
    return host.bash("systemctl show -p MainPID --value app").stdout.strip()


def test_a_restart_stops_every_process_of_the_service_even_one_still_serving(host, tmp_path):
    """As systemd stops a unit (KillMode=control-group): SIGTERM to the app's master and
    worker, SIGKILL to what is left after TimeoutStopSec. A worker kept busy by a client
    on a keep-alive connection is killed with the rest, never left holding the port the
    new release must bind."""
    import http.client

    # TimeoutStopSec as a release says it (its release.toml's stop_timeout, which the
    # install writes as a drop-in over the unit): the sample app's, 2 s
    source = shutil.copytree(REPO / "examples/app", tmp_path / "app")
    toml = source / "release.toml"
    toml.write_text(re.sub(r"(?m)^stop_timeout = .*$", "stop_timeout = 2", toml.read_text()))
    releases = {}
    for version in ("1.0.0", "1.0.1"):
        path = tarball.build(source, version, host.files)
        releases[version] = {"name": path.name, "sha": tarball.sha256_file(path)}
    assert host.install("1.0.0", **releases["1.0.0"]).returncode == 0
    stop = threading.Event()

    def busy() -> None:  # one connection, a request every 0.3 s: never idle
        conn = http.client.HTTPConnection(host.address, 8080, timeout=5)
        try:
            while not stop.is_set():
                conn.request("GET", "/health")
                conn.getresponse().read()
                stop.wait(0.3)
        except OSError:
            pass  # the worker was killed: the connection with it
        finally:
            conn.close()

    client = threading.Thread(target=busy)
    client.start()
    try:
        out = host.install("1.0.1", health_timeout=10, **releases["1.0.1"])
        # while the client still tries: nothing of the old release runs on
        old = [p for p in Path("/proc").iterdir() if p.name.isdigit()
               and _cwd(p) == host.root / "srv/app/releases/1.0.0"]
    finally:
        stop.set()
        client.join()
    assert out.returncode == 0, out.stdout + out.stderr
    assert old == [] and host.serving() == "1.0.1"


def _cwd(proc: Path) -> Path | None:
    try:
        return Path(os.readlink(proc / "cwd"))
    except OSError:
        return None


def test_a_graceful_install_switches_the_release_without_a_failed_request(host, tmp_path):
    """The sample app reloads on SIGHUP: its master keeps the socket, a worker from the new
    release takes over, the old one finishes. Requests all the while: none fails."""
    import urllib.request

    assert host.install("1.0.0").returncode == 0
    master = _main_pid(host)
    stop, seen = threading.Event(), []

    def stream() -> None:
        while not stop.is_set():
            try:
                with urllib.request.urlopen(f"http://{host.address}:8080/health",
                                            timeout=5) as resp:
                    seen.append(resp.status)
            except OSError as exc:
                seen.append(repr(exc))

    clients = [threading.Thread(target=stream) for _ in range(4)]
    for c in clients:
        c.start()
    try:
        out = host.install("1.0.1", restart="systemctl reload app", health_timeout=30)
        slow = threading.Thread(target=lambda: seen.append(urllib.request.urlopen(
            f"http://{host.address}:8080/slow?seconds=1", timeout=10).status))
        slow.start()
        back = host.install("1.0.0", restart="systemctl reload app", health_timeout=30)
        slow.join()
    finally:
        stop.set()
        for c in clients:
            c.join()
    assert out.returncode == 0 and back.returncode == 0, out.stderr + back.stderr
    assert _main_pid(host) == master  # reloaded, never restarted
    assert host.serving() == "1.0.0"
    assert len(seen) > 50 and set(seen) == {200}, [x for x in seen if x != 200][:5]


def test_a_graceful_install_that_cannot_start_leaves_the_old_release_serving(host, tmp_path):
    assert host.install("1.0.0").returncode == 0
    master = _main_pid(host)
    name, sha = _release(host, tmp_path, "1.0.1", "raise SystemExit('cannot start')\n")
    out = host.install("1.0.1", name=name, sha=sha, restart="systemctl reload app",
                       health_timeout=3)
    assert out.returncode == 5, out.stdout + out.stderr
    assert _main_pid(host) == master and host.serving() == "1.0.0"


def _idle(host, quiet: float = 0.5, ceiling: float = 60) -> subprocess.CompletedProcess:
    return host.bash(render.idle_script(app_port=8080, quiet=quiet, ceiling=ceiling))


def test_a_host_with_nothing_in_flight_is_idle_after_the_quiet_period(host):
    assert host.install("1.0.0").returncode == 0
    # the host's own look at itself is not the balancer's traffic
    host.bash(f"curl -fsS http://{host.address}:8080/health")
    out = _idle(host)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("idle: nothing in flight for 0.5s")


def test_a_long_request_holds_the_drain_open_until_it_is_answered(host):
    """A request in flight from elsewhere (the balancer's side of loopback) keeps the host
    busy: the watch ends only once the request has been answered."""
    import http.client

    assert host.install("1.0.0").returncode == 0
    conn = http.client.HTTPConnection(host.address, 8080, timeout=30)
    conn.request("GET", "/slow?seconds=2")  # sent: in flight before the watch starts
    answered = threading.Event()

    def answer() -> None:
        assert b"after 2s" in conn.getresponse().read()
        conn.close()
        answered.set()

    worker = threading.Thread(target=answer)
    worker.start()
    out = _idle(host)
    answered_first = answered.is_set()  # when the watch ended
    worker.join()
    assert out.returncode == 0, out.stdout + out.stderr
    assert answered_first  # the watch outlasted the request


def test_a_request_still_in_flight_at_the_delay_is_said_and_the_drain_goes_on(host):
    import socket

    assert host.install("1.0.0").returncode == 0
    with socket.create_connection((host.address, 8080)):  # open, never finished
        out = _idle(host, quiet=0.2, ceiling=1)
    assert out.returncode == 8, out.stdout + out.stderr
    assert "1 connection(s) still open at the deregistration delay (1s)" in out.stdout


def test_old_releases_are_pruned_but_never_the_previous_one(host):
    for v in ("1.0.0", "1.0.1", "1.0.2", "1.0.3", "1.0.4"):
        assert host.install(v, keep=3).returncode == 0
    assert host.releases() == ["1.0.2", "1.0.3", "1.0.4"]
    assert host.current() == "releases/1.0.4"


def test_push_installs_from_a_file_already_on_the_host(host):
    """Where ssh.Connection.put_private lands it: a directory made for it, gone after."""
    import secrets

    name, sha = host.artifact("1.0.0")
    landing = Path(f"/var/tmp/deploylib-push.i-0000000a.{secrets.token_hex(5)}")
    landing.mkdir(mode=0o700)
    pushed = landing / "release.tar.gz"
    pushed.write_bytes((host.files / name).read_bytes())
    out = host.install("1.0.0", name=name, sha=sha, push=pushed)
    assert out.returncode == 0, out.stderr
    assert host.serving() == "1.0.0" and not landing.exists()


def test_a_push_from_anywhere_else_is_refused_at_render():
    with pytest.raises(ValueError, match="put_private"):
        render.install_script(version="1.0", **{**_INSTALL, "url": None,
                                                "pushed_path": "/tmp/guessable.tar.gz"})


def _release_with(tmp_path, host, version, add) -> tuple[str, str]:
    """The sample app's release with one more member (`add(tar)`), packed as root's tar
    would meet it."""
    import tarfile

    base = tarball.build(REPO / "examples/app", version, tmp_path)
    path = host.files / f"hostile-{version}.tar.gz"
    with tarfile.open(base) as src, tarfile.open(path, "w:gz") as out:
        for member in src.getmembers():
            out.addfile(member, src.extractfile(member) if member.isfile() else None)
        add(out)
    return path.name, tarball.sha256_file(path)


def _member(name, kind, **kw):
    import tarfile

    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in kw.items():
        setattr(info, key, value)
    return info


def test_a_release_unpacks_as_data_no_setuid_no_world_writable(host, tmp_path):
    import io
    import stat
    import tarfile

    def add(tar):
        tar.addfile(_member("tool", tarfile.REGTYPE, mode=0o4755, size=3, uid=0),
                    io.BytesIO(b"#!\n"))
        tar.addfile(_member("spool", tarfile.DIRTYPE, mode=0o777, uid=4242))

    name, sha = _release_with(tmp_path, host, "1.0.0", add)
    out = host.install("1.0.0", name=name, sha=sha)
    assert out.returncode == 0, out.stdout + out.stderr
    unpacked = host.root / "srv/app/releases/1.0.0"
    tool, spool = (unpacked / "tool").stat(), (unpacked / "spool").stat()
    assert not tool.st_mode & (stat.S_ISUID | stat.S_ISGID)
    assert not spool.st_mode & stat.S_IWOTH and spool.st_uid == os.getuid()


@pytest.mark.parametrize("kind,words", [
    ("link-out", "links out of itself"),
    ("fifo", "device, pipe or socket"),
    ("device", "device, pipe or socket"),
])
def test_a_release_holding_what_a_release_may_not_is_refused_on_the_host(host, tmp_path,
                                                                         kind, words):
    """Checked on the host too, not only where the release was built."""
    import tarfile

    members = {"link-out": _member("etc", tarfile.SYMTYPE, linkname="/etc"),
               "fifo": _member("pipe", tarfile.FIFOTYPE),
               "device": _member("null", tarfile.CHRTYPE, devmajor=1, devminor=3)}
    assert host.install("1.0.0").returncode == 0
    name, sha = _release_with(tmp_path, host, "1.0.1", lambda tar: tar.addfile(members[kind]))
    out = host.install("1.0.1", name=name, sha=sha)
    assert out.returncode == 4 and words in out.stderr, out.stdout + out.stderr
    assert host.releases() == ["1.0.0"] and host.current() == "releases/1.0.0"


def test_the_presigned_url_is_never_an_argument_of_any_command():
    url = "http://store.example/releases/app.tar.gz?X-Amz-Signature=abc123"
    script = render.install_script(version="1.0.0", sha256="0" * 64, app_root="/srv/app",
                                   app_port=8080, health_path="/health",
                                   health_check="version", service="app",
                                   service_user=SERVICE_USER, app=LAB_APP,
                                   restart_command="systemctl restart app", keep_releases=3,
                                   url=url)
    lines = [ln for ln in script.splitlines() if "X-Amz-Signature" in ln]
    assert lines == [f'url = "{url}"']  # only inside curl's config, read from stdin


def test_values_are_shell_quoted():
    script = render.install_script(version="1.0.0", sha256="0" * 64, app_root="/srv/my app",
                                   app_port=8080, health_path="/health",
                                   health_check="status", service="app",
                                   service_user=SERVICE_USER, app=LAB_APP,
                                   restart_command="true", keep_releases=3, url="http://x/y")
    assert "app_root=\"$root\"'/srv/my app'" in script


_INSTALL = dict(sha256="0" * 64, app_root="/srv/app", app_port=8080, health_path="/health",
                health_check="status", service="app", service_user=SERVICE_USER, app=LAB_APP,
                restart_command="true", keep_releases=3, url="http://x/y")


@pytest.mark.parametrize("value", ["1.0\ntouch /tmp/x #", "$(reboot)", "1.0 && id", "`id`"])
def test_a_hostile_value_never_reaches_a_script_unquoted_not_even_a_comment(value):
    """The install script names the version in its comments too: a version read back
    from a record or a state file that is not a plain word is refused at render."""
    from deploylib.errors import DeployError

    with pytest.raises(DeployError, match="unquoted"):
        render.install_script(version=value, **_INSTALL)


def test_a_presigned_url_that_could_leave_curls_config_is_refused():
    from deploylib.errors import DeployError

    for url in ('http://x/y"\nurl = "http://evil', "http://x/y\\"):
        with pytest.raises(DeployError, match="presigned URL"):
            render.install_script(version="1.0", **{**_INSTALL, "url": url})


def test_a_unit_cannot_end_its_here_document_early():
    from deploylib.errors import DeployError

    with pytest.raises(DeployError, match="end line UNIT"):
        render.render("provision.sh.j2", packages=[], service="app", service_user="app",
                      app_root="/srv/app", unit="[Unit]\nUNIT\nrm -rf /", lock_timeout=1)


def test_exactly_one_source():
    kw = dict(version="1", sha256="0", app_root="/a", app_port=1, health_path="/",
              health_check="status", service="app", service_user=SERVICE_USER, app=LAB_APP,
              restart_command="true", keep_releases=3)
    with pytest.raises(ValueError):
        render.install_script(**kw)
    with pytest.raises(ValueError):
        render.install_script(**kw, url="http://x", pushed_path="/tmp/x")


@pytest.mark.parametrize("answer,code", [(0, 0), (2, 0), (1, 7), (124, 8), (None, 0)])
def test_first_boot_waits_for_cloud_init_and_says_when_it_failed(tmp_path, answer, code):
    """cloud-init's own exit codes (0 done, 2 degraded, 1 error) and the wait's deadline;
    a host without cloud-init has nothing to wait for."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if answer is not None:
        fake = bin_dir / "cloud-init"
        fake.write_text(f"#!/bin/sh\necho 'status: said {answer}'\nexit {answer}\n")
        fake.chmod(0o755)
    script = render.first_boot_script(timeout=30)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-s"], input=script, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == code, proc.stdout + proc.stderr
    assert ("no cloud-init" in proc.stdout) == (answer is None)


def test_the_lab_hosts_cloud_init_fails_when_told_to(tmp_path):
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "DEPLOY_HOST_ROOT": str(tmp_path)}
    script = render.first_boot_script(timeout=30)
    assert subprocess.run(["bash", "-s"], input=script, env=env, capture_output=True,
                          text=True).returncode == 0
    (tmp_path / "etc/lab-faults").mkdir(parents=True)
    (tmp_path / "etc/lab-faults/cloud-init-error").write_text("")
    assert subprocess.run(["bash", "-s"], input=script, env=env, capture_output=True,
                          text=True).returncode == 7


def test_provisioning_waits_for_dpkgs_lock_and_the_lab_apt_takes_the_option(host):
    script = render.provision_script(packages=["curl"], service="app",
                                     service_user=SERVICE_USER, app_root="/srv/app",
                                     app_port=8080, lock_timeout=120)
    assert 'apt_wait="-o DPkg::Lock::Timeout=120"' in script
    assert script.count("apt-get $apt_wait ") == 2  # update and install both wait
    out = host.bash(script)
    assert out.returncode == 0, out.stderr
    assert "curl" in (host.root / "var/lib/lab/packages").read_text().split()


BOOT = dict(group="app-lab-v004", hook="deploy-boot", version="1.0.0", sha256="ab" * 32,
            version_id=None, record_parameter="/deploylib/lab/live", record_region="us-east-1",
            bucket="deploylab-artifacts", key_prefix="releases/lab/", store_region="us-east-1",
            app_root="/srv/app", app_port=8080, health_path="/health", health_check="version",
            service="app", service_user=SERVICE_USER, app=LAB_APP,
            restart_command="systemctl restart app", keep_releases=3)


def test_a_server_groups_user_data_is_the_install_script_fed_from_the_record(tmp_path):
    script = render.boot_script(**BOOT)
    (tmp_path / "boot.sh").write_text(script)
    subprocess.run(["bash", "-n", str(tmp_path / "boot.sh")], check=True)
    # the same install script every procedure runs, its release read at boot
    assert 'version="$boot_version"' in script and 'fetch_release "$artifact.part"' in script
    assert "sha256sum -c" in script
    # IMDSv2 only; the role's credentials reach the signer in its environment and the
    # signed headers reach curl on stdin, never in an argument; not curl's own signer
    assert "X-aws-ec2-metadata-token:" in script and '| curl -sS' in script
    assert 'BOOT_CREDENTIALS=$credentials' in script and '-K - "$url"' in script
    assert "--aws-sigv4" not in script and 'user = "$key_id:$secret"' not in script
    assert "LifecycleActionResult=%s" in script and "lifecycle ABANDON" in script
    # as user data: compressed, under EC2's limit, the same bytes for the same script
    packed = aws.ec2.packed_user_data(script, what="boot script")
    assert len(packed) < aws.ec2.USER_DATA_LIMIT < len(script.encode())
    assert packed == aws.ec2.packed_user_data(script, what="boot script")
    with pytest.raises(InputError, match="over EC2's 16,384-byte limit for user data"):
        aws.ec2.packed_user_data(script + os.urandom(12000).hex(), what="boot script")


def _boot_reads(record: object, region: str = "us-east-1", group: str = "app-lab-v004"
                ) -> subprocess.CompletedProcess:
    """What the boot reads from the record (the program its user data runs, as rendered),
    given SSM's answer holding `record` (None: no record yet)."""
    answer = ({"Parameter": {"Value": record if isinstance(record, str) else json.dumps(record)}}
              if record is not None else {"__type": "ParameterNotFound"})
    return subprocess.run(
        ["python3", "-c", render._program("boot_record.py"), region, group,
         json.dumps(RECORD_SHAPES), "1.0.0", "ab" * 32, "-"],
        input=json.dumps(answer), capture_output=True, text=True, timeout=30)


LIVE = {"release": "1.0.2", "sha256": "cd" * 32, "version_id": "v.1_x-2",
        "server_groups": {"us-east-1": "app-lab-v004"}}


def test_the_boot_installs_the_records_release_only_where_its_group_is_live():
    assert _boot_reads(LIVE).stdout.split() == ["1.0.2", "cd" * 32, "v.1_x-2"]
    assert _boot_reads({**LIVE, "version_id": None}).stdout.split()[2] == "-"
    # another group live, or no record yet: the group's own release
    assert _boot_reads(LIVE, group="app-lab-v003").stdout.split() == ["1.0.0", "ab" * 32, "-"]
    assert _boot_reads(None).stdout.split() == ["1.0.0", "ab" * 32, "-"]
    script = render.boot_script(**BOOT)
    assert shlex.quote(render._program("boot_record.py")) in script
    assert shlex.quote(json.dumps(RECORD_SHAPES)) in script


@pytest.mark.parametrize("hostile", [
    {"release": "../../../../etc/cron.d/x"}, {"release": "1.0.0\nrm -rf /"},
    {"release": "a..b"}, {"sha256": "not-a-digest"}, {"sha256": "AB" * 32},
    {"version_id": "a&b=c"}, {"version_id": "x/../y"}, {"release": 7}, {"sha256": None},
])
def test_the_boot_refuses_a_record_value_of_another_shape_than_the_tools(hostile):
    """The record is read back with the shapes the tool holds it to (facts.RECORD_SHAPES,
    one definition): a value of another shape stops the boot (exit 10) in one line, before
    it is made a path or a URL, and nothing is printed for the boot to install."""
    out = _boot_reads({**LIVE, **hostile})
    assert out.returncode == 10 and out.stdout == ""
    (line,) = out.stderr.splitlines()
    key = next(iter(hostile))
    assert line.startswith("[boot app-lab-v004] the record's " + key) and "refused" in line
    with pytest.raises(ValidationError):  # and the tool's own reading refuses it too
        Record.model_validate({**LIVE, "procedure": "in-place",
                               "run_id": "20261207T120000-abc123", **hostile})


def test_the_boot_reads_a_packed_record_as_the_tool_writes_it():
    """A record too long for JSON in a standard parameter is packed (aws.ssm.pack): the
    boot reads it the same; one that inflates past a megabyte is refused (exit 10)."""
    import base64
    import zlib

    regions = {f"xx-region-{n}": f"app-lab-v{n:03d}" for n in range(90)}
    wide = {**LIVE, "server_groups": {**regions, "us-east-1": "app-lab-v004"},
            "images": {r: f"ami-{n:017x}" for n, r in enumerate(regions)}}
    packed = aws.ssm.pack(wide)
    assert packed.startswith(aws.ssm.PACKED)
    assert _boot_reads(packed).stdout.split() == ["1.0.2", "cd" * 32, "v.1_x-2"]
    bomb = aws.ssm.PACKED + base64.b64encode(zlib.compress(b" " * (2 << 20))).decode()
    out = _boot_reads(bomb)
    assert out.returncode == 10 and "the record is not the tool's" in out.stderr


def test_the_boot_refuses_a_record_that_is_not_the_tools():
    for broken in ("not json", '["a list"]', '{"server_groups": "x"}'):
        out = _boot_reads(broken)
        assert out.returncode == 10 and out.stdout == "", broken
        assert "the record is not the tool's" in out.stderr


def test_a_server_groups_user_data_refuses_a_value_that_is_not_plain():
    with pytest.raises(Exception, match="unquoted"):
        render.boot_script(**{**BOOT, "group": "app-lab-v004;reboot"})


# -- any app: the release says how it runs (release.toml) ---------------------------------

TEAM_APP = REPO / "examples/team-repo/app"


def _greeter(host, tmp_path, version: str, **changes: str) -> tuple[str, str]:
    """The example team's C server as a release, built by its own build (make), its
    release.toml changed by `changes` (key = value lines replaced or added)."""
    import shutil

    source = tmp_path / f"greeter-{version}"
    shutil.copytree(TEAM_APP, source, ignore=shutil.ignore_patterns("server"))
    text = (source / "release.toml").read_text()
    for key, value in changes.items():
        lines = [ln for ln in text.splitlines() if not ln.startswith(f"{key} =")]
        lines.insert(lines.index("[hooks]") if key in ("start", "reload") else len(lines),
                     f"{key} = {value}")
        text = "\n".join(lines) + "\n"
    (source / "release.toml").write_text(text)
    path = tarball.build(source, version, host.files, build_command="make -s")
    return path.name, tarball.sha256_file(path)


def test_a_compiled_app_runs_as_its_release_says_and_reloads_gracefully(host, tmp_path):
    name, sha = _greeter(host, tmp_path, "2.0.0")
    out = host.install("2.0.0", name=name, sha=sha, app=NO_DEFAULTS, health_timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
    assert host.serving() == "2.0.0"
    assert "hook before_install: bin/server --check" in out.stdout
    assert "selfcheck: serving 2.0.0" in out.stdout + out.stderr  # validate, as the app
    dropin = (host.root / "etc/systemd/system/app.service.d/release.conf").read_text()
    assert "KillSignal=SIGTERM" in dropin and "TimeoutStopSec=20" in dropin
    master = _main_pid(host)
    assert Path(f"/proc/{master}/exe").resolve().name == "server"  # no interpreter
    name, sha = _greeter(host, tmp_path, "2.0.1")
    out = host.install("2.0.1", name=name, sha=sha, app=NO_DEFAULTS, health_timeout=10,
                       restart="systemctl reload app")
    assert out.returncode == 0, out.stdout + out.stderr
    assert host.serving() == "2.0.1" and _main_pid(host) == master  # reloaded in place


def test_a_release_whose_before_install_hook_fails_is_never_switched_to(host, tmp_path):
    assert host.install("1.0.0").returncode == 0
    name, sha = _greeter(host, tmp_path, "2.0.0", before_install='"exit 3"')
    out = host.install("2.0.0", name=name, sha=sha, app=NO_DEFAULTS)
    assert out.returncode == 12 and "hook before_install failed" in out.stderr, out.stderr
    assert host.current() == "releases/1.0.0" and host.serving() == "1.0.0"
    assert host.releases() == ["1.0.0"]  # nothing of it left to switch to


def test_a_release_that_fails_its_validate_hook_is_switched_back(host, tmp_path):
    assert host.install("1.0.0").returncode == 0
    name, sha = _greeter(host, tmp_path, "2.0.0", validate='"exit 1"')
    out = host.install("2.0.0", name=name, sha=sha, app=NO_DEFAULTS, health_timeout=10)
    assert out.returncode == 5 and "hook validate failed" in out.stderr, out.stderr
    assert host.current() == "releases/1.0.0" and host.serving() == "1.0.0"
    # the previous release's own way of stopping back in force
    dropin = (host.root / "etc/systemd/system/app.service.d/release.conf").read_text()
    assert "TimeoutStopSec=30" in dropin  # examples/app/release.toml's


def test_hooks_run_as_the_apps_user_in_the_release_and_are_told_where_it_serves(host,
                                                                                tmp_path):
    import pwd

    seen = open_to_services(tmp_path) / "seen"
    seen.mkdir(mode=0o777)
    seen.chmod(0o777)
    name, sha = _greeter(host, tmp_path, "2.0.0", after_install=(
        f'"echo $(id -un) $(pwd) $APP_HOST:$APP_PORT $DEPLOY_RELEASE > {seen}/after"'))
    out = host.install("2.0.0", name=name, sha=sha, app=NO_DEFAULTS, health_timeout=10)
    assert out.returncode == 0, out.stdout + out.stderr
    user, cwd, where, version = (seen / "after").read_text().split()
    assert user == pwd.getpwnam(SERVICE_USER).pw_name
    assert cwd == str(host.root / "srv/app/releases/2.0.0")
    assert (where, version) == (f"{host.address}:8080", "2.0.0")


def test_a_release_that_says_no_start_command_is_refused_on_the_host_too(host, tmp_path):
    assert host.install("1.0.0").returncode == 0
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "server").write_text("#!/bin/sh\n")
    path = tarball.build(tmp_path / "bare", "2.0.0", host.files)
    out = host.install("2.0.0", name=path.name, sha=tarball.sha256_file(path), app=NO_DEFAULTS)
    assert out.returncode == 12 and "no start command" in out.stderr, out.stderr
    assert host.current() == "releases/1.0.0" and host.releases() == ["1.0.0"]


def test_a_release_put_there_by_something_else_fails_to_start_saying_why(host):
    """The unit runs the release's .deploylib/start, which deploylib's install step
    writes: a release unpacked by another tool is refused as systemd refuses a missing
    ExecStart (203/EXEC), in one line, not a traceback."""
    other = host.root / "srv/app/releases/elsewhere"
    other.mkdir(parents=True)
    (host.root / "srv/app/current").symlink_to("releases/elsewhere")
    out = host.bash("systemctl start app")
    assert out.returncode == 203, out.stderr
    assert "Traceback" not in out.stderr and ".deploylib/start" in out.stderr


def test_the_boots_signer_signs_as_botocore_does_byte_for_byte(monkeypatch):
    """templates/boot_sign.py, what a server group's instance signs its requests with
    (curl's own signer sends no x-amz-content-sha256 before 8.0), against botocore's SigV4
    for the same three requests: the release's GET (a version id in its query), SSM's
    JSON call, Auto Scaling's form."""
    import datetime
    import runpy
    from urllib.parse import urlencode

    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    signer = runpy.run_path(str(render.TEMPLATES / "boot_sign.py"))  # (not as __main__)
    now = datetime.datetime(2026, 12, 7, 12, 0, 5, tzinfo=datetime.UTC)
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda: now.replace(tzinfo=None))
    key, secret, token = "ASIAEXAMPLEKEY", "se/cr+et=", "to+ken/=="
    form = urlencode([("Action", "CompleteLifecycleAction"), ("Version", "2011-01-01"),
                      ("AutoScalingGroupName", "greeter-production-v012"),
                      ("InstanceId", "i-0123456789abcdef0"), ("LifecycleActionResult", "CONTINUE")])
    cases = [
        ("s3", "GET", "https://s3.eu-west-1.amazonaws.com/greeter-production-releases/"
         "releases/production/1.2.3%2Bhotfix.tar.gz?versionId=3sL4kq.tJl%2BcpXroDTDmJ", b"", ""),
        ("ssm", "POST", "https://ssm.eu-west-1.amazonaws.com/",
         b'{"Name": "/deploylib/production/live"}', "AmazonSSM.GetParameter"),
        ("autoscaling", "POST", "https://autoscaling.eu-west-1.amazonaws.com/", form.encode(),
         ""),
    ]
    for service, method, url, body, target in cases:
        ours = signer["sign"](service, "eu-west-1", method, url, body, key, secret, token, now,
                              target)
        request = AWSRequest(method=method, url=url, data=body, headers={
            name: value for name, value in ours.items()
            if name in ("x-amz-content-sha256", "x-amz-target")})
        # (S3 over https: botocore would send UNSIGNED-PAYLOAD unless told to sign the body)
        request.context["client_config"] = type("Config", (), {
            "s3": {"payload_signing_enabled": True}})()
        auth = botocore.auth.S3SigV4Auth if service == "s3" else botocore.auth.SigV4Auth
        auth(Credentials(key, secret, token), service, "eu-west-1").add_auth(request)
        assert ours["authorization"] == request.headers["Authorization"], service
        assert ours["x-amz-date"] == request.headers["X-Amz-Date"] == "20261207T120005Z"
        assert ours["x-amz-security-token"] == request.headers["X-Amz-Security-Token"]
