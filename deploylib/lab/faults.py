"""Faults the lab's AWS API can be told to answer with, for failure tests.

A test writes `faults.json` in the lab directory:

    {"rules": [{"action": "DescribeInstances", "error": "RequestLimitExceeded", "times": 3},
               {"action": "CopyImage", "region": "eu-west-1", "error": "InvalidParameter"}]}

and the next matching requests (service-independent action name — for S3's REST API the
one its method and path make, HeadObject, GetObject, PutObject —, optional region,
`times` of them, or every one when `times` is absent) get that error in the service's
own wire format, before moto sees them. A rule with `image_state` instead of `error`
lets moto answer DescribeImages and reports that state for every image in it: a copy
held `pending` for as long as the rule is there, or one that `failed`. Hits are
counted in `faults-hits.json`, so a test can tell the fault was met rather than missed.
Throttling codes get the status AWS uses for them, so botocore retries them as it would
against AWS.
"""

from __future__ import annotations

import io
import json
import re
import threading
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import make_server

from deploylib.lab import iam, sigv4

_THROTTLING = {"RequestLimitExceeded": 503, "Throttling": 400, "ThrottlingException": 400,
               "SlowDown": 503}
_STATUS = {"AccessDenied": 403, "UnauthorizedOperation": 403, "NoSuchKey": 404}
# The code each service answers an IAM refusal with.
_DENIED = {"ec2": "UnauthorizedOperation", "ssm": "AccessDeniedException",
           "dynamodb": "AccessDeniedException", "kms": "AccessDeniedException"}
_S3_OPERATIONS = {("HEAD", True): "HeadObject", ("GET", True): "GetObject",
                  ("PUT", True): "PutObject", ("HEAD", False): "HeadBucket",
                  ("PUT", False): "CreateBucket"}


class Faults:
    def __init__(self, directory: Path):
        self.file = directory / "faults.json"
        self.hits_file = directory / "faults-hits.json"
        self._lock = threading.Lock()
        self._loaded: tuple[float, list[dict[str, Any]]] | None = None
        self.hits: dict[str, int] = {}

    def _rules(self) -> list[dict[str, Any]]:
        try:
            mtime = self.file.stat().st_mtime
        except FileNotFoundError:
            self._loaded = None
            return []
        if self._loaded is None or self._loaded[0] != mtime:
            # A new file is a new set of faults: its counters start again.
            self._loaded = (mtime, json.loads(self.file.read_text()).get("rules", []))
            self.hits = {}
        return self._loaded[1]

    def match(self, action: str, region: str) -> dict[str, Any] | None:
        with self._lock:
            for n, rule in enumerate(self._rules()):
                if rule["action"] != action or rule.get("region", region) != region:
                    continue
                key = f"{n}:{action}"
                if "times" in rule and self.hits.get(key, 0) >= rule["times"]:
                    continue
                self.hits[key] = self.hits.get(key, 0) + 1
                self.hits_file.write_text(json.dumps(self.hits))
                return rule
        return None


def _service(environ: dict[str, Any]) -> str:
    """The service the request is signed for ("" when unsigned)."""
    signed = iam.scope(environ)
    return signed[2] if signed else ""


def _action(environ: dict[str, Any], body: bytes) -> str:
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return target.rsplit(".", 1)[-1]
    if environ.get("PATH_INFO", "").startswith("/service/"):  # Smithy RPC v2 (CloudWatch)
        return str(environ["PATH_INFO"]).rstrip("/").rsplit("/", 1)[-1]
    query = parse_qs(environ.get("QUERY_STRING", ""))
    form = parse_qs(body.decode("utf-8", "replace")) if body else {}
    named = (form.get("Action") or query.get("Action") or [""])[0]
    if named or _service(environ) != "s3":
        return named
    # S3's REST API names no action: the method and whether a key is in the path do.
    method = environ.get("REQUEST_METHOD", "")
    has_key = "/" in environ.get("PATH_INFO", "").strip("/")
    return _S3_OPERATIONS.get((method, has_key), "")


