"""A small HTTP server that speaks the parts of Jenkins' REST API python-jenkins uses.

No Jenkins server can run here, so this stands in for one, answering with bodies shaped
like Jenkins 2.x: the crumb issuer (and 403 for a POST without the crumb), 404 for an
unknown job, buildWithParameters answering 201 with the queue item in Location, queue
items that wait, start or are cancelled, builds that run and finish, consoleText, and
job config.xml get/create/update. It refuses what Jenkins refuses: credentials it does
not know (401, even where anonymous users may build), `/build` without parameters on a
parameterized job (400), and it drops parameters a job does not define (SECURITY-170).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

CRUMB = "5f1e-crumb"


def stored(config: str) -> str:
    """A config.xml as Jenkins stores it: its own XML 1.1 header and the plugin version
    on the root element, whatever the client sent."""
    body = config.strip()
    if body.startswith("<?xml"):
        body = body.split("?>", 1)[1].lstrip()
    body = re.sub(r"<!--.*?-->\s*", "", body, flags=re.S)  # XStream keeps no comments
    body = re.sub(r"^(<[\w.-]+)", r'\1 plugin="workflow-job@1436.vfa_244484591f"', body, count=1)
    return "<?xml version='1.1' encoding='UTF-8'?>\n" + body
CRUMB_FIELD = "Jenkins-Crumb"


@dataclass
class Job:
    name: str
    config: str = "<flow-definition/>"
    result: str = "SUCCESS"  # what its builds end with
    cancel: bool = False  # queued builds are cancelled instead of started
    polls_in_queue: int = 1  # queue polls before a build starts
    polls_building: int = 1  # build polls before it finishes
    builds: list[dict] = field(default_factory=list)
    updates: int = 0  # config.xml POSTs after creation
    # The parameters it defines (None: not parameterized); read from its config.xml.
    parameters: list[str] | None = None
    dropped: list[str] = field(default_factory=list)  # parameters sent it does not define
    # What its builds do, when a test gives it (else they only take polls_building polls):
    # called with a build's parameters on a thread of its own as the build starts; the
    # build runs until it returns, and ends with the result it returns.
    runs: Callable[[dict], str] | None = None


def defined_parameters(config: str) -> list[str] | None:
    block = re.search(r"<parameterDefinitions>(.*?)</parameterDefinitions>", config, re.S)
    return re.findall(r"<name>([^<]+)</name>", block.group(1)) if block else None


class FakeJenkins:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.queue: dict[int, dict] = {}
        self.requests: list[tuple[str, str]] = []
        self.authorizations: set[str] = set()
        # user -> API token: a request with other credentials is refused (401); one with
        # none is anonymous, and anonymous users may build here.
        self.users: dict[str, str] = {}
        self._next_item = 100
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"

    def start(self) -> FakeJenkins:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()

    def add_job(self, name: str, **kw) -> Job:
        if "config" in kw and "parameters" not in kw:
            kw["parameters"] = defined_parameters(kw["config"])
        self.jobs[name] = Job(name, **kw)
        return self.jobs[name]

    def known(self, authorization: str) -> bool:
        import base64

        if not authorization:
            return True
        try:
            user, _, token = base64.b64decode(authorization.split(" ", 1)[1]).decode() \
                .partition(":")
        except (IndexError, ValueError):
            return False
        return self.users.get(user) == token

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, status, body="", kind="application/json", headers=None):
                data = body.encode() if isinstance(body, str) else body
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _json(self, obj, status=200):
                self._send(status, json.dumps(obj))

            def _not_found(self):
                self._send(404, "<html><body><h2>HTTP ERROR 404 Not Found</h2></body></html>",
                           "text/html")

            def do_GET(self):  # noqa: N802
                path = urlparse(self.path).path
                fake.requests.append(("GET", self.path))
                fake.authorizations.add(self.headers.get("Authorization", ""))
                if not fake.known(self.headers.get("Authorization", "")):
                    return self._send(401, "Invalid password/token for user", "text/html")
                with fake._lock:
                    self._get(path)

            def _get(self, path):
                if path == "/crumbIssuer/api/json":
                    return self._json({"_class": "hudson.security.csrf.DefaultCrumbIssuer",
                                       "crumb": CRUMB, "crumbRequestField": CRUMB_FIELD})
                if m := re.fullmatch(r"/queue/item/(\d+)/api/json", path):
                    item = fake.queue.get(int(m.group(1)))
                    if item is None:
                        return self._not_found()
                    return self._json(fake._poll_queue(item))
                if m := re.fullmatch(r"/job/([^/]+)/(\d+)/api/json", path):
                    job = fake.jobs.get(m.group(1))
                    n = int(m.group(2))
                    if job is None or n > len(job.builds):
                        return self._not_found()
                    return self._json(fake._poll_build(job, job.builds[n - 1]))
                if m := re.fullmatch(r"/job/([^/]+)/(\d+)/consoleText", path):
                    job = fake.jobs.get(m.group(1))
                    if job is None:
                        return self._not_found()
                    return self._send(200, f"Started by user deploy\nFinished: {job.result}\n",
                                      "text/plain")
                if m := re.fullmatch(r"/job/([^/]+)/config.xml", path):
                    job = fake.jobs.get(m.group(1))
                    return self._send(200, job.config, "application/xml") if job else \
                        self._not_found()
                if m := re.fullmatch(r"/job/([^/]+)/api/json", path):
                    job = fake.jobs.get(m.group(1))
                    if job is None:
                        return self._not_found()
                    return self._json({"_class": "org.jenkinsci.plugins.workflow.job.WorkflowJob",
                                       "name": job.name, "url": f"{fake.url}job/{job.name}/"})
                return self._not_found()

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                fake.requests.append(("POST", self.path))
                fake.authorizations.add(self.headers.get("Authorization", ""))
                if not fake.known(self.headers.get("Authorization", "")):
                    return self._send(401, "Invalid password/token for user", "text/html")
                if self.headers.get(CRUMB_FIELD) != CRUMB:
                    return self._send(403, "<html><body>No valid crumb was included in the "
                                      "request</body></html>", "text/html")
                url = urlparse(self.path)
                with fake._lock:
                    self._post(url.path, parse_qs(url.query), body)

            def _post(self, path, query, body):
                # /build is what python-jenkins posts when there are no parameters
                if m := re.fullmatch(r"/job/([^/]+)/(buildWithParameters|build)", path):
                    job = fake.jobs.get(m.group(1))
                    if job is None:
                        return self._not_found()
                    if m.group(2) == "build" and job.parameters is not None:
                        return self._send(400, "<html><body>Nothing is submitted"
                                          "</body></html>", "text/html")
                    number = fake._next_item
                    fake._next_item += 1
                    params = {k: v[0] for k, v in query.items()}
                    if job.parameters is not None:
                        job.dropped += [k for k in params if k not in job.parameters]
                        params = {k: v for k, v in params.items() if k in job.parameters}
                    fake.queue[number] = {"job": job, "params": params, "polls": 0, "build": None}
                    return self._send(201, "", "text/plain",
                                      {"Location": f"{fake.url}queue/item/{number}/"})
                if path == "/createItem":
                    name = query.get("name", [""])[0]
                    if name in fake.jobs:
                        return self._send(400, "A job already exists with the name", "text/plain")
                    fake.add_job(name, config=stored(body))
                    return self._send(200, "")
                if m := re.fullmatch(r"/job/([^/]+)/config.xml", path):
                    job = fake.jobs.get(m.group(1))
                    if job is None:
                        return self._not_found()
                    job.config = stored(body)
                    job.parameters = defined_parameters(job.config)
                    job.updates += 1
                    return self._send(200, "")
                return self._not_found()

        return Handler

    def _poll_queue(self, item: dict) -> dict:
        job: Job = item["job"]
        item["polls"] += 1
        base = {"id": list(self.queue.values()).index(item), "task": {"name": job.name},
                "params": "\n" + "\n".join(f"{k}={v}" for k, v in item["params"].items())}
        if job.cancel:
            return {"_class": "hudson.model.Queue$CancelledItem", "cancelled": True,
                    "executable": None, **base}
        if item["build"] is None and item["polls"] > job.polls_in_queue:
            job.builds.append({"number": len(job.builds) + 1, "polls": 0,
                               "params": item["params"]})
            item["build"] = job.builds[-1]
            if job.runs is not None:
                self._start(job, item["build"])
        if item["build"] is None:
            return {"_class": "hudson.model.Queue$WaitingItem", "why": "Waiting for next "
                    "available executor", "executable": None, **base}
        n = item["build"]["number"]
        return {"_class": "hudson.model.Queue$LeftItem", "cancelled": False, **base,
                "executable": {"_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
                               "number": n, "url": f"{self.url}job/{job.name}/{n}/"}}

    @staticmethod
    def _start(job: Job, build: dict) -> None:
        def work() -> None:
            try:
                build["result"] = job.runs(build["params"])
            except BaseException:  # noqa: BLE001 - a build that broke fails
                build["result"] = "FAILURE"
                raise
        build["thread"] = threading.Thread(target=work, daemon=True)
        build["thread"].start()

    def _poll_build(self, job: Job, build: dict) -> dict:
        build["polls"] += 1
        if job.runs is not None:
            done = not build["thread"].is_alive()
            return self._build_info(job, build, done, build.get("result", "FAILURE"))
        done = build["polls"] > job.polls_building
        return self._build_info(job, build, done, job.result)

    def _build_info(self, job: Job, build: dict, done: bool, result: str) -> dict:
        return {"_class": "org.jenkinsci.plugins.workflow.job.WorkflowRun",
                "number": build["number"], "building": not done,
                "result": result if done else None,
                "url": f"{self.url}job/{job.name}/{build['number']}/",
                "actions": [{"_class": "hudson.model.ParametersAction", "parameters": [
                    {"name": k, "value": v} for k, v in build["params"].items()]}]}
