"""The lab's Run Command: what moto records but never runs.

moto's SendCommand stores a command whose every invocation is `Success` at once with no
output, and it has no ListCommandInvocations or DescribeInstanceInformation. The lab
supplies Run Command as Systems Manager documents it ("Understanding command statuses",
"Using concurrency and error controls", "SendCommand"):
- every lab host runs an SSM agent (a thread of the lab daemon, started when the host
  boots, gone when it stops) that registers in its region, pings while it runs, and
  polls for the invocations addressed to it;
- a command's invocations start `Pending`. They are handed to agents at most
  `MaxConcurrency` at a time (a number or a percentage of the targets); once more than
  `MaxErrors` have failed the ones not yet handed out are `Cancelled`. One not taken by
  an agent within the command's `TimeoutSeconds` (its delivery timeout) is
  `DeliveryTimedOut`;
- an agent runs `AWS-RunShellScript`'s commands as root inside the host (its root as
  `DEPLOY_HOST_ROOT`, as an SSH session sees it; a root filesystem host in its chroot),
  through `sh` as the real agent does, `InProgress` meanwhile, and kills a run past the
  document's `executionTimeout` (`TimedOut`). It reports `Success` or `Failed` with the
  exit code; the API gives the first 24,000 characters of stdout and of stderr, and the
  whole of each is written to the command's S3 bucket at AWS's key, signed with the
  instance role's key (held to its policy, deploylib.lab.iam);
- DescribeInstanceInformation lists the registered hosts: `Online` while their agent
  pings, `ConnectionLost` once it has stopped.
An agent is stopped (a test's fault) by a file `agent.stopped` in the host's lab
directory: it takes nothing and stops pinging until the file is gone.
Not emulated: targets by tag, notifications, CancelCommand, plugins other than
runShellScript, the agent's own ec2messages/ssmmessages calls.
"""

from __future__ import annotations

import datetime
import math
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploylib.aws.runcommand import API_OUTPUT, FINAL, output_key
from deploylib.lab import BIN, rootfs

# How long an idle agent waits for work before it looks (and pings) again: handed an
# invocation it is woken at once, as the real agent's long poll returns.
POLL = 1.0
STOPPED = "agent.stopped"


@dataclass
class Invocation:
    """One host's share of a command, as the lab tracks it."""

    command: Command
    instance_id: str
    answer: dict[str, Any]  # moto's invocation record, what the API returns
    released: float | None = None  # handed to the agents (concurrency allowing)
    taken: bool = False

    @property
    def final(self) -> bool:
        return self.answer["Status"] in FINAL


@dataclass
class Command:
    region: str
    moto: Any
    requested: float
    invocations: list[Invocation] = field(default_factory=list)

    def limit(self, value: str, default: int) -> int:
        """MaxConcurrency / MaxErrors: a number, or a percentage of the targets."""
        value = (value or "").strip()
        if value.endswith("%"):
            return max(1, math.floor(len(self.invocations) * float(value[:-1]) / 100))
        return int(value) if value.isdigit() else default


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


