"""The lab's AWS endpoint answers only requests signed with a key it knows, as AWS does.

moto checks no signature: any process on the machine could call the lab's endpoint, and
a RunInstances' user data runs as root. So in front of moto every request must carry a
Signature Version 4 — in its Authorization header, or a presigned URL's query — made
with the secret of a key the lab knows: its own (made afresh by each lab, kept readable
by its owner only: deploylib.lab.make_keys), an IAM user's access key, or an assumed
role's session (both made through the lab's IAM and STS by its administrator). The
signature is computed again from the request as it arrived — the method, the path, the
query, the headers the request says it signed, the payload's hash — and compared.
Refusals are in each service's words: a request with no signature, a key the lab does
not know, a session token that is not the key's, a session that has expired, a
signature that does not match, a request dated more than 15 minutes from now, a body
that is not the one its x-amz-content-sha256 names; and, as S3 refuses them, an S3
request without x-amz-content-sha256 or with an x-amz-* header it did not sign.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from calendar import timegm
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote

from botocore.utils import normalize_url_path

ALGORITHM = "AWS4-HMAC-SHA256"
SKEW = 15 * 60  # seconds a signed request's date may be from now (AWS: 15 minutes)
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
_AUTH = re.compile(r"AWS4-HMAC-SHA256\s+Credential=([^,\s]+),\s*SignedHeaders=([^,\s]+),"
                   r"\s*Signature=([0-9a-f]{64})\s*$")
_HEX64 = re.compile(r"[0-9a-f]{64}")

# Each refusal, by service ("": the others): (code, HTTP status, message), in its words.
_MISSING = {"s3": ("AccessDenied", 403, "Access Denied"),
            "dynamodb": ("MissingAuthenticationTokenException", 400,
                         "Request is missing Authentication Token"),
            "": ("MissingAuthenticationToken", 403, "Request is missing Authentication Token")}
_INVALID = "The security token included in the request is invalid."
_UNKNOWN = {"s3": ("InvalidAccessKeyId", 403,
                   "The AWS Access Key Id you provided does not exist in our records."),
            "ec2": ("AuthFailure", 401,
                    "AWS was not able to validate the provided access credentials"),
            "dynamodb": ("UnrecognizedClientException", 400, _INVALID),
            "": ("InvalidClientTokenId", 403, _INVALID)}
_DIFFERS = ("The request signature we calculated does not match the signature you provided. "
            "Check your AWS Secret Access Key and signing method. Consult the service "
            "documentation for details.")
_MISMATCH = {"s3": ("SignatureDoesNotMatch", 403,
                    "The request signature we calculated does not match the signature you "
                    "provided. Check your key and signing method."),
             "ec2": ("AuthFailure", 401,
                     "AWS was not able to validate the provided access credentials"),
             "dynamodb": ("InvalidSignatureException", 400, _DIFFERS),
             "": ("SignatureDoesNotMatch", 403, _DIFFERS)}
_EXPIRED = {"s3": ("ExpiredToken", 400, "The provided token has expired."),
            "dynamodb": ("ExpiredTokenException", 400,
                         "The security token included in the request is expired"),
            "": ("ExpiredToken", 403, "The security token included in the request is expired")}


@dataclass(frozen=True)
class Secret:
    """What the lab knows of a key: its secret, and for a session its token and end."""

    secret: str
    token: str | None = None
    expires: float | None = None  # epoch seconds


@dataclass(frozen=True)
class Refusal:
    service: str  # the service the request was for, as well as it can be told
    code: str
    status: int
    message: str


@dataclass(frozen=True)
class _Signed:
    key_id: str
    date: str  # yyyymmdd
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str
    amz_date: str  # yyyymmddThhmmssZ
    presigned: bool
    expires: int | None
    token: str | None


def _refusal(table: dict[str, tuple[str, int, str]], service: str,
             message: str | None = None) -> Refusal:
    code, status, words = table.get(service) or table[""]
    return Refusal(service, code, status, message or words)


def _pairs(query: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query.split("&"):
        if part:
            key, _, value = part.partition("=")
            pairs.append((unquote(key), unquote(value)))
    return pairs


def _parse(environ: dict[str, Any]) -> _Signed | None:
    """The signature a request carries (None: it carries none)."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header:
        found = _AUTH.match(header.strip())
        if not found:
            return None
        credential, signed, signature = found.groups()
        amz_date = environ.get("HTTP_X_AMZ_DATE", "")
        presigned, expires, token = False, None, environ.get("HTTP_X_AMZ_SECURITY_TOKEN")
    else:
        query = dict(_pairs(environ.get("QUERY_STRING", "")))
        if query.get("X-Amz-Algorithm") != ALGORITHM or "X-Amz-Signature" not in query:
            return None
        credential, signed = query.get("X-Amz-Credential", ""), query.get(
            "X-Amz-SignedHeaders", "")
        signature, amz_date = query["X-Amz-Signature"], query.get("X-Amz-Date", "")
        presigned, token = True, query.get("X-Amz-Security-Token")
        expires = int(query["X-Amz-Expires"]) if query.get("X-Amz-Expires", "").isdigit() \
            else None
    parts = credential.split("/")
    if len(parts) != 5 or parts[4] != "aws4_request":
        return None
    return _Signed(parts[0], parts[1], parts[2], parts[3], tuple(signed.split(";")),
                   signature, amz_date, presigned, expires, token)


