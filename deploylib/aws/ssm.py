"""SSM Parameter Store: the record of what is live in an environment (one JSON value, packed
when long), and the SSH host keys first trusted for each instance (one parameter each)."""

from __future__ import annotations

import base64
import json
import zlib
from typing import TYPE_CHECKING, Any

from deploylib.aws import calling
from deploylib.errors import CloudError, InputError

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_ssm import SSMClient


# A standard parameter's value is at most 4 KB ("Managing parameter tiers", Systems
# Manager user guide; advanced: 8 KB, charged). The record grows ~500 characters a
# region (images, groups, the previous release's, the drift ledger): as JSON it passes
# the limit at about 7 regions. Past it, it is written packed — PACKED, then the JSON
# deflated (zlib) in base64 — about 8 times smaller: 20 regions fit, and the parameter
# stays a standard one, free and never silently moved to the advanced tier (whose 8 KB
# would not hold 20 regions as JSON either). Records that fit as JSON stay readable as is.
STANDARD_LIMIT = 4096
PACKED = "zlib+b64:"
# What a packed record may inflate to: a record is a few KB; a value that inflates past
# this is not one.
_INFLATED_LIMIT = 1 << 20


def pack(record: dict[str, Any], name: str = "the record") -> str:
    """The record as the parameter's value: JSON, or packed when JSON is too long; one
    line naming both sizes and the limit when even packed it is."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"))
    if len(text.encode()) <= STANDARD_LIMIT:
        return text
    packed = PACKED + base64.b64encode(zlib.compress(text.encode(), 9)).decode()
    if len(packed) > STANDARD_LIMIT:
        raise InputError(f"the live record would be {len(packed):,} characters packed "
                         f"({len(text):,} as JSON), over SSM's {STANDARD_LIMIT:,} for a "
                         "standard parameter", resource=f"parameter {name}",
                         fix="split the environment's regions into two environments")
    return packed


def unpack(value: str, name: str = "the record") -> dict[str, Any]:
    bad = CloudError("the live record is not the tool's JSON", resource=f"parameter {name}",
                     fix="restore it from its parameter history")
    try:
        if value.startswith(PACKED):
            inflate = zlib.decompressobj()
            text = inflate.decompress(base64.b64decode(value[len(PACKED):], validate=True),
                                      _INFLATED_LIMIT)
            if inflate.unconsumed_tail:
                raise bad
            value = text.decode()
        found = json.loads(value)
    except (ValueError, zlib.error):
        raise bad from None
    if not isinstance(found, dict):
        raise bad
    return found


def read_record(ssm: SSMClient, name: str) -> dict[str, Any] | None:
    try:
        with calling(f"parameter {name}", "check the tool may read it (ssm:GetParameter)"):
            value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except CloudError as exc:
        if exc.code == "ParameterNotFound":
            return None
        raise
    return unpack(value, name)


def write_record(ssm: SSMClient, name: str, record: dict[str, Any]) -> None:
    value = pack(record, name)
    with calling(f"parameter {name}", "check the tool may write it (ssm:PutParameter)"):
        ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)


def read_value(ssm: SSMClient, name: str) -> str | None:
    try:
        with calling(f"parameter {name}", "check the tool may read it (ssm:GetParameter)"):
            return str(ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except CloudError as exc:
        if exc.code == "ParameterNotFound":
            return None
        raise


def create_value(ssm: SSMClient, name: str, value: str) -> bool:
    """Write a parameter that must not exist yet; False when one already does."""
    try:
        with calling(f"parameter {name}", "check the tool may write it (ssm:PutParameter)"):
            ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=False)
    except CloudError as exc:
        if exc.code == "ParameterAlreadyExists":
            return False
        raise
    return True


def names_under(ssm: SSMClient, path: str) -> list[str]:
    with calling(f"parameters under {path}", "check ssm:GetParametersByPath"):
        pages = ssm.get_paginator("get_parameters_by_path").paginate(Path=path,
                                                                     Recursive=True)
        return [p["Name"] for page in pages for p in page.get("Parameters", [])]


def delete(ssm: SSMClient, names: list[str]) -> None:
    for start in range(0, len(names), 10):  # DeleteParameters takes 10 at a time
        chunk = names[start:start + 10]
        with calling(f"parameters {', '.join(chunk)}", "check ssm:DeleteParameters"):
            ssm.delete_parameters(Names=chunk)