class RunCommand:
    """The lab's Systems Manager side of Run Command and every host's agent."""

    def __init__(self, farm_hosts: Path, put_output: Callable[[str, str, str, bytes], None]):
        self.hosts = farm_hosts  # where each host's lab directory is (agent.stopped)
        self.put_output = put_output  # (region, bucket, key, data)
        self.lock = threading.Lock()
        self.commands: list[Command] = []
        self.active: list[Command] = []  # not finished yet
        self.ready: dict[str, list[Invocation]] = {}  # handed out, by instance
        self.pings: dict[str, tuple[str, float]] = {}  # instance -> (region, last ping)
        self.agents: dict[str, threading.Event] = {}
        self.wake: dict[str, threading.Event] = {}  # per agent: work was handed to it
        self.stop = threading.Event()
        threading.Thread(target=self._tick, daemon=True, name="runcommand").start()

    # -- the service -----------------------------------------------------------------------

    def sent(self, region: str, moto_command: Any) -> None:
        """A SendCommand moto has stored: its invocations start Pending."""
        command = Command(region, moto_command, time.monotonic())
        for answer in moto_command.invocations:
            answer.update(Status="Pending", StatusDetails="Pending", ResponseCode=-1,
                          ExecutionStartDateTime="", ExecutionEndDateTime="",
                          ExecutionElapsedTime="", StandardOutputContent="",
                          StandardErrorContent="", StandardOutputUrl="",
                          StandardErrorUrl="")
            command.invocations.append(Invocation(command, answer["InstanceId"], answer))
        moto_command.status = moto_command.status_details = "Pending"
        with self.lock:
            self.commands.append(command)
            self.active.append(command)
            self._schedule()

    def _schedule(self) -> None:
        """Hand out, cancel and time out invocations (under the lock)."""
        now = time.monotonic()
        self.active = [c for c in self.active if not all(i.final for i in c.invocations)]
        for command in self.active:
            invs = command.invocations
            concurrency = command.limit(command.moto.max_concurrency, 50)
            errors = command.limit(command.moto.max_errors, 0)
            failed = sum(i.answer["Status"] not in ("Success", "Pending", "InProgress")
                         and i.final for i in invs)
            for inv in invs:
                if inv.final or inv.taken:
                    continue
                if now - command.requested > command.moto.timeout_seconds:
                    self._end(inv, "DeliveryTimedOut", "DeliveryTimedOut")
                elif failed > errors and inv.released is None:
                    self._end(inv, "Cancelled", "Cancelled")
            running = sum(1 for i in invs if i.released is not None and not i.final)
            for inv in invs:
                if running >= concurrency:
                    break
                if inv.released is None and not inv.final:
                    inv.released = now
                    running += 1
                    self.ready.setdefault(inv.instance_id, []).append(inv)
                    self.wake.setdefault(inv.instance_id, threading.Event()).set()
            self._command_status(command)

    def _command_status(self, command: Command) -> None:
        statuses = [i.answer["Status"] for i in command.invocations]
        moto = command.moto
        if not all(s in FINAL for s in statuses):
            status = "InProgress" if any(s != "Pending" for s in statuses) else "Pending"
        elif all(s == "Success" for s in statuses):
            status = "Success"
        else:
            status = "Failed"
        moto.status = moto.status_details = status
        moto.completed_count = sum(s in FINAL for s in statuses)
        moto.error_count = sum(s in ("Failed", "TimedOut") for s in statuses)

    def _end(self, inv: Invocation, status: str, details: str, code: int = -1) -> None:
        inv.answer.update(Status=status, StatusDetails=details, ResponseCode=code,
                          ExecutionEndDateTime=_now())

    def _tick(self) -> None:
        while not self.stop.wait(0.5):
            with self.lock:
                self._schedule()

    def invocations(self, region: str, command_id: str | None,
                    instance_id: str | None) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(i.answer, RequestedDateTime=c.moto.requested_date_time)
                    for c in self.commands if c.region == region and
                    (command_id is None or c.moto.command_id == command_id)
                    for i in c.invocations
                    if instance_id is None or i.instance_id == instance_id]

    def information(self, region: str, ids: list[str] | None) -> list[dict[str, Any]]:
        """DescribeInstanceInformation's list: the hosts whose agent registered here."""
        out = []
        with self.lock:
            pings = dict(self.pings)
        for iid, (where, last) in sorted(pings.items()):
            if where != region or (ids and iid not in ids):
                continue
            # Online while its agent runs (a busy one pings too), until it is stopped.
            online = iid in self.agents and not (self.hosts / iid / STOPPED).exists()
            out.append({"InstanceId": iid, "PingStatus": "Online" if online else
                        "ConnectionLost",
                        "LastPingDateTime": datetime.datetime.fromtimestamp(
                            last, datetime.UTC),
                        "AgentVersion": "3.3.0.0", "IsLatestVersion": True,
                        "PlatformType": "Linux", "PlatformName": "Ubuntu",
                        "PlatformVersion": "22.04", "ResourceType": "EC2Instance"})
        return out

    # -- the agents ------------------------------------------------------------------------

    def start_agent(self, instance_id: str, region: str, root: Path, chroot: bool) -> None:
        with self.lock:
            old = self.agents.pop(instance_id, None)
            if old is not None:
                old.set()
            gone = self.agents[instance_id] = threading.Event()
            self.wake.setdefault(instance_id, threading.Event())
        threading.Thread(target=self._agent, args=(instance_id, region, root, chroot, gone),
                         daemon=True, name=f"ssm-agent-{instance_id}").start()

    def stop_agent(self, instance_id: str) -> None:
        with self.lock:
            gone = self.agents.pop(instance_id, None)
            if gone is not None:
                gone.set()
            # Whatever it was running is cut off with the host.
            for command in self.active:
                for inv in command.invocations:
                    if inv.instance_id == instance_id and inv.taken and not inv.final:
                        self._end(inv, "Terminated", "Terminated")
            self.wake.get(instance_id, threading.Event()).set()

    def _agent(self, instance_id: str, region: str, root: Path, chroot: bool,
               gone: threading.Event) -> None:
        stopped = self.hosts / instance_id / STOPPED
        wake = self.wake[instance_id]
        while not gone.is_set() and not self.stop.is_set():
            if stopped.exists():
                gone.wait(POLL)
                continue
            with self.lock:
                self.pings[instance_id] = (region, time.time())
                wake.clear()
                queue = self.ready.get(instance_id, [])
                while queue and (queue[0].final or queue[0].taken):
                    queue.pop(0)
                job = queue.pop(0) if queue else None
                if job is not None:
                    job.taken = True
                    job.answer.update(Status="InProgress", StatusDetails="InProgress",
                                      ExecutionStartDateTime=_now())
                    self._command_status(job.command)
            if job is None:
                wake.wait(POLL)
                continue
            self._run(job, root, chroot, gone)

    def _run(self, job: Invocation, root: Path, chroot: bool, gone: threading.Event) -> None:
        moto = job.command.moto
        lines = list(moto.parameters.get("commands") or [])
        timeout = float((moto.parameters.get("executionTimeout") or ["3600"])[0])
        # Where the real agent keeps a command's script (its orchestration directory).
        inside = Path("/var/lib/amazon/ssm") / job.instance_id / "document/orchestration" / \
            moto.command_id / "awsrunShellScript/0.awsrunShellScript"
        place = root / str(inside).lstrip("/")
        place.mkdir(parents=True, exist_ok=True)
        (place / "_script.sh").write_text("\n".join(lines) + "\n")
        if chroot:
            argv = ["chroot", str(root), "sh", str(inside / "_script.sh")]
            env = {"DEPLOY_HOST_ROOT": "/", "PATH": rootfs.PATH, "HOME": "/root"}
        else:
            argv = ["sh", str(place / "_script.sh")]
            env = {"DEPLOY_HOST_ROOT": str(root), "HOME": "/root", "LANG": "C.UTF-8",
                   "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"}
        os.chmod(place / "_script.sh", 0o700)
        status, code = "Success", 0
        try:
            done = subprocess.run(argv, env=env, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL, start_new_session=True,
                                  cwd=str(place))
            out, err, code = done.stdout, done.stderr, done.returncode
            if code != 0:
                status = "Failed"
        except subprocess.TimeoutExpired as exc:
            out, err = exc.stdout or b"", exc.stderr or b""
            status, code = "TimedOut", -1
        if gone.is_set():
            return  # the host stopped meanwhile: Terminated already
        bucket = moto.output_s3_bucket_name
        urls = {}
        for stream, data in (("stdout", out), ("stderr", err)):
            if bucket and data:
                key = output_key(moto.output_s3_key_prefix, moto.command_id, job.instance_id,
                                 stream)
                try:
                    self.put_output(job.command.region, bucket, key, data)
                    urls[stream] = f"https://s3.{job.command.region}.amazonaws.com/{bucket}/{key}"
                except Exception as put_failed:  # noqa: BLE001 - the agent says so, as AWS's does
                    err += f"\nfailed to upload output to s3: {put_failed}".encode()
        with self.lock:
            job.answer.update(StandardOutputContent=out.decode(errors="replace")[:API_OUTPUT],
                              StandardErrorContent=err.decode(errors="replace")[:API_OUTPUT],
                              StandardOutputUrl=urls.get("stdout", ""),
                              StandardErrorUrl=urls.get("stderr", ""))
            self._end(job, status, status, code)
            self._schedule()


