"""Execute a plan's stages: build the clients, load and save run state, time and report.

This is the only place clients are built. A stage is looked up in the catalog by its
step name and called with a Context; its hooks run around it; its status, timing and
error go to the run state after every stage, so any stage can run in its own process
(`invoke step`) and a failed run can be resumed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as all_done
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deploylib import catalog, config, release
from deploylib import plan as planning
from deploylib.errors import DeployError, InputError, StateError, StepFailed, error_line
from deploylib.state import DONE, FAILED, PENDING, RUNNING, RunState


@dataclass
class Context:
    """What a step sees: config, run state, clients, and the stage it is running as."""

    env: config.Environment
    state: RunState
    provider: Any
    aws: Any
    ssh: Any
    jenkins: Any = None
    stage: planning.Stage | None = None
    batch: list[dict[str, str]] | None = None
    # The one region a stage of the `regions` group works in (None: every region).
    region: str | None = None
    reporter: Any = None  # deploylib.console: what the operator sees
    # A release to install instead of the run's own (a failed rollout's rollback).
    installing: dict[str, Any] | None = None
    # Host keys trusted so far this run, per instance: once trusted, a key is what the
    # host must present for the rest of the run, whatever the source says later.
    _trusted: dict[str, tuple] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.reporter is None:
            from deploylib import console

            self.reporter = console.Plain()

    def log(self, text: str) -> None:
        self.reporter.log(text)

    @property
    def facts(self) -> dict[str, Any]:
        return self.state.facts

    @property
    def option(self) -> dict[str, Any]:
        return self.stage.option if self.stage else {}

    @property
    def release(self) -> dict[str, Any]:
        """The release the install and health steps work with."""
        return self.installing or self.facts["release"]

    def timeout(self, what: str, default: float) -> float:
        return self.env.timeout(what, default)

    def regions(self, among: list[str] | None = None) -> list[str]:
        """The regions a stage works in: its own inside the `regions` group, else all
        (or all of `among`)."""
        every = self.env.all_regions if among is None else among
        return [r for r in every if self.region in (None, r)]

    def in_region(self, region: str) -> Context:
        """A context for one region's stages, run on its own thread: the run's state,
        clients, connections and trusted keys are shared; the stage being run is not."""
        return replace(self, region=region, stage=None, batch=None)

    def save(self) -> None:
        self.state.save()

    # -- the hosts a stage works on -----------------------------------------------------

    def target_refs(self) -> list[dict[str, str]]:
        kind = self.stage.targets if self.stage else None
        if kind == planning.BUILDER:
            b = self.facts.get("builder")
            if not b:
                raise StateError("the run has no builder yet", resource=self.state.run_id,
                                 fix="run the launch-builder stage first")
            return [{"region": b["region"], "instance_id": b["instance_id"]}]
        if kind == planning.CANDIDATES:
            cands = self.facts.get("candidates")
            if not cands or (self.region and self.region not in cands):
                where = f" in {self.region}" if self.region else ""
                raise StateError(f"the run has no candidates{where} yet",
                                 resource=self.state.run_id,
                                 fix="run the launch-candidates stage first")
            return [{"region": r, "instance_id": i} for r in self.regions(sorted(cands))
                    for i in cands[r]]
        if kind == planning.BATCH:
            if self.batch is None:
                raise StateError("a per-batch stage ran outside a rollout",
                                 resource=self.state.run_id,
                                 fix="run the rollout stage (`invoke step rollout`)")
            return list(self.batch)
        return []

    def targets(self, refs: list[dict[str, str]] | None = None) -> list[Any]:
        """The stage's hosts (or the given ones) as fresh EC2 descriptions: addresses can
        change when an instance starts again."""
        from deploylib import aws

        by_region: dict[str, list[str]] = {}
        for ref in self.target_refs() if refs is None else refs:
            by_region.setdefault(ref["region"], []).append(ref["instance_id"])
        out = []
        for region, ids in by_region.items():
            found = {i.instance_id: i for i in aws.describe(
                self.aws.ec2(region), region, ids, public=self.env.address == "public")}
            out.extend(found[i] for i in ids if i in found)
        return out

    def connection(self, instance: Any) -> Any:
        """The run's one SSH connection to an instance, with its trusted host keys."""
        from deploylib import ssh

        keys = self._trusted.get(instance.instance_id)
        if not keys:
            keys = self.provider.trusted_keys(self.aws, instance)
            if keys:
                self._trusted[instance.instance_id] = keys
        endpoint = ssh.Endpoint(name=instance.instance_id, address=instance.address,
                                port=self.env.ssh_port, trusted_keys=keys)
        return self.ssh.get(endpoint)


