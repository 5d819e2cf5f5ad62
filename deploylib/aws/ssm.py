"""SSM Parameter Store: the record of what is live in an environment (one JSON value)."""

from __future__ import annotations

import json
from typing import Any

from deploylib.aws import calling
from deploylib.errors import CloudError


def read_record(ssm: Any, name: str) -> dict[str, Any] | None:
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


def write_record(ssm: Any, name: str, record: dict[str, Any]) -> None:
    with calling(f"parameter {name}", "check the tool may write it (ssm:PutParameter)"):
        ssm.put_parameter(Name=name, Value=json.dumps(record, sort_keys=True), Type="String",
                          Overwrite=True)
