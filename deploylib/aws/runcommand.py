"""Systems Manager Run Command: a rendered script run as root on many instances by their
SSM agent, with no inbound port and no SSH.

One `SendCommand` of `AWS-RunShellScript` per batch and script (at most 50 instance ids
a call, AWS's limit), `MaxConcurrency` the batch, `MaxErrors` what is left of the
failure budget, the output to the environment's bucket. The command's `TimeoutSeconds`
is its delivery timeout (a host whose agent has not taken it by then is
`DeliveryTimedOut`); the document's `executionTimeout` the stage's own. Results are read
per invocation: ListCommandInvocations for the statuses while the command runs, then
GetCommandInvocation for each host's output, which the API cuts at 24,000 characters;
past that the whole output is read from S3, where the agent writes it.

AWS's statuses (`Status` of an invocation, "Understanding command statuses", Systems
Manager user guide): Pending, InProgress, Delayed, then one of Success, Failed,
TimedOut, DeliveryTimedOut, Cancelled, Undeliverable, Terminated.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from deploylib import waits
from deploylib.aws import calling
from deploylib.errors import HostError, RemoteCommandError, WaitTimeout

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_ssm import SSMClient

DOCUMENT = "AWS-RunShellScript"
PLUGIN = "aws:runShellScript"
MAX_TARGETS = 50  # instance ids in one SendCommand, and values in one filter
API_OUTPUT = 24_000  # characters of stdout (and of stderr) GetCommandInvocation returns
MIN_DELIVERY = 30  # SendCommand's TimeoutSeconds: 30 s at least
_END = "DEPLOY_SCRIPT_END"
FINAL = frozenset({"Success", "Failed", "TimedOut", "DeliveryTimedOut", "Cancelled",
                   "Undeliverable", "Terminated"})
# What the operator does about a host whose command did not run, by its status.
_NOT_RUN_FIXES = {
    "DeliveryTimedOut": "the host's SSM agent did not take the command: check the agent runs "
                        "(systemctl status amazon-ssm-agent) and can reach Systems Manager",
    "Undeliverable": "the instance is not managed by Systems Manager (agent, instance role, "
                     "network path): `invoke preflight` names what is missing",
    "Terminated": "the instance went away while the command ran",
    "Cancelled": "the command was cancelled (its failure budget was spent, or by hand)",
    "TimedOut": "the script did not finish in time: raise the stage's timeout if the work is "
                "legitimately slow",
}


@dataclass(frozen=True)
class Invocation:
    """One host's run of a command, as Systems Manager reports it."""

    instance_id: str
    status: str
    details: str = ""
    code: int = -1
    stdout: str = ""
    stderr: str = ""


def output_key(prefix: str, command_id: str, instance_id: str, stream: str) -> str:
    """Where the agent writes an invocation's whole output in the bucket (AWS's layout)."""
    return (f"{prefix.rstrip('/')}/{command_id}/{instance_id}/awsrunShellScript/"
            f"0.awsrunShellScript/{stream}")


def commands(script: str) -> list[str]:
    """The document's `commands` for a rendered script: the script in base64, decoded
    into bash, so the agent's `sh` runs exactly what SSH would have sent on stdin. Not the
    script itself in a here-document: dash (Ubuntu's `sh`) drops bytes of a line that
    begins like the delimiter and holds non-ASCII text; base64 is ASCII, and no line of
    it can be the delimiter (`_` is not in its alphabet)."""
    encoded = base64.encodebytes(script.encode()).decode().rstrip("\n")
    return [f"base64 -d <<'{_END}' | bash -s", *encoded.split("\n"), _END]


def managed(ssm: SSMClient, region: str, instance_ids: Iterable[str]) -> dict[str, str]:
    """Each instance's PingStatus with Systems Manager (Online, ConnectionLost, Inactive);
    an instance missing from the answer is not managed at all."""
    ids = list(instance_ids)
    out: dict[str, str] = {}
    for i in range(0, len(ids), MAX_TARGETS):
        with calling(f"managed instances in {region}",
                     "grant ssm:DescribeInstanceInformation (`invoke policy`)"):
            pages = ssm.get_paginator("describe_instance_information").paginate(
                Filters=[{"Key": "InstanceIds", "Values": ids[i:i + MAX_TARGETS]}])
            for page in pages:
                for info in page.get("InstanceInformationList", []):
                    out[info["InstanceId"]] = info.get("PingStatus", "")
    return out


def unreachable(ssm: SSMClient, region: str, instance_ids: list[str]) -> dict[str, str]:
    """The instances whose agent is not Online, each with why (its PingStatus, or not
    managed at all)."""
    pings = managed(ssm, region, instance_ids)
    return {i: pings.get(i, "not managed") for i in instance_ids if pings.get(i) != "Online"}


def send(ssm: SSMClient, region: str, instance_ids: list[str], script: str, *, bucket: str,
         prefix: str, max_errors: int, execution_timeout: float, delivery_timeout: float,
         comment: str) -> list[str]:
    """Send the script to the instances (every one at once: the batch is the concurrency);
    returns the command ids, one per 50 instances."""
    out = []
    for i in range(0, len(instance_ids), MAX_TARGETS):
        chunk = instance_ids[i:i + MAX_TARGETS]
        with calling(f"Run Command on {len(chunk)} instance(s) in {region}",
                     "grant ssm:SendCommand on AWS-RunShellScript and the environment's "
                     "instances (`invoke policy`)"):
            answer = ssm.send_command(
                InstanceIds=chunk, DocumentName=DOCUMENT, Comment=comment[:100],
                Parameters={"commands": commands(script),
                            "executionTimeout": [str(max(1, int(execution_timeout)))]},
                TimeoutSeconds=max(MIN_DELIVERY, int(delivery_timeout)),
                MaxConcurrency=str(len(chunk)), MaxErrors=str(max(0, max_errors)),
                OutputS3BucketName=bucket, OutputS3KeyPrefix=prefix)
        out.append(answer["Command"]["CommandId"])
    return out