# -- the deploy lock: held from start to the end of the run, renewed by every stage --------


def hold(ctx: Context) -> None:
    from deploylib import lock

    lock.acquire(ctx.aws.dynamodb(), ctx.env.lock_table, ctx.env.name, ctx.state.run_id,
                 ttl=ctx.env.lock_ttl)


def let_go(ctx: Context) -> None:
    """Release the run's lock; a failure to do so is reported, not raised (it expires)."""
    from deploylib import lock

    try:
        if lock.release(ctx.aws.dynamodb(), ctx.env.lock_table, ctx.env.name,
                        ctx.state.run_id):
            ctx.log(f"  lock on {ctx.env.name} released")
    except Exception as exc:  # noqa: BLE001 - the lock expires after lock_ttl anyway
        ctx.log(f"x could not release the lock on {ctx.env.name}: {exc}")


def environment_clients(env: config.Environment) -> Any:
    """AWS clients for reading an environment outside any run (status)."""
    from deploylib import provider as providers

    return providers.for_environment(env).aws_clients(env)


@contextmanager
def open_context(env: config.Environment, state: RunState,
                 reporter: Any = None) -> Iterator[Context]:
    """Build every client for a run; SSH connections are closed when it ends."""
    from deploylib import provider as providers
    from deploylib import ssh, waits

    waits.pace(env.timeout("poll", 3.0))
    prov = providers.for_environment(env)
    clients = prov.aws_clients(env)
    with ssh.Pool(prov.ssh_credentials(env), connect_timeout=env.timeout("ssh_connect", 10),
                  retry_for=env.timeout("ssh_retry", 20)) as pool:
        jenkins = None
        if env.jenkins.url:
            from deploylib import jenkins as jenkins_mod

            jenkins = jenkins_mod.connect(env.jenkins)
        try:
            yield Context(env=env, state=state, provider=prov, aws=clients, ssh=pool,
                          jenkins=jenkins, reporter=reporter)
        finally:
            # One connection per host per run: the count shows it (benchmarks read it).
            opened = state.facts.setdefault("ssh_connections", 0) + pool.connections_opened()
            state.facts["ssh_connections"] = opened
            state.save()


# -- starting a run -------------------------------------------------------------------------


def start(cfg: config.DeployConfig, *, mode: str, version: str, env_name: str | None,
          artifact: str | None, fleet_size: int | None = None) -> RunState:
    """Validate every input, then create the run's state. Nothing is launched here."""
    config.check_mode(mode)
    config.check_version(version)
    env = cfg.environment(env_name)
    planning.plan(mode, env.extra_stages)  # an unplaceable extra stage fails now
    catalog.load(env.plugins)
    if artifact:
        path = release.check_artifact(artifact)
    else:
        path = release.build(env.app_source, version, Path(env.state_dir) / "artifacts")
    if fleet_size is not None and not 1 <= fleet_size <= 100:
        raise InputError(f"fleet size {fleet_size} is out of range", fix="use 1 to 100 hosts")
    state = _create_locked(env, mode=mode, version=version, artifact=str(Path(path).resolve()))
    if fleet_size is not None:
        state.facts["fleet_size"] = fleet_size
        state.save()
    return state


