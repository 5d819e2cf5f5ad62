"""A run's life: started (inputs checked, lock taken, state created), adopted from a
bake's handoff, found again by id, given its clients, and a bake handed to Jenkins.

`open_context` is the only place clients are built: boto3 (through the environment's
provider), the SSH pool, and Jenkins.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from deploylib import (
    aws,
    catalog,
    config,
    live,
    lock,
    manifest,
    preflight,
    runstore,
    smoke,
    tarball,
)
from deploylib import plan as planning
from deploylib.context import Context, Reporter
from deploylib.engine import runner
from deploylib.errors import DeployError, InputError, LockHeld, StateError
from deploylib.facts import (
    Handoff,
    ImageId,
    Mode,
    Region,
    Release,
    RunId,
    Version,
    first_error,
)
from deploylib.state import DONE, FAILED, RunState, new_run_id
from deploylib.steps.release import artifact_key


def environment_clients(env: config.Environment) -> aws.AwsClients:
    """AWS clients for an environment, outside any run (status, gc, the lock)."""
    from deploylib import provider

    return provider.for_environment(env).aws_clients(env)


@contextmanager
def open_context(env: config.Environment, state: RunState,
                 reporter: Reporter | None = None) -> Iterator[Context]:
    """Build every client for a run; SSH connections are closed when it ends."""
    from deploylib import provider as providers
    from deploylib import ssh, waits

    waits.pace(env.timeout("poll", 3.0))
    prov = providers.for_environment(env)
    with ssh.Pool(prov.ssh_credentials(env), connect_timeout=env.timeout("ssh_connect", 10),
                  retry_for=env.timeout("ssh_retry", 20)) as pool:
        jenkins = None
        if env.jenkins.url:
            from deploylib import jenkins as jenkins_mod

            jenkins = jenkins_mod.connect(env.jenkins)
        ctx = Context(env=env, state=state, provider=prov,
                      aws=prov.aws_clients(env, state.run_id),
                      ssh=pool, jenkins=jenkins)
        if reporter is not None:
            ctx.reporter = reporter
        # The run's state in the environment's store from here on (and the store's copy
        # taken, when another machine took the run further): clients of their own, as
        # the state's writes are fenced by their own condition, not by the lock.
        runstore.attach(prov.aws_clients(env).s3(), env, state)
        try:
            yield ctx
        finally:
            # One connection per host per run: the count shows it (benchmarks read it).
            state.facts.ssh_connections += pool.connections_opened()
            try:
                state.save()
            except LockHeld:
                pass  # superseded: what stopped the run already says so


def plan_for(env: config.Environment, state: RunState) -> planning.Plan:
    catalog.load(env.plugins)
    return env_plan(env, state.mode)


def env_plan(env: config.Environment, mode: str) -> planning.Plan:
    """A procedure's stages as this environment runs them (its extra stages, its reload)."""
    return planning.plan(mode, env.extra_stages, graceful=env.reload == "graceful",
                         per_region_bake=env.bake == "per-region",
                         verify_batches=env.verify.watches_batches,
                         verify_live=env.verify.watches_live)


# -- starting a run -------------------------------------------------------------------------