def install(service: RunCommand) -> None:
    """Wrap moto's SSM so Run Command's API answers as AWS's does (see the module)."""
    from moto.core.responses import ActionResult
    from moto.ssm.models import SimpleSystemManagerBackend
    from moto.ssm.responses import SimpleSystemManagerResponse

    send_command = SimpleSystemManagerBackend.send_command

    def lab_send_command(self: Any, **kw: Any) -> Any:
        asked = list(dict.fromkeys(kw.get("instance_ids") or []))
        # moto resolves empty Targets to every instance in the region, and extends the
        # caller's list in place: the command is for the instances asked, no others.
        command = send_command(self, **{**kw, "instance_ids": list(asked)})
        if not kw.get("targets"):
            by_id = {i["InstanceId"]: i for i in command.invocations}
            command.instance_ids = asked
            command.invocations = [by_id[i] for i in asked]
            command.target_count = len(asked)
        service.sent(self.region_name, command)
        return command

    def list_command_invocations(self: SimpleSystemManagerResponse) -> ActionResult:
        found = service.invocations(self.region, self._get_param("CommandId"),
                                    self._get_param("InstanceId"))
        start = int(self._get_param("NextToken") or 0)
        size = int(self._get_param("MaxResults") or 50)
        page = [{k: v for k, v in inv.items() if k in _INVOCATION_FIELDS}
                for inv in found[start:start + size]]
        answer: dict[str, Any] = {"CommandInvocations": page}
        if start + size < len(found):
            answer["NextToken"] = str(start + size)
        return ActionResult(answer)

    def describe_instance_information(self: SimpleSystemManagerResponse) -> ActionResult:
        ids: list[str] = []
        for f in self._get_param("Filters") or []:
            if f.get("Key") == "InstanceIds":
                ids += f.get("Values", [])
        for f in self._get_param("InstanceInformationFilterList") or []:
            if f.get("key") == "InstanceIds":
                ids += f.get("valueSet", [])
        found = service.information(self.region, ids or None)
        start = int(self._get_param("NextToken") or 0)
        size = int(self._get_param("MaxResults") or 50)
        answer: dict[str, Any] = {"InstanceInformationList": found[start:start + size]}
        if start + size < len(found):
            answer["NextToken"] = str(start + size)
        return ActionResult(answer)

    SimpleSystemManagerBackend.send_command = lab_send_command
    SimpleSystemManagerResponse.list_command_invocations = list_command_invocations
    SimpleSystemManagerResponse.describe_instance_information = describe_instance_information


# What ListCommandInvocations gives of an invocation (no output: that is
# GetCommandInvocation's, or the plugins' with Details, which the tool does not ask for).
_INVOCATION_FIELDS = ("CommandId", "InstanceId", "Comment", "DocumentName", "Status",
                      "StatusDetails", "RequestedDateTime", "StandardOutputUrl",
                      "StandardErrorUrl")