def _create_locked(env: config.Environment, **fields: Any) -> RunState:
    """Take the environment's lock for a new run id, then create the run's state: a run
    that cannot have the lock leaves nothing behind."""
    from deploylib import lock, provider
    from deploylib.state import new_run_id

    # The lab must be up (or the credentials usable) before anything is created.
    clients = provider.for_environment(env).aws_clients(env)
    run_id = new_run_id()
    lock.acquire(clients.dynamodb(), env.lock_table, env.name, run_id, ttl=env.lock_ttl)
    try:
        return RunState.create(env.state_dir, env=env.name, run_id=run_id, **fields)
    except BaseException:
        lock.release(clients.dynamodb(), env.lock_table, env.name, run_id)
        raise


def start_rollback(cfg: config.DeployConfig, env_name: str | None) -> RunState:
    """A run that makes the previous release live again, the way the last one went out."""
    from deploylib import aws, provider

    env = cfg.environment(env_name)
    catalog.load(env.plugins)
    clients = provider.for_environment(env).aws_clients(env)
    record = aws.read_record(clients.ssm(), env.record_parameter)
    previous = (record or {}).get("previous") or {}
    if not previous.get("release"):
        raise InputError(f"nothing to roll back to: the record of {env.name} names no "
                         "previous release", resource=env.record_parameter,
                         fix="deploy the release you want with `invoke deploy`")
    assert record is not None
    mode = planning.rollback_mode(record.get("procedure", ""))
    planning.plan(mode, env.extra_stages)
    return _create_locked(env, mode=mode, version=previous["release"], artifact="")


def adopt(cfg: config.DeployConfig, handoff: dict[str, Any]) -> RunState:
    """Continue, elsewhere, a run whose bake phase ran on another machine (a handoff).

    The handoff carries what the bake produced (release, image per region); the bake
    stages are marked done, so the release phase runs exactly as it would have locally.
    """
    try:
        run_id, version = handoff["run_id"], handoff["version"]
        rel, images = handoff["release"], handoff["images"]
        env = cfg.environment(handoff["env"])
    except (KeyError, TypeError):
        raise InputError("the handoff lacks run_id, env, version, release or images",
                         fix="pass the HANDOFF parameter exactly as `invoke bake` sent it"
                         ) from None
    config.check_version(version)
    from deploylib.state import check_run_id

    check_run_id(run_id)
    if (Path(env.state_dir) / f"{run_id}.json").exists():
        # The same workspace as the bake (or a replayed build): continue that state.
        state = RunState.load(env.state_dir, run_id)
        if (state.mode, state.version) != ("immutable", version):
            raise InputError(f"run {run_id} exists here as {state.mode} {state.version}",
                             fix="pass the HANDOFF of that run, or use a fresh workspace")
        return state
    state = RunState.create(env.state_dir, env=env.name, mode="immutable", version=version,
                            artifact="", run_id=run_id)
    state.facts.update({"release": rel, "images": images, "handoff": True})
    for stage in planning.plan("immutable", env.extra_stages).stages:
        if stage.phase == planning.BAKE:
            state.stages[stage.name] = {"status": DONE, "elsewhere": True}
    state.save()
    return state


def load_run(cfg: config.DeployConfig, run_id: str,
             state_dir: str | None = None) -> tuple[config.Environment, RunState]:
    """Find a run's state in the state directory of any environment (or the one given)."""
    dirs = [state_dir] if state_dir else sorted({e.state_dir for e in cfg.environments.values()})
    last: DeployError | None = None
    for d in dirs:
        try:
            state = RunState.load(d, run_id)
        except (StateError, InputError) as exc:
            last = exc
            continue
        return cfg.environment(state.env), state
    assert last is not None
    raise last


# -- executing stages -----------------------------------------------------------------------


