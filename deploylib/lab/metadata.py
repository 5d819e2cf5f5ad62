"""The lab's instance metadata service (emulated): what a lab instance's user data asks
169.254.169.254 on EC2, served on loopback, one path prefix per instance.

IMDSv2 only, as the tool's instances require (HttpTokens=required): a PUT to
`/latest/api/token` gives a token, and every read needs it (401 without). It tells the
instance its id, its region and — when it was launched with an instance profile — its
role's credentials: the lab's instance key (deploylib.lab.KEY_IDS), which the lab
holds to the instance role's policy (deploylib/templates/iam-policy-instance.json). A lab
instance's user data is pointed at `http://127.0.0.1:PORT/REGION/INSTANCE` instead
(DEPLOY_IMDS), since loopback is all a lab host has.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moto.core import DEFAULT_ACCOUNT_ID
from moto.ec2.models import ec2_backends

INSTANCE_ROLE = "deploy-instance"


def _profile(region: str, instance_id: str) -> str | None:
    """The instance profile the instance was launched with (None: none, or no such
    instance): RunInstances' association, or its launch template's (the lab's Auto
    Scaling sets it, deploylib.lab.scaling)."""
    try:
        backend = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    except KeyError:
        return None
    inst = backend.get_instance_by_id(instance_id)
    if inst is None:
        return None
    if instance_id in backend.iam_instance_profile_associations:
        return instance_id
    profile = getattr(inst, "iam_instance_profile", None) or {}
    return (profile.get("Arn") or profile.get("Name")) if isinstance(profile, dict) else profile


class MetadataService:
    def __init__(self, credentials: dict[str, str]) -> None:
        self.credentials = credentials  # the instance key's, as boto3 takes them
        self._tokens: dict[str, tuple[str, float]] = {}
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_: Any) -> None:
                pass

            def _answer(self, status: int, body: str = "") -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _where(self) -> tuple[str, str, str] | None:
                parts = self.path.split("/", 3)
                if len(parts) < 4 or not parts[2].startswith("i-"):
                    return None
                return parts[1], parts[2], "/" + parts[3]

            def do_PUT(self) -> None:  # noqa: N802 - http.server's name
                where = self._where()
                if where is None or where[2] != "/latest/api/token":
                    return self._answer(404)
                ttl = int(self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "0") or 0)
                if not 1 <= ttl <= 21600:
                    return self._answer(400)
                token = secrets.token_urlsafe(32)
                service._tokens[token] = (where[1], time.monotonic() + ttl)
                self._answer(200, token)

            def do_GET(self) -> None:  # noqa: N802
                where = self._where()
                if where is None:
                    return self._answer(404)
                region, instance_id, path = where
                held = service._tokens.get(self.headers.get("X-aws-ec2-metadata-token", ""))
                if held is None or held[0] != instance_id or held[1] < time.monotonic():
                    return self._answer(401)
                answer = service.answer(region, instance_id,
                                        path.removeprefix("/latest/meta-data/"))
                self._answer(200, answer) if answer is not None else self._answer(404)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]

    def answer(self, region: str, instance_id: str, path: str) -> str | None:
        if path == "instance-id":
            return instance_id
        if path == "placement/region":
            return region
        if path.startswith("iam/security-credentials"):
            if _profile(region, instance_id) is None:
                return None  # no instance profile: EC2 has no credentials to give
            role = path.removeprefix("iam/security-credentials").strip("/")
            if not role:
                return INSTANCE_ROLE
            if role != INSTANCE_ROLE:
                return None
            expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 21600))
            return json.dumps({
                "Code": "Success", "Type": "AWS-HMAC", "Expiration": expires,
                "AccessKeyId": self.credentials["aws_access_key_id"],
                "SecretAccessKey": self.credentials["aws_secret_access_key"],
                "Token": self.credentials["aws_session_token"]})
        return None

    def base(self, region: str, instance_id: str) -> str:
        """What DEPLOY_IMDS is for one instance."""
        return f"http://127.0.0.1:{self.port}/{region}/{instance_id}"

    def start(self) -> None:
        threading.Thread(target=self._server.serve_forever, name="lab-imds",
                         daemon=True).start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