def statuses(ssm: SSMClient, region: str, command_id: str) -> dict[str, str]:
    """Each instance's status for a command (ListCommandInvocations, paged)."""
    out: dict[str, str] = {}
    with calling(f"command {command_id} in {region}",
                 "grant ssm:ListCommandInvocations (`invoke policy`)"):
        for page in ssm.get_paginator("list_command_invocations").paginate(
                CommandId=command_id):
            for inv in page.get("CommandInvocations", []):
                out[inv["InstanceId"]] = inv["Status"]
    return out


def invocation(ssm: SSMClient, s3: S3Client, region: str, command_id: str, instance_id: str,
               *, bucket: str, prefix: str) -> Invocation:
    """One host's result: its status, exit code and output (whole: read from S3 when the
    API's 24,000 characters were not all of it)."""
    with calling(f"command {command_id} on {instance_id}",
                 "grant ssm:GetCommandInvocation (`invoke policy`)"):
        found = ssm.get_command_invocation(CommandId=command_id, InstanceId=instance_id)
    streams = {"stdout": found.get("StandardOutputContent", ""),
               "stderr": found.get("StandardErrorContent", "")}
    for stream, text in streams.items():
        if len(text) >= API_OUTPUT:
            key = output_key(prefix, command_id, instance_id, stream)
            with calling(f"s3://{bucket}/{key}", "grant s3:GetObject on the environment's "
                         "command output (`invoke policy`)"):
                streams[stream] = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode(
                    errors="replace")
    return Invocation(instance_id=instance_id, status=found["Status"],
                      details=found.get("StatusDetails", ""),
                      code=int(found.get("ResponseCode", -1)), stdout=streams["stdout"],
                      stderr=streams["stderr"])


def run(ssm: SSMClient, s3: S3Client, region: str, instance_ids: list[str], script: str, *,
        bucket: str, prefix: str, max_errors: int, timeout: float, delivery_timeout: float,
        comment: str, poll: float = 1.0) -> dict[str, str | Exception]:
    """Run a script on the instances and wait for every one: per instance its output
    (stdout, then stderr) when it exited 0, else the error saying why (RemoteCommandError
    with the exit status and output when the script ran, HostError when it did not)."""
    sent = send(ssm, region, instance_ids, script, bucket=bucket, prefix=prefix,
                max_errors=max_errors, execution_timeout=timeout,
                delivery_timeout=delivery_timeout, comment=comment)
    pending = {cid: set(instance_ids[i * MAX_TARGETS:(i + 1) * MAX_TARGETS])
               for i, cid in enumerate(sent)}
    out: dict[str, str | Exception] = {}

    def settled() -> bool:
        for cid, ids in pending.items():
            now = statuses(ssm, region, cid)
            for iid in [i for i in ids if now.get(i) in FINAL]:
                ids.discard(iid)
                out[iid] = _result(invocation(ssm, s3, region, cid, iid, bucket=bucket,
                                              prefix=prefix))
        return not any(pending.values())

    # The command's own clocks end it: delivery, then execution. A margin past both for
    # the service to say so.
    ceiling = max(MIN_DELIVERY, delivery_timeout) + timeout + 60
    began = time.monotonic()
    try:
        waits.until(settled, timeout=ceiling, what="Run Command to finish",
                    resource=f"{region} {' '.join(instance_ids[:3])}"
                    + (" …" if len(instance_ids) > 3 else ""),
                    fix="check the hosts' SSM agents; the command may still be running",
                    first=min(poll, 0.2), longest=poll)
    except WaitTimeout:
        for ids in pending.values():
            for iid in ids:
                out[iid] = HostError(f"Run Command did not finish within "
                                     f"{time.monotonic() - began:.0f}s", resource=iid,
                                     fix=_NOT_RUN_FIXES["TimedOut"])
    return out


def _result(inv: Invocation) -> str | Exception:
    output = inv.stdout + (("\n" + inv.stderr) if inv.stderr else "")
    if inv.status == "Success":
        return output
    if inv.status == "Failed" and inv.code >= 0:
        lines = [ln for ln in output.strip().splitlines() if ln.strip()]
        return RemoteCommandError(
            f"remote command exited {inv.code}: {lines[-1][:300] if lines else '(no output)'}",
            resource=inv.instance_id, exit_status=inv.code, output=output)
    if inv.status == "TimedOut":
        return RemoteCommandError("remote command did not finish within its execution "
                                  "timeout", resource=inv.instance_id,
                                  fix=_NOT_RUN_FIXES["TimedOut"], exit_status=-1, output=output)
    return HostError(f"Run Command {inv.status}" + (f" ({inv.details})" if inv.details and
                                                    inv.details != inv.status else ""),
                     resource=inv.instance_id,
                     fix=_NOT_RUN_FIXES.get(inv.status, "check the host's SSM agent"))