def _call(ctx: Context, stage: planning.Stage, key: str) -> None:
    """Run one stage (with its hooks) unless the state says it is done already."""
    state = ctx.state
    if state.is_done(key):
        ctx.log(f"= {key} (done already)")
        return
    step = catalog.get(stage.step)
    hold(ctx)  # renew: a run whose lock was broken and taken must not go on
    ctx.stage = stage
    state.mark(key, RUNNING, step=step.function)
    ctx.reporter.stage(key, RUNNING)
    ctx.log(f"> {key}")
    began = time.monotonic()
    try:
        for fn in catalog.hooks("before", stage.name):
            fn(ctx)
        step.fn(ctx)
        for fn in catalog.hooks("after", stage.name):
            fn(ctx)
    except BaseException as exc:
        line = error_line(exc)
        state.mark(key, FAILED, error=line)
        ctx.reporter.stage(key, FAILED)
        ctx.log(f"x {key} failed after {time.monotonic() - began:.1f}s: {line}")
        raise
    finally:
        ctx.stage = None
    state.mark(key, DONE)
    ctx.reporter.stage(key, DONE)
    ctx.log(f"ok {key} {time.monotonic() - began:.1f}s")


def _rollout(ctx: Context, group: planning.Stage) -> None:
    """The in-place group: every per-batch stage, batch after batch.

    A host that fails is restored to the live release by the install script and left
    out of its target group; up to `max_failed_hosts` such hosts the rollout goes on
    without them. Past that it stops: the failed batch's hosts on the live release go
    back in, and (`rollback_on_failure`) the hosts already updated are switched back.
    """
    state = ctx.state
    if state.is_done(group.name):
        ctx.log(f"= {group.name} (done already)")
        return
    batches = ctx.facts.get("batches")
    if batches is None:
        raise StateError("the run has not selected its hosts", resource=state.run_id,
                         fix="run the select-hosts stage first")
    failed: dict[str, str] = ctx.facts.setdefault("failed_hosts", {})
    state.mark(group.name, RUNNING, step=f"{len(batches)} batch(es)")
    ctx.reporter.stage(group.name, RUNNING)
    ctx.reporter.batch(group.name, ctx.facts.get("batches_done", 0), len(batches))
    began = time.monotonic()
    n, whole = 0, []
    try:
        for n, whole in enumerate(batches, start=1):
            batch = [h for h in whole if h["instance_id"] not in failed]
            if batch:
                ctx.log(f"> batch {n}/{len(batches)}: "
                        f"{', '.join(h['instance_id'] for h in batch)}")
            for stage in group.per_batch:
                if not batch:
                    break
                batch = _tolerating(ctx, stage, f"{group.name}/{n}/{stage.name}", batch, failed)
            ctx.facts["batches_done"] = n
            state.save()
            ctx.reporter.batch(group.name, n, len(batches))
    except BaseException:
        state.mark(group.name, FAILED, error=f"batch {n} failed")
        ctx.reporter.stage(group.name, FAILED)
        if group.recover:
            _recover(ctx, group, whole)
        if ctx.env.rollback_on_failure:
            _roll_back_updated(ctx, group, batches[:n])
        raise
    finally:
        ctx.batch = None
    state.mark(group.name, DONE)
    ctx.reporter.stage(group.name, DONE)
    if failed:
        ctx.log(f"  {len(failed)} host(s) left out of their target group, on the live "
                f"release: {', '.join(sorted(failed))}")
    ctx.log(f"ok {group.name} {time.monotonic() - began:.1f}s")


class _Stopped(StateError):
    """A region stopped because another one failed."""


