"""The sample application: a tiny HTTP service that says which release it is.

GET /health -> {"version": "<release>", "host": "<address>"}; GET /healthz -> "ok" (a
health endpoint as most apps have one: it says the app is up, not which release);
GET / -> a greeting, after WORK seconds of work (a page takes a moment to make);
GET /slow?seconds=N -> the greeting after N seconds (at most 60): a long request, as a
report or an upload is, that a drain must wait for.

A release can be made to misbehave on purpose (what a verification window must catch):
a `misbehave.json` beside this file, {"fail": 0.2} answers that share of GET / with a
500, {"slower": 3} makes its work take that many times as long. Its health endpoints
answer as ever: such a release passes every health check.
It binds to APP_HOST:APP_PORT (defaults 0.0.0.0:8080); its release is the VERSION file
packed beside it by `invoke artifact`.

It reloads without dropping a request, as gunicorn does on SIGHUP: a small master process
holds the listening socket and runs one worker, started from the release `current`
points at and handed the socket by inheritance. On SIGHUP the master starts a worker from
`current` again (a new release, after a switch); once that worker is serving, the old
one stops accepting, finishes what it has in flight and exits. A new worker that fails to
start leaves the old one serving. SIGTERM stops both, in-flight requests finished.
"""

import json
import os
import random
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

HERE = Path(__file__).resolve().parent
VERSION = (HERE / "VERSION").read_text().strip()
HOST = os.environ.get("APP_HOST", "0.0.0.0")
PORT = int(os.environ.get("APP_PORT", "8080"))
READY_WITHIN = 30.0  # seconds a new worker has to start serving
WORK = 0.01  # seconds GET / takes to make
_ASKED = HERE / "misbehave.json"
MISBEHAVE = json.loads(_ASKED.read_text()) if _ASKED.exists() else {}
FAIL_SHARE = float(MISBEHAVE.get("fail", 0))
SLOWER = float(MISBEHAVE.get("slower", 1))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5  # an idle keep-alive connection does not hold a stopping worker forever

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/health":
            body = json.dumps({"version": VERSION, "host": HOST}).encode()
            kind = "application/json"
        elif self.path == "/healthz":
            body, kind = b"ok\n", "text/plain"
        elif self.path == "/":
            time.sleep(WORK * SLOWER)
            if FAIL_SHARE and random.random() < FAIL_SHARE:
                self.send_error(500, "failed on purpose (misbehave.json)")
                return
            body = f"hello from release {VERSION}\n".encode()
            kind = "text/plain"
        elif urlsplit(self.path).path == "/slow":
            query = parse_qs(urlsplit(self.path).query)
            try:
                seconds = min(60.0, max(0.0, float(query.get("seconds", ["5"])[0])))
            except ValueError:
                self.send_error(400, "seconds must be a number")
                return
            time.sleep(seconds)
            body = f"hello from release {VERSION}, after {seconds:g}s\n".encode()
            kind = "text/plain"
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass  # health checks would flood the log


def worker(listen_fd: int, ready_fd: int) -> None:
    """Serve on the socket the master handed over; say so on ready_fd; on SIGTERM stop
    accepting and return once every request in flight is answered."""
    sock = socket.socket(fileno=listen_fd)
    server = ThreadingHTTPServer(sock.getsockname()[:2], Handler, bind_and_activate=False)
    server.socket.close()
    server.socket = sock
    server.daemon_threads = False  # server_close() waits for the requests in flight
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    master = os.getppid()

    def orphaned() -> None:  # the master gone (killed): a worker never serves on alone
        while os.getppid() == master:
            time.sleep(0.5)
        server.shutdown()

    threading.Thread(target=orphaned, daemon=True).start()
    os.write(ready_fd, b"ready")
    os.close(ready_fd)
    print(f"release {VERSION} serving on {HOST}:{PORT} (pid {os.getpid()})", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()


def current_release() -> Path:
    """The release `current` points at now (the master may outlive several)."""
    link = HERE.parent.parent / "current"
    return link.resolve() if link.exists() else HERE


def spawn(sock: socket.socket) -> subprocess.Popen | None:
    """A worker from the current release, once it serves; None if it did not start."""
    release = current_release()
    r, w = os.pipe()
    env = dict(os.environ, APP_LISTEN_FD=str(sock.fileno()), APP_READY_FD=str(w))
    proc = subprocess.Popen([sys.executable, str(release / "app.py")], cwd=release, env=env,
                            pass_fds=(sock.fileno(), w))
    os.close(w)
    ready, _, _ = select.select([r], [], [], READY_WITHIN)
    said = os.read(r, 5) if ready else b""
    os.close(r)
    if said == b"ready":
        return proc
    proc.kill()
    proc.wait()
    print(f"a worker from {release.name} did not start; the serving one stays", flush=True)
    return None


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    proc.wait()


def master() -> None:
    sock = socket.create_server((HOST, PORT), backlog=128)
    sock.set_inheritable(True)
    current = spawn(sock)
    if current is None:
        sys.exit("the app did not start")
    wanted: list[str] = []
    wake = threading.Event()

    def on(name: str):
        return lambda *_: (wanted.append(name), wake.set())

    signal.signal(signal.SIGHUP, on("reload"))
    signal.signal(signal.SIGTERM, on("stop"))
    print(f"master {os.getpid()} holds {HOST}:{PORT}", flush=True)
    while True:
        wake.wait(0.2)
        wake.clear()
        while wanted:
            if wanted.pop(0) == "stop":
                stop(current)
                return
            fresh = spawn(sock)
            if fresh is not None:  # the new worker serves: the old one finishes and goes
                old, current = current, fresh
                stop(old)
        if current.poll() is not None:
            sys.exit(f"the worker exited ({current.returncode})")


def main() -> None:
    if "APP_LISTEN_FD" in os.environ:
        worker(int(os.environ["APP_LISTEN_FD"]), int(os.environ["APP_READY_FD"]))
    else:
        master()


if __name__ == "__main__":
    main()
