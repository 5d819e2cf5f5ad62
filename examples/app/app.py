"""The sample application: a tiny HTTP service that says which release it is.

GET /health -> {"version": "<release>", "host": "<address>"}; GET /healthz -> "ok" (a
health endpoint as most apps have one: it says the app is up, not which release);
GET / -> a greeting; GET /slow?seconds=N -> the greeting after N seconds (at most 60): a
long request, as a report or an upload is, that a drain must wait for.
It binds to APP_HOST:APP_PORT (defaults 0.0.0.0:8080); its release is the VERSION file
packed beside it by `invoke artifact`.
"""

import json
import os
import signal
import threading
import time
from urllib.parse import parse_qs, urlsplit
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

VERSION = (Path(__file__).resolve().parent / "VERSION").read_text().strip()
HOST = os.environ.get("APP_HOST", "0.0.0.0")
PORT = int(os.environ.get("APP_PORT", "8080"))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if self.path == "/health":
            body = json.dumps({"version": VERSION, "host": HOST}).encode()
            kind = "application/json"
        elif self.path == "/healthz":
            body, kind = b"ok\n", "text/plain"
        elif self.path == "/":
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


def main() -> None:
    server = ThreadingHTTPServer((HOST, PORT), Handler)
    server.daemon_threads = True
    # On SIGTERM stop accepting and return from serve_forever; shutdown() must run on
    # another thread than the one serving.
    signal.signal(signal.SIGTERM,
                  lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    print(f"release {VERSION} listening on {HOST}:{PORT}", flush=True)
    server.serve_forever(poll_interval=0.05)
    server.server_close()


if __name__ == "__main__":
    main()