def start(cfg: config.DeployConfig, *, mode: str, version: str, env_name: str | None,
          artifact: str | None, fleet_size: int | None = None) -> RunState:
    """Validate every input, then create the run's state. Nothing is launched here."""
    planning.check_mode(mode)
    config.check_version(version)
    env = cfg.environment(env_name)
    catalog.load(env.plugins)
    env_plan(env, mode)  # an unplaceable extra stage fails now
    if not artifact:
        # The runs' directory private from its first use: the artifact is its first file.
        Path(env.state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        artifact = str(tarball.build(env.app_source, version,
                                     Path(env.state_dir) / "artifacts",
                                     build_command=env.build_command))
    # what every host unpacks: held to the environment's caps, built or given
    path = tarball.check_artifact(artifact, max_mb=env.max_release_mb,
                                  max_files=env.max_release_files)
    # How it runs (its release.toml over the environment's app defaults): refused now,
    # not first on a host.
    manifest.effective(path, env.app, health_path=env.health_path, env_name=env.name)
    digest = tarball.sha256_file(path)
    if fleet_size is not None and not 1 <= fleet_size <= 1000:
        raise InputError(f"fleet size {fleet_size} is out of range", fix="use 1 to 1000 hosts")
    # The account as a first deploy meets it, before a lock or a run exists.
    clients = environment_clients(env)
    preflight.require(env, clients, mode=mode)
    state = _create_locked(env, clients, mode=mode, version=version,
                           artifact=str(Path(path).resolve()))
    # What was checked is what is published, whichever process and stage publishes it.
    state.facts.artifact_sha256 = digest
    if fleet_size is not None:
        state.facts.fleet_size = fleet_size
    state.save()
    return state


def _create_locked(env: config.Environment, clients: aws.AwsClients | None = None,
                   **fields: Any) -> RunState:
    """Take the environment's lock for a new run id, then create the run's state: a run
    that cannot have the lock leaves nothing behind. The lock stays taken: the run's
    stages hold it from here (runner.holding) until the run ends."""
    clients = clients or environment_clients(env)
    run_id = new_run_id()
    ddb = clients.dynamodb()
    fence = lock.acquire(ddb, env.lock_table, env.name, run_id, ttl=env.lock_ttl)["fence"]
    try:
        state = RunState.create(env.state_dir, env=env.name, run_id=run_id, **fields)
        state.facts.lock_fence = fence
        state.save()
        return state
    except BaseException:
        lock.release(ddb, env.lock_table, env.name, run_id, fence)
        raise


def start_rollback(cfg: config.DeployConfig, env_name: str | None) -> RunState:
    """A run that makes the previous release live again, the way the last one went out."""
    env = cfg.environment(env_name)
    catalog.load(env.plugins)
    record = live.record(environment_clients(env), env) or {}
    previous = record.get("previous") or {}
    if not previous.get("release"):
        raise InputError(f"nothing to roll back to: the record of {env.name} names no "
                         "previous release", resource=env.record_parameter,
                         fix="deploy the release you want with `invoke deploy`")
    mode = planning.rollback_mode(record.get("procedure", ""))
    env_plan(env, mode)
    return _create_locked(env, mode=mode, version=previous["release"], artifact="")


def folds_after(env: config.Environment, mode: str) -> bool:
    """fold = "after-deploy": a fold follows an in-place release (from the command line
    and in the pipeline alike). A rebake-light needs none: its group launches from the
    image it made (fold-template)."""
    return env.server_groups and env.fold == "after-deploy" and mode == "in-place"


def start_fold(cfg: config.DeployConfig, env_name: str | None) -> RunState:
    """A run that folds the live release into the live server groups' launch templates."""
    env = cfg.environment(env_name)
    catalog.load(env.plugins)
    if not env.server_groups:
        raise InputError(f"{env.name}'s fleet is not server groups: nothing to fold into",
                         resource=f"environments.{env.name}.fleet",
                         fix='set fleet = "server-groups" (hosts of a fleet of instances are '
                         "replaced only by a deploy)")
    record = live.record(environment_clients(env), env) or {}
    if not record.get("release"):
        raise InputError(f"nothing is recorded as live in {env.name}",
                         resource=env.record_parameter,
                         fix="make a first release with `--mode immutable`")
    return _create_locked(env, mode=planning.FOLD, version=record["release"], artifact="")


def handoff_of(state: RunState) -> dict[str, Any]:
    """What a bake hands to Jenkins: enough to continue its run anywhere."""
    return {"run_id": state.run_id, "env": state.env, "mode": state.mode,
            "version": state.version,
            "release": state.facts.release.model_dump() if state.facts.release else None,
            "images": dict(state.facts.images)}


class HandoffIn(BaseModel):
    """A handoff as `handoff_of` writes it, held to its shapes (it comes back through a
    Jenkins parameter anyone who may build the job can set)."""

    model_config = ConfigDict(extra="forbid")
    run_id: RunId
    env: str
    mode: Mode = "immutable"
    version: Version
    release: Release
    images: dict[Region, ImageId]


def adopt(cfg: config.DeployConfig, handoff: dict[str, Any],
          clients: aws.AwsClients | None = None) -> RunState:
    """Continue, elsewhere, a run whose bake phase ran on another machine (a handoff).

    The handoff carries what the bake produced (release, image per region); the bake
    stages are marked done, so the release phase runs exactly as it would have locally.
    """
    try:
        given = HandoffIn.model_validate(handoff)
    except ValidationError as exc:
        raise InputError(f"the handoff holds a bad value: {first_error(exc)}",
                         fix="pass the HANDOFF parameter exactly as `invoke bake` sent it"
                         ) from None
    run_id, version, mode, images = given.run_id, given.version, given.mode, given.images
    env = cfg.environment(given.env)
    # The release is rebuilt from this environment's store, not taken whole: only the
    # digest (and the object version it was published as) comes from the handoff, and
    # the hosts check what they fetch against that digest.
    rel = Release(version=version, sha256=given.release.sha256, bucket=env.artifact_bucket,
                  key=artifact_key(env.name, version), version_id=given.release.version_id)
    if (given.release.version, given.release.bucket, given.release.key) != \
            (rel.version, rel.bucket, rel.key):
        raise InputError(f"the handoff's release is not {version} in {env.name}'s store "
                         f"(it names s3://{given.release.bucket}/{given.release.key})",
                         fix="pass the HANDOFF parameter exactly as `invoke bake` sent it")
    planned = env_plan(env, planning.check_mode(mode))
    if not planned.hands_off:
        raise InputError(f"a {mode} run has no bake phase to hand off",
                         fix="pass the HANDOFF parameter exactly as `invoke bake` sent it")
    # The same workspace as the bake (or a replayed build): that state is continued —
    # checked before the lock is taken, so a handoff refused leaves nothing held.
    here = None
    if (Path(env.state_dir) / f"{run_id}.json").exists():
        here = RunState.load(env.state_dir, run_id)
        if (here.mode, here.version) != (mode, version):
            raise InputError(f"run {run_id} exists here as {here.mode} {here.version}",
                             fix="pass the HANDOFF of that run, or use a fresh workspace")
    # The release phase holds the environment as the bake did: its lock, for its run id
    # (the bake's own, or free again; another run's is refused here, exit 3).
    clients = clients or environment_clients(env)
    fence = lock.acquire(clients.dynamodb(), env.lock_table, env.name, run_id,
                         ttl=env.lock_ttl)["fence"]
    if here is not None:
        here.facts.lock_fence = fence
        runstore.claim(clients.s3(), env, here)
        return here
    state = RunState.create(env.state_dir, env=env.name, mode=mode, version=version,
                            artifact="", run_id=run_id)
    state.facts.lock_fence = fence
    state.facts.release = rel
    state.facts.images.update(images)
    state.facts.adopted = True
    for stage in planned.stages:
        if stage.phase == planning.BAKE:
            state.mark(stage.name, DONE, elsewhere=True)
    runstore.claim(clients.s3(), env, state)
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
    # Not on this machine: a run started elsewhere, kept in its environment's store.
    for env in cfg.environments.values():
        if state_dir and env.state_dir != state_dir:
            continue
        try:
            found = runstore.fetch(environment_clients(env).s3(), env, run_id)
        except DeployError:
            continue  # an environment this machine has no credentials for
        if found is not None:
            return env, found
    assert last is not None
    raise last


def paths(env: config.Environment, state: RunState) -> dict[str, str]:
    """Where a run's files are, relative to the working directory when inside it (the
    Jenkins workspace: `junit` and `archiveArtifacts` take workspace-relative paths)."""
    def rel(p: Path) -> str:
        p = p.absolute()
        try:
            return str(p.relative_to(Path.cwd()))
        except ValueError:
            return str(p)

    return {"state": rel(state.path), "run_dir": rel(Path(env.state_dir) / state.run_id),
            "junit": rel(smoke.junit_dir(env.state_dir, state.run_id)) + "/*.xml",
            "report": rel(Path(env.state_dir) / state.run_id / "report")}


# -- a bake handed to Jenkins -----------------------------------------------------------------


def bake(ctx: Context, plan: planning.Plan, *, keep_on_error: bool = False) -> None:
    """The bake phase here; test-and-promote in Jenkins when it is configured, else here.

    Jenkins gets the handoff (run id, release, image per region) and runs the same
    Jenkinsfile with it; the build is followed to its result, which is this run's.
    """
    from deploylib import jenkins

    state, env = ctx.state, ctx.env
    runner.execute(ctx, plan, phase=planning.BAKE, keep_on_error=keep_on_error)
    if ctx.jenkins is None:
        ctx.log("Jenkins is not configured: running test-and-promote here")
        runner.execute(ctx, plan, phase=planning.RELEASE, keep_on_error=keep_on_error)
        return
    handoff = handoff_of(state)
    with runner.holding(ctx):
        try:
            build = jenkins.run_job(
                ctx.jenkins, env.jenkins.promote_job,
                # Only parameters the job defines: Jenkins drops any other (SECURITY-170).
                # The handoff carries the rest (run id, mode, release, images).
                {"HANDOFF": json.dumps(handoff, sort_keys=True), "ENV": state.env,
                 "VERSION": state.version},
                timeout=env.jenkins.timeout, say=ctx.log,
                on_started=lambda b: ctx.log(f"  {b.job} #{b.number}: {b.console_url}"))
        except BaseException as exc:
            # The images are kept: `invoke resume` promotes them here; `invoke gc` removes
            # them if nobody does.
            state.status = FAILED
            state.facts.handoff = Handoff(job=env.jenkins.promote_job, error=str(exc))
            state.save()
            raise
        # The release phase ran there, under the same run id: this run is done.
        state.facts.handoff = Handoff(job=build.job, number=build.number, url=build.url,
                                      result=build.result)
        state.status = DONE
        state.save()
    ctx.log(f"  {build.job} #{build.number} {build.result}")
