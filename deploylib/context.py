"""What a step sees: the environment's config, the run's state, the clients, and the
stage it is running as. Built by deploylib.runs (the only place clients are built);
the steps, the engine and a team's own steps take it as their one argument.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from deploylib import aws, live, parallel

# By name: in Context's body `aws` and `ssh` are its fields.
from deploylib.aws.ec2 import Instance
from deploylib.config import Environment
from deploylib.errors import HostError, RemoteCommandError, StateError, StepFailed
from deploylib.facts import Builder, Facts, HostRef, Release
from deploylib.plan import BATCH, BUILDER, CANDIDATES, Stage
from deploylib.state import RunState, StageKey

if TYPE_CHECKING:
    import jenkins as jenkins_sdk

    from deploylib import ssh
    from deploylib.lock import Lease
    from deploylib.provider import Provider
    from deploylib.ssh import Connection

T = TypeVar("T")


class Reporter(Protocol):
    """What the operator sees (deploylib.console): the log, and each stage's status."""

    def log(self, text: str) -> None: ...

    def stage(self, key: StageKey, status: str) -> None: ...

    def batch(self, group: str, done: int, total: int) -> None: ...


def _plain() -> Reporter:
    from deploylib import console

    return console.Plain()


@dataclass
class Context:
    env: Environment
    state: RunState
    provider: Provider
    aws: aws.AwsClients
    ssh: ssh.Pool
    jenkins: jenkins_sdk.Jenkins | None = None
    reporter: Reporter = field(default_factory=_plain)
    # The stage being run, and for a rollout's stage its batch; inside a `regions` group
    # the one region its stages work in (None: every region).
    stage: Stage | None = None
    batch: list[HostRef] | None = None
    region: str | None = None
    # A release to install instead of the run's own (a stopped rollout's switch-back).
    installing: Release | None = None
    # The run's hold on the deploy lock (deploylib.lock), renewed by every stage.
    lease: Lease | None = None
    # Set when the run is stopping (another region failed): a long step may look at it.
    stopping: threading.Event = field(default_factory=threading.Event)
    # Shared by the contexts of one run's regions (dataclasses.replace keeps them): host
    # keys trusted so far, per instance (once trusted, a key is what the host must
    # present for the rest of the run, whatever the source says later), and target
    # groups resolved so far, per region (looked up once per process, never stored).
    _trusted: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    _groups: dict[str, str] = field(default_factory=dict)
    _delays: dict[str, float] = field(default_factory=dict)

    def log(self, text: str) -> None:
        self.reporter.log(text)

    @property
    def facts(self) -> Facts:
        return self.state.facts

    @property
    def option(self) -> dict[str, Any]:
        return self.stage.option if self.stage else {}

    @property
    def release(self) -> Release:
        """The release the install and health steps work with."""
        rel = self.installing or self.facts.release
        if rel is None:
            raise StateError("the run has no release yet", resource=self.state.run_id,
                             fix="run the publish-release (or locate-previous) stage first")
        return rel

    def timeout(self, what: str, default: float) -> float:
        return self.env.timeout(what, default)

    def regions(self, among: list[str] | None = None) -> list[str]:
        """The regions a stage works in: its own inside the `regions` group, else all
        (or all of `among`)."""
        every = self.env.all_regions if among is None else among
        return [r for r in every if self.region in (None, r)]

    def in_region(self, region: str) -> Context:
        """A context for one region's stages, run on its own thread: the run's state,
        clients, connections and caches are shared; the stage being run is not."""
        return replace(self, region=region, stage=None, batch=None)

    def save(self) -> None:
        self.state.save()

    def mark(self, key: StageKey, status: str, **extra: Any) -> None:
        """A stage's new status, in the run state and in what the operator sees."""
        self.state.mark(key, status, **extra)
        self.reporter.stage(key, status)

    def builder(self) -> Builder | None:
        """The run's builder: a stage in a region's lane (a per-region bake) has that
        region's own; the bake before the regions (a copied one) has the one."""
        if self.region is not None:
            return self.facts.builders.get(self.region)
        return self.facts.builder

    def tags(self, role: str) -> list[dict[str, str]]:
        s = self.state
        return aws.tags(s.run_id, s.env, s.version, s.mode, role)

    # -- what is live -----------------------------------------------------------------------

    def record(self) -> dict[str, Any] | None:
        return live.record(self.aws, self.env)

    def target_group(self, region: str) -> str:
        if region not in self._groups:
            self._groups[region] = live.target_group(self.aws, self.env, region)
        return self._groups[region]

    def deregistration_delay(self, region: str) -> float:
        """The region's target group deregistration delay, read once per run."""
        if region not in self._delays:
            self._delays[region] = aws.elb.deregistration_delay(
                self.aws.elbv2(region), region, self.target_group(region))
        return self._delays[region]

    def live_hosts(self, region: str) -> list[str]:
        return live.hosts(self.aws, self.env, region, self.target_group(region))

    # -- the hosts a stage works on -----------------------------------------------------

    def target_refs(self) -> list[HostRef]:
        kind = self.stage.targets if self.stage else None
        if kind == BUILDER:
            b = self.builder()
            if not b:
                raise StateError("the run has no builder yet", resource=self.state.run_id,
                                 fix="run the launch-builder stage first")
            return [HostRef(region=b.region, instance_id=b.instance_id)]
        if kind == CANDIDATES:
            cands = self.facts.candidates
            if not cands or (self.region and self.region not in cands):
                where = f" in {self.region}" if self.region else ""
                raise StateError(f"the run has no candidates{where} yet",
                                 resource=self.state.run_id,
                                 fix="run the launch-candidates stage first")
            return [HostRef(region=r, instance_id=i) for r in self.regions(sorted(cands))
                    for i in cands[r]]
        if kind == BATCH:
            if self.batch is None:
                raise StateError("a per-batch stage ran outside a rollout",
                                 resource=self.state.run_id,
                                 fix="run the rollout stage (`invoke step rollout`)")
            return list(self.batch)
        return []

    def targets(self, refs: list[HostRef] | None = None) -> list[Instance]:
        """The stage's hosts (or the given ones) as fresh EC2 descriptions: addresses can
        change when an instance starts again."""
        out: list[Instance] = []
        for region, ids in by_region(self.target_refs() if refs is None else refs).items():
            found = {i.instance_id: i for i in aws.ec2.describe(
                self.aws.ec2(region), region, ids, public=self.env.address == "public")}
            out.extend(found[i] for i in ids if i in found)
        return out

    def connection(self, instance: Instance) -> Connection:
        """The run's one SSH connection to an instance, with its trusted host keys."""
        from deploylib import ssh

        keys = self._trusted.get(instance.instance_id)
        if not keys:
            keys = self.provider.trusted_keys(self.aws, instance)
            if keys:
                self._trusted[instance.instance_id] = keys
        endpoint = ssh.Endpoint(name=instance.instance_id, address=instance.address or "",
                                port=self.env.ssh_port, trusted_keys=keys)
        return self.ssh.get(endpoint)

    # -- running scripts on hosts -------------------------------------------------------------

    @property
    def transport(self) -> str:
        """How this stage's scripts reach its hosts: the environment's transport, except
        on a builder (always SSH: it is made from the base image, before any agent
        registers, and provisioned from there)."""
        if self.stage is not None and self.stage.targets == BUILDER:
            return "ssh"
        return self.env.transport

    def command_prefix(self) -> str:
        """Where Run Command writes this run's output in the artifact bucket."""
        return f"runcommand/{self.env.name}/{self.state.run_id}"

    def run_as_root(self, script: str | Callable[[Instance], str], *, timeout: float,
                    instances: list[Instance] | None = None, renew: bool = True,
                    fixes: dict[int, str] | None = None) -> parallel.Results[str]:
        """Run a rendered script as root on the stage's hosts (or the given ones), every
        one at once; per host its output, or the error (RemoteCommandError: it ran and
        exited non-zero, with the status and output; HostError: it could not run).

        Over SSH, on each host's connection. Over Run Command, one command per region and
        script for the whole batch: hosts given the same script (as a batch is) share it.
        `script`: the text, or a function giving each host's; `fixes`: what the script's
        own exit codes tell the operator to do, put on the errors they end in."""
        results = self._run_as_root(script, timeout, instances, renew)
        for exc in results.failed.values():
            if isinstance(exc, RemoteCommandError) and exc.exit_status in (fixes or {}):
                exc.fix = (fixes or {})[exc.exit_status]
                exc.args = (exc.line(),)
        return results

    def _run_as_root(self, script: str | Callable[[Instance], str], timeout: float,
                     instances: list[Instance] | None, renew: bool) -> parallel.Results[str]:
        hosts = self.targets() if instances is None else instances
        if renew and self.lease is not None:
            self.lease.renew()  # what runs on hosts is the run's too: only under its lock
        script_for = script if callable(script) else (lambda _inst: script)
        if self.transport == "ssh":
            return parallel.each(
                hosts, lambda i: self.connection(i).run_as_root(script_for(i),
                                                                timeout=timeout).output,
                key=lambda i: i.instance_id)
        groups: dict[tuple[str, str], list[str]] = {}
        for inst in hosts:
            groups.setdefault((inst.region, script_for(inst)), []).append(inst.instance_id)
        budget = self.env.max_failed_hosts - len(self.facts.failed_hosts)
        stage = self.stage.name if self.stage else "command"

        def one(group: tuple[tuple[str, str], list[str]]) -> dict[str, Any]:
            (region, text), ids = group
            return aws.runcommand.run(
                self.aws.ssm(region), self.aws.s3(), region, ids, text,
                bucket=self.env.artifact_bucket, prefix=self.command_prefix(),
                max_errors=budget, timeout=timeout,
                delivery_timeout=self.timeout("delivery", 120),
                comment=f"{self.env.name} {self.state.run_id} {stage}")

        commands = list(groups.items())
        sent = parallel.each(range(len(commands)), lambda n: one(commands[n]), key=str)
        out: parallel.Results[str] = parallel.Results()
        for n, (_, ids) in enumerate(commands):
            result = sent[str(n)]  # each host's, or what stopped the whole command
            for iid in ids:
                out[iid] = result[iid] if isinstance(result, dict) else result
        return out

    def reach(self, stage: str, instances: list[Instance], *, fix: str) -> None:
        """Every host can be given scripts now: its SSH connection opens (with a trusted
        key), or its SSM agent is online. Raises StepFailed naming every one that is not."""
        if self.transport == "ssh":
            self.on_hosts(stage, lambda i: self.connection(i).open(), instances, fix=fix)
            return
        failures: dict[str, Exception] = {
            iid: HostError(f"Run Command cannot reach it: {why}", resource=iid,
                           fix="start the host's SSM agent and check its instance role; "
                           "`invoke preflight` names what is missing")
            for iid, why in self.unreachable(instances).items()}
        if failures:
            raise StepFailed(stage, failures, fix=fix)

    def unreachable(self, instances: list[Instance]) -> dict[str, str]:
        """The instances Run Command cannot reach now (their SSM agent is not online),
        each with why."""
        out: dict[str, str] = {}
        for region, ids in by_region([HostRef(region=i.region, instance_id=i.instance_id)
                                      for i in instances]).items():
            out.update(aws.runcommand.unreachable(self.aws.ssm(region), region, ids))
        return out

    def serving(self, instance: Instance) -> str | None:
        """The release a host serves, proven as the environment's health_check says."""
        from deploylib import health

        return health.serving(self.env, instance.address or "", self._on_host(instance))

    def wait_serving(self, instance: Instance, version: str) -> None:
        from deploylib import health

        health.wait_serving(self.env, instance.address or "", version,
                            timeout=self.timeout("health", 60),
                            resource=f"{instance.instance_id} ({instance.address})",
                            on_host=self._on_host(instance))

    def _on_host(self, instance: Instance) -> Callable[[], str | None]:
        from deploylib import render

        script = render.serving_script(app_root=self.env.app_root, service=self.env.service)

        def ask() -> str | None:
            said = self.run_as_root(script, timeout=30, instances=[instance], renew=False)
            # A host that cannot be asked serves nothing we can vouch for.
            answer = said[instance.instance_id]
            return None if isinstance(answer, Exception) else (answer.strip() or None)

        return ask

    # -- fanning out ----------------------------------------------------------------------

    def on_hosts(self, stage: str, fn: Callable[[Instance], T],
                 instances: list[Instance] | None = None, *,
                 fix: str | None = None) -> parallel.Results[T]:
        """Run fn on the stage's hosts (or the given ones) at once; raise StepFailed
        naming every host that failed."""
        if self.lease is not None:
            self.lease.renew()  # what runs on hosts is the run's too: only under its lock
        results = parallel.each(self.targets() if instances is None else instances, fn,
                                key=lambda i: i.instance_id)
        results.raise_for(stage, fix=fix)
        return results

    def per_region(self, stage: str, regions: list[str], fn: Callable[[str], T],
                   into: dict[str, Any], say: Callable[[str, T], str]) -> None:
        """Run fn for every region at once; keep each success in `into` (run state) even
        when another region failed, so a resume redoes only the failed regions."""
        results = parallel.each(regions, fn, key=lambda r: r)
        for region, res in results.succeeded.items():
            into[region] = res
            self.log(f"  {say(region, res)}")
        self.save()
        results.raise_for(stage, kind="region")


def by_region(refs: list[HostRef]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ref in refs:
        out.setdefault(ref.region, []).append(ref.instance_id)
    return out