def _error(environ: dict[str, Any], rule: dict[str, Any]) -> tuple[int, str, bytes]:
    code = rule["error"]
    status = int(rule.get("status", _THROTTLING.get(code, _STATUS.get(code, 400))))
    message = rule.get("message", "injected by the lab")
    service = rule.get("service", _service(environ))
    if environ.get("HTTP_X_AMZ_TARGET"):
        body = json.dumps({"__type": code, "message": message}).encode()
        return status, "application/x-amz-json-1.0", body
    if service == "s3":
        xml = f"<Error><Code>{code}</Code><Message>{message}</Message></Error>"
        return status, "application/xml", b"" if environ.get("REQUEST_METHOD") == "HEAD" \
            else xml.encode()
    if service == "ec2":
        xml = (f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message>"
               "</Error></Errors><RequestID>lab</RequestID></Response>")
    else:
        xml = (f"<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code>"
               f"<Message>{message}</Message></Error><RequestId>lab</RequestId></ErrorResponse>")
    return status, "text/xml", xml.encode()


class FaultyApp:
    """WSGI middleware in front of moto: answers only requests signed with a key the lab
    knows (deploylib.lab.sigv4), holds the tool to its policy (deploylib.lab.iam), then
    answers matching requests with a fault."""

    def __init__(self, app: Any, faults: Faults, enforcer: iam.Enforcer | None = None,
                 keys: sigv4.Keys | None = None):
        self.app = app
        self.faults = faults
        self.enforcer = enforcer
        self.keys = keys

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        unsigned = sigv4.check(environ, body, self.keys) if self.keys else None
        if unsigned is not None:
            return _answer(start_response, _error(environ, {
                "error": unsigned.code, "status": unsigned.status,
                "message": unsigned.message, "service": unsigned.service}))
        request = iam.call(environ, body)
        refused = self.enforcer.refusal(request) if self.enforcer else None
        if refused and request:  # (a refusal is always of a signed request)
            code, message = refused
            return _answer(start_response, _error(environ, {
                "error": _DENIED.get(request.action.split(":")[0], code), "message": message}))
        rule = self.faults.match(_action(environ, body), request.region if request else "")
        if rule is not None and "image_state" in rule:
            return self._with_image_state(environ, start_response, rule["image_state"])
        if rule is not None:
            return _answer(start_response, _error(environ, rule))
        if self.enforcer and request and self.enforcer.hides_missing_keys(request):
            return self._missing_as_denied(environ, start_response, request)
        return self.app(environ, start_response)

    def _through(self, environ: dict[str, Any]) -> tuple[str, list[Any], bytes]:
        """moto's whole answer, for the middleware to rewrite."""
        seen: list[Any] = []
        body = b"".join(self.app(environ, lambda status, headers, *exc: seen.append(
            (status, headers))))
        return seen[0][0], seen[0][1], body

    def _with_image_state(self, environ: dict[str, Any], start_response: Any,
                          state: str) -> list[bytes]:
        status, headers, body = self._through(environ)
        body = re.sub(rb"<imageState>\w+</imageState>",
                      f"<imageState>{state}</imageState>".encode(), body)
        headers = [(k, str(len(body)) if k.lower() == "content-length" else v)
                   for k, v in headers]
        start_response(status, headers)
        return [body]

    def _missing_as_denied(self, environ: dict[str, Any], start_response: Any,
                           request: iam.Call) -> list[bytes]:
        # As S3: without s3:ListBucket, a key that is not there is not told apart from
        # one the caller may not read.
        status, headers, body = self._through(environ)
        if not status.startswith("404"):
            start_response(status, headers)
            return [body]
        bucket = request.resources[0].split("/", 1)[0]
        return _answer(start_response, _error(environ, {
            "error": "AccessDenied", "message": iam.denial("s3:ListBucket", bucket)}))


def _answer(start_response: Any, error: tuple[int, str, bytes]) -> list[bytes]:
    status, kind, payload = error
    start_response(f"{status} Refused", [("Content-Type", kind),
                                         ("Content-Length", str(len(payload)))])
    return [payload]


class LabServer(ThreadedMotoServer):
    """moto's threaded server with the fault middleware in front of it, holding the
    tool to the policy in the lab directory when there is one, and answering only
    requests signed with a key it knows when given `keys` (the lab's always is)."""

    def __init__(self, faults: Faults, enforcer: iam.Enforcer | None = None,
                 keys: sigv4.Keys | None = None):
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.faults = faults
        self.enforcer = enforcer
        self.keys = keys

    def _server_entry(self) -> None:
        app = FaultyApp(DomainDispatcherApplication(create_backend_app), self.faults,
                        self.enforcer, self.keys)
        self._server = make_server(self._ip_address, self._port, app, True)
        self._server_ready_event.set()
        self._server.serve_forever()