def _regions(ctx: Context, group: planning.Stage) -> None:
    """The release, region by region, all regions at once: each region's stages run in
    order on its own thread, so a region goes on as soon as its own image is there.

    When a region fails, the others stop before their next stage (a stage under way
    finishes); regions promoted by then are put back by the run's cleanup (`demote`).
    """
    state = ctx.state
    if state.is_done(group.name):
        ctx.log(f"= {group.name} (done already)")
        return
    regions = ctx.env.all_regions
    stop = threading.Event()
    state.mark(group.name, RUNNING, step=f"{len(regions)} region(s)")
    ctx.reporter.stage(group.name, RUNNING)
    began = time.monotonic()

    def chain(region: str) -> None:
        rctx = ctx.in_region(region)
        for stage in group.per_region:
            if stop.is_set():
                raise _Stopped(f"stopped before {stage.name}: another region failed",
                               resource=region, fix="see the region that failed")
            try:
                _call(rctx, stage, f"{group.name}/{region}/{stage.name}")
            except BaseException:
                stop.set()
                raise

    with ThreadPoolExecutor(max_workers=len(regions)) as pool:
        futures = {r: pool.submit(chain, r) for r in regions}
        try:
            all_done(futures.values())
        except BaseException:
            # Ctrl-C: the regions stop at their next stage, then the run's cleanup runs.
            stop.set()
            state.mark(group.name, FAILED, error="interrupted")
            ctx.reporter.stage(group.name, FAILED)
            raise
    failures = {r: f.exception() for r, f in futures.items() if f.exception() is not None}
    if failures:
        # A region that failed says why (its stage's own error, exit code included); the
        # others only that they stopped.
        failed = [e for e in failures.values() if not isinstance(e, _Stopped)]
        err = (failed or list(failures.values()))[0]
        state.mark(group.name, FAILED, error=f"{', '.join(failures)}: {error_line(err)}")
        ctx.reporter.stage(group.name, FAILED)
        raise err
    state.mark(group.name, DONE)
    ctx.reporter.stage(group.name, DONE)
    ctx.log(f"ok {group.name} {time.monotonic() - began:.1f}s")


def _tolerating(ctx: Context, stage: planning.Stage, key: str, batch: list[dict[str, str]],
                failed: dict[str, str]) -> list[dict[str, str]]:
    """Run a per-batch stage; drop hosts that fail while the failure budget allows."""
    while True:
        ctx.batch = batch
        try:
            _call(ctx, stage, key)
            return batch
        except StepFailed as exc:
            if len(failed) + len(exc.failures) > ctx.env.max_failed_hosts:
                raise
            for iid, err in exc.failures.items():
                failed[iid] = error_line(err)
            ctx.log(f"  {len(exc.failures)} host(s) left out, {len(failed)} of "
                    f"max_failed_hosts={ctx.env.max_failed_hosts}: {', '.join(exc.failures)}")
            ctx.save()
            batch = [h for h in batch if h["instance_id"] not in failed]
            if not batch:
                return batch


def _roll_back_updated(ctx: Context, group: planning.Stage,
                       done: list[list[dict[str, str]]]) -> None:
    """Switch the hosts a stopped rollout already updated back to the live release, with
    the same per-batch steps (drain, install, health-check, put back)."""
    from deploylib import aws, steps

    record = aws.read_record(ctx.aws.ssm(), ctx.env.record_parameter) or {}
    live = record.get("release")
    if not live or live == ctx.release["version"]:
        return
    try:
        ctx.installing = steps.release_facts(ctx.env, ctx.aws.s3(), live)
    except DeployError as exc:
        ctx.log(f"x cannot roll back to {live}: {exc.line()}")
        return
    failed = ctx.facts.get("failed_hosts", {})
    rolled = ctx.facts.setdefault("rolled_back", [])
    try:
        for k, whole in enumerate(done, start=1):
            candidates = [h for h in whole if h["instance_id"] not in failed
                          and h["instance_id"] not in rolled]
            # Hosts already on the live release (the failed batch's restored ones) stay.
            on_new = {i.instance_id for i in ctx.targets(candidates) if steps.serving_version(
                i.address or "", ctx.env.app_port, ctx.env.health_path) != live}
            batch = [h for h in candidates if h["instance_id"] in on_new]
            if not batch:
                continue
            ctx.log(f"> rolling back batch {k} to {live}")
            ctx.batch = batch
            try:
                for stage in group.per_batch:
                    _call(ctx, stage, f"rollback/{k}/{stage.name}")
            except Exception as exc:  # noqa: BLE001 - report, keep the original error
                ctx.log(f"x rollback of batch {k} failed: {error_line(exc)}")
                continue
            rolled.extend(h["instance_id"] for h in batch)
            ctx.save()
    finally:
        ctx.installing = None
        ctx.batch = None


