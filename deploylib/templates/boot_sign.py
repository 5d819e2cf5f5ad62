"""How a server group's instance signs its AWS requests at boot (templates/boot.sh.j2 runs
this on the instance, with the instance's Python: cloud-init's).

    python3 boot_sign.py SERVICE REGION METHOD URL BODY_FILE [X-AMZ-TARGET]

environment: BOOT_CREDENTIALS, the instance role's credentials as the metadata service
gives them (JSON: AccessKeyId, SecretAccessKey, Token) — never in an argument, which any
user of the host may read.
Prints curl's config lines for the request's headers — Authorization, x-amz-date,
x-amz-content-sha256, x-amz-security-token (and X-Amz-Target) — signed with Signature
Version 4 as botocore signs them (tests/test_render.py compares the two, byte for byte).
curl's own signer (--aws-sigv4) is not used: before curl 8.0 it sends no
x-amz-content-sha256, which S3 requires of every request (curl/curl#9995), and 7.81's —
Ubuntu 22.04's — signs only host and x-amz-date, leaving x-amz-security-token unsigned,
which S3 refuses.
BODY_FILE ("-": none) is the request's body, sent by curl as it is read here.
"""

import datetime
import hashlib
import hmac
import json
import os
import sys
from urllib.parse import quote, unquote, urlsplit


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sign(service: str, region: str, method: str, url: str, body: bytes, key_id: str,
         secret: str, token: str, now: datetime.datetime, target: str = "") -> dict:
    """The headers that sign the request (SigV4), by name."""
    parts = urlsplit(url)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    headers = {"host": parts.netloc, "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
               "x-amz-date": amz_date}
    if token:
        headers["x-amz-security-token"] = token
    if target:
        headers["x-amz-target"] = target
    names = sorted(headers)
    # S3 signs the path as sent; the other services each segment encoded again.
    path = parts.path or "/"
    uri = path if service == "s3" else quote(path, safe="/~")
    pairs = sorted((quote(unquote(k), safe="-_.~"), quote(unquote(v), safe="-_.~"))
                   for k, _, v in (p.partition("=") for p in parts.query.split("&") if p))
    canonical = "\n".join([method, uri, "&".join(f"{k}={v}" for k, v in pairs),
                           "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names),
                           ";".join(names), headers["x-amz-content-sha256"]])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["authorization"] = (f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
                                f"SignedHeaders={';'.join(names)}, Signature={signature}")
    del headers["host"]  # curl sends it from the URL
    return headers


def main(argv: list[str]) -> int:
    service, region, method, url, body_file = argv[1:6]
    body = b"" if body_file == "-" else open(body_file, "rb").read()
    role = json.loads(os.environ["BOOT_CREDENTIALS"])
    # (timezone.utc, not 3.11's UTC: the host's Python may be older, 3.10 on Ubuntu 22.04)
    now = datetime.datetime.now(datetime.timezone.utc)  # noqa: UP017
    headers = sign(service, region, method, url, body, role["AccessKeyId"],
                   role["SecretAccessKey"], role.get("Token", ""), now,
                   argv[6] if len(argv) > 6 else "")
    for name, value in headers.items():
        value = value.replace("\\", "\\\\").replace('"', '\\"')
        print(f'header = "{name}: {value}"')
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