def _header(environ: dict[str, Any], name: str) -> str | None:
    key = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}.get(
        name, "HTTP_" + name.upper().replace("-", "_"))
    value = environ.get(key)
    return None if value is None else " ".join(str(value).split())


def canonical_request(environ: dict[str, Any], signed: _Signed, body: bytes) -> str:
    """The request as SigV4 signs it, rebuilt from what arrived."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI") or quote(
        environ.get("PATH_INFO", "/"))
    path = raw.split("?", 1)[0] or "/"
    # S3 signs the path as sent; the other services its normalised form, encoded again.
    uri = path if signed.service == "s3" else quote(normalize_url_path(path), safe="/~")
    pairs = [(quote(k, safe="-_.~"), quote(v, safe="-_.~"))
             for k, v in _pairs(environ.get("QUERY_STRING", ""))
             if not (signed.presigned and k == "X-Amz-Signature")]
    query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
    headers = "".join(f"{name}:{_header(environ, name) or ''}\n"
                      for name in signed.signed_headers)
    payload = environ.get("HTTP_X_AMZ_CONTENT_SHA256") or (
        UNSIGNED_PAYLOAD if signed.presigned and signed.service == "s3"
        else hashlib.sha256(body).hexdigest())
    return "\n".join([environ.get("REQUEST_METHOD", "GET"), uri, query, headers,
                      ";".join(signed.signed_headers), payload])


def signature(secret: str, signed: _Signed, canonical: str) -> str:
    def sign(key: bytes, text: str) -> bytes:
        return hmac.new(key, text.encode(), hashlib.sha256).digest()

    key = sign(f"AWS4{secret}".encode(), signed.date)
    for part in (signed.region, signed.service, "aws4_request"):
        key = sign(key, part)
    to_sign = "\n".join([ALGORITHM, signed.amz_date, f"{signed.date}/{signed.region}/"
                         f"{signed.service}/aws4_request",
                         hashlib.sha256(canonical.encode()).hexdigest()])
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def _guess_service(environ: dict[str, Any], body: bytes) -> str:
    """An unsigned request names no service: DynamoDB's say so in X-Amz-Target; S3's REST
    calls are those with neither a target nor an Action."""
    target = environ.get("HTTP_X_AMZ_TARGET", "")
    if target:
        return "dynamodb" if target.startswith("DynamoDB") else ""
    named = "Action=" in environ.get("QUERY_STRING", "") or body.startswith(b"Action=") or \
        b"&Action=" in body
    return "" if named else "s3"


def check(environ: dict[str, Any], body: bytes, secret_of: Callable[[str], Secret | None],
          now: float | None = None) -> Refusal | None:
    """Why the request is refused (None: it is signed with a key the lab knows)."""
    signed = _parse(environ)
    if signed is None:
        return _refusal(_MISSING, _guess_service(environ, body))
    service = signed.service
    known = secret_of(signed.key_id)
    if known is None:
        return _refusal(_UNKNOWN, service)
    now = time.time() if now is None else now
    if known.token is not None and signed.token != known.token:
        return _refusal(_UNKNOWN, service)  # a session's key is nothing without its token
    if known.expires is not None and now > known.expires:
        return _refusal(_EXPIRED, service)
    try:
        when = timegm(time.strptime(signed.amz_date, "%Y%m%dT%H%M%SZ"))
    except ValueError:
        return _refusal(_MISMATCH, service)
    if signed.amz_date[:8] != signed.date:
        return _refusal(_MISMATCH, service)
    if service == "s3" and not signed.presigned:
        # S3 asks every signed request for its payload's hash, and refuses an x-amz-*
        # header the signature does not cover: curl's signer before 8.0 sends no such hash,
        # and 7.81's leaves the session token unsigned (deploylib/templates/boot_sign.py).
        if "HTTP_X_AMZ_CONTENT_SHA256" not in environ:
            return Refusal(service, "InvalidRequest", 400, "Missing required header for "
                           "this request: x-amz-content-sha256")
        present = {k[5:].lower().replace("_", "-") for k in environ
                   if k.startswith("HTTP_X_AMZ_")}
        if present - set(signed.signed_headers):
            return Refusal(service, "AccessDenied", 403, "There were headers present in the "
                           "request which were not signed")
    given = environ.get("HTTP_X_AMZ_CONTENT_SHA256", "")
    if _HEX64.fullmatch(given) and given != hashlib.sha256(body).hexdigest():
        return Refusal(service, "XAmzContentSHA256Mismatch", 400,
                       "The provided 'x-amz-content-sha256' header does not match what was "
                       "computed.")
    expected = signature(known.secret, signed, canonical_request(environ, signed, body))
    if not hmac.compare_digest(expected, signed.signature):
        return _refusal(_MISMATCH, service)
    if signed.presigned:
        if signed.expires is not None and now > when + signed.expires:
            return Refusal(service, "AccessDenied", 403, "Request has expired")
    elif abs(now - when) > SKEW:
        if service == "s3":
            return Refusal(service, "RequestTimeTooSkewed", 403, "The difference between "
                           "the request time and the current time is too large.")
        return _refusal(_MISMATCH, service, f"Signature expired: {signed.amz_date} is now "
                        "earlier or later than 15 minutes from the current time.")
    return None


class Keys:
    """The keys the lab knows: its own, the access keys of users made through its IAM,
    and the sessions of roles assumed through its STS (moto keeps both)."""

    def __init__(self, own: dict[str, Secret]):
        self.own = own

    def __call__(self, key_id: str) -> Secret | None:
        if key_id in self.own:
            return self.own[key_id]
        from moto.iam.models import iam_backends
        from moto.sts.models import sts_backends

        # (snapshots: other threads of the server add to these as they answer)
        for partitions in list(sts_backends.values()):
            for backend in list(partitions.values()):
                for role in list(backend.assumed_roles):
                    if role.access_key_id == key_id:
                        return Secret(role.secret_access_key, role.session_token,
                                      timegm(role.expiration.timetuple()))
        for partitions in list(iam_backends.values()):
            for backend in list(partitions.values()):
                key = backend.access_keys.get(key_id)
                if key is not None and key.status == "Active" and not key.role_arn:
                    return Secret(key.secret_access_key)
        return None

    @classmethod
    def of_lab(cls, keys: dict[str, dict[str, str]]) -> Keys:
        """The register for a lab's own keys (deploylib.lab.make_keys)."""
        return cls({k["aws_access_key_id"]: Secret(k["aws_secret_access_key"],
                                                   k.get("aws_session_token"))
                    for k in keys.values()})