def _best_effort(ctx: Context, name: str, stage: planning.Stage | None = None) -> bool:
    """Run a recovery or cleanup step; its failure is logged, never raised over the
    failure that caused it."""
    ctx.stage = stage or planning.Stage(name=name, step=name)
    ctx.log(f"> {name} (after the failure)")
    try:
        catalog.get(name).fn(ctx)
        ctx.state.facts.setdefault("cleanup", {})[name] = "done"
        return True
    except Exception as exc:  # noqa: BLE001 - report, keep the original error
        line = error_line(exc)
        ctx.state.facts.setdefault("cleanup", {})[name] = f"failed: {line}"
        ctx.log(f"x {name} failed: {line}")
        return False
    finally:
        ctx.stage = None
        ctx.state.save()


def _recover(ctx: Context, group: planning.Stage, batch: list[dict[str, str]]) -> None:
    ctx.batch = batch
    assert group.recover is not None
    _best_effort(ctx, group.recover, planning.Stage(name=group.recover, step=group.recover,
                                                    targets=planning.BATCH))


def clean_up(ctx: Context, plan: planning.Plan) -> None:
    """Remove what a failed run created and never made live; rewind the run so that a
    resume makes it again."""
    if ctx.state.is_done("record"):
        # Committed: what the run made is what is live now; only its later stages
        # (retiring the replaced hosts) are left, and a resume does them.
        ctx.log("  the release is recorded as live: nothing to discard "
                f"(`invoke resume --run {ctx.state.run_id}` finishes the run)")
        return
    names = [s.name for s in plan.walk()]
    groups = {m.name: s.name for s in plan.stages for m in s.members}
    for name in plan.cleanup:
        ctx.state.facts.get("discarded", {}).pop(name, None)
        if not _best_effort(ctx, name):
            continue
        restart = planning.RESTART_FROM.get(name)
        if restart in names and ctx.state.facts.get("discarded", {}).get(name):
            # Every stage from `restart` on runs again, with the group around it.
            later = set(names[names.index(restart):])
            later |= {groups[n] for n in later if n in groups}
            for key, entry in ctx.state.stages.items():
                parts = key.split("/")
                if (parts[0] in later or parts[-1] in later) and entry.get("status") != PENDING:
                    # What happened stays readable: the entry keeps its error and status.
                    entry.update(was=entry["status"], status=PENDING, reset_by=name)
            ctx.state.save()


def run_stage(ctx: Context, stage: planning.Stage) -> None:
    if stage.per_batch:
        _rollout(ctx, stage)
    elif stage.per_region:
        _regions(ctx, stage)
    else:
        _call(ctx, stage, stage.name)


def execute(ctx: Context, plan: planning.Plan, *, phase: str | None = None,
            keep_on_error: bool = False) -> None:
    """Run the plan's stages in order (only those of `phase` when given).

    On failure or Ctrl-C the run's temporaries are removed (unless `keep_on_error`);
    the lock is released when the run has ended, either way.
    """
    state = ctx.state
    hold(ctx)
    state.status = RUNNING
    state.save()
    try:
        for stage in plan.stages:
            if phase is None or stage.phase == phase:
                run_stage(ctx, stage)
    except BaseException:
        state.status = FAILED
        state.save()
        try:
            if keep_on_error:
                state.facts["kept_on_error"] = True
                state.save()
                ctx.log("  --keep-on-error: what the run made is left as it is; "
                        f"`invoke cleanup --run {state.run_id}` removes it")
            else:
                clean_up(ctx, plan)
        finally:
            let_go(ctx)
        raise
    finish(ctx, plan)


def finish(ctx: Context, plan: planning.Plan) -> None:
    """Mark the run done when every stage is, and release its lock."""
    if all(ctx.state.is_done(s.name) for s in plan.stages):
        ctx.state.status = DONE
        ctx.state.save()
        let_go(ctx)


