"""SSM Parameter Store: the record of what is live in an environment (one JSON value), and
the SSH host keys first trusted for each instance (one parameter each)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from deploylib.aws import calling
from deploylib.errors import CloudError

if TYPE_CHECKING:  # boto3's clients by their stubs (a test dependency)
    from mypy_boto3_ssm import SSMClient


def read_record(ssm: SSMClient, name: str) -> dict[str, Any] | None:
    try:
        with calling(f"parameter {name}", "check the tool may read it (ssm:GetParameter)"):
            value = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except CloudError as exc:
        if exc.code == "ParameterNotFound":
            return None
        raise
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        raise CloudError("the live record is not JSON", resource=f"parameter {name}",
                         fix="restore it from its parameter history") from None


def write_record(ssm: SSMClient, name: str, record: dict[str, Any]) -> None:
    with calling(f"parameter {name}", "check the tool may write it (ssm:PutParameter)"):
        ssm.put_parameter(Name=name, Value=json.dumps(record, sort_keys=True), Type="String",
                          Overwrite=True)


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