def bake(ctx: Context, plan: planning.Plan, *, keep_on_error: bool = False) -> None:
    """The bake phase here; test-and-promote in Jenkins when it is configured, else here.

    Jenkins gets the handoff (run id, release, image per region) and runs the same
    Jenkinsfile with it; the build is followed to its result, which is this run's.
    """
    from deploylib import jenkins

    state, env = ctx.state, ctx.env
    execute(ctx, plan, phase=planning.BAKE, keep_on_error=keep_on_error)
    if ctx.jenkins is None:
        ctx.log("Jenkins is not configured: running test-and-promote here")
        execute(ctx, plan, phase=planning.RELEASE, keep_on_error=keep_on_error)
        return
    handoff = {"run_id": state.run_id, "env": state.env, "version": state.version,
               "release": state.facts["release"], "images": state.facts["images"]}
    try:
        build = jenkins.run_job(
            ctx.jenkins, env.jenkins.promote_job,
            {"HANDOFF": json.dumps(handoff, sort_keys=True), "ENV": state.env,
             "VERSION": state.version, "RUN_ID": state.run_id,
             "IMAGES": json.dumps(state.facts["images"], sort_keys=True)},
            timeout=env.jenkins.timeout, say=ctx.log,
            on_started=lambda b: ctx.log(f"  {b.job} #{b.number}: {b.console_url}"))
    except BaseException as exc:
        # The images are kept: `invoke resume` promotes them here; `invoke gc` removes
        # them if nobody does.
        state.status = FAILED
        state.facts["handoff"] = {"job": env.jenkins.promote_job, "error": str(exc)}
        state.save()
        let_go(ctx)
        raise
    state.facts["handoff"] = {"job": build.job, "number": build.number, "url": build.url,
                              "result": build.result}
    state.save()
    let_go(ctx)
    ctx.log(f"  {build.job} #{build.number} {build.result}")


def plan_for(env: config.Environment, state: RunState) -> planning.Plan:
    catalog.load(env.plugins)
    return planning.plan(state.mode, env.extra_stages)


# -- reporting ------------------------------------------------------------------------------


def timings(state: RunState) -> dict[str, Any]:
    """Stage timings and time-to-live (first stage start to the release serving)."""
    from deploylib import report

    run = report.run_summary(state)
    top = {k: v for k, v in state.stages.items() if "/" not in k}
    return {
        "stages": [{"name": k, "status": v.get("status"), "seconds": v.get("seconds")}
                   for k, v in top.items()],
        "time_to_live": run["time_to_live"],
        "total": run["total"],
    }


def summary(state: RunState) -> str:
    t = timings(state)
    lines = [f"run {state.run_id}: {state.mode} {state.version} to {state.env} — {state.status}"]
    for s in t["stages"]:
        secs = f"{s['seconds']:7.2f}s" if s["seconds"] is not None else "        "
        lines.append(f"  {s['name']:<20} {s['status']:<8} {secs}")
        subs: dict[str, list[float]] = {}
        per_region: dict[str, list[str]] = {}
        for key, entry in state.stages.items():
            parts = key.split("/")
            if len(parts) != 3 or parts[0] != s["name"]:
                continue
            if parts[1].isdigit():
                # A rollout's stages, summed over its batches: where the time goes.
                subs.setdefault(parts[2], []).append(entry.get("seconds") or 0.0)
            else:
                # The regions ran side by side: each region's own stages, in order.
                per_region.setdefault(parts[1], []).append(
                    f"{parts[2]} {entry.get('seconds') or 0.0:.2f}s")
        for name, secs_list in subs.items():
            lines.append(f"    {name:<18} x{len(secs_list):<6} {sum(secs_list):7.2f}s")
        for region, parts_done in per_region.items():
            lines.append(f"    {region:<18} {', '.join(parts_done)}")
    if t["time_to_live"] is not None:
        lines.append(f"  time to live: {t['time_to_live']:.2f}s   total: {t['total']:.2f}s")
    return "\n".join(lines)
