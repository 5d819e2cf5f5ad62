"""A run's life: started (inputs checked, lock taken, state created), adopted from a
bake handed to Jenkins, found again by id, given its clients, and a bake handed off.

`open_context` is the only place clients are built: boto3 (through the environment's
provider), the SSH pool, and Jenkins.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
from deploylib.facts import Handoff
from deploylib.state import DONE, FAILED, RunState, check_run_id, new_run_id


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


def adopt(cfg: config.DeployConfig, env_name: str | None, run_id: str,
          clients: aws.AwsClients | None = None) -> RunState:
    """Continue here a run whose bake phase ran on another machine (`invoke bake` handed
    it to Jenkins by its id). The run is read from the environment's store, where the bake
    saved it: its release, its images, its bake stages done. Nothing else comes from the
    build's parameters, so nothing in them can name a release or an image."""
    check_run_id(run_id)
    env = cfg.environment(env_name)
    clients = clients or environment_clients(env)
    fix = "pass the BAKE_RUN `invoke bake` handed off (it names the run it baked)"
    state = runstore.read(clients.s3(), env, run_id)
    if state is None:
        raise InputError(f"{env.name}'s store has no run {run_id}",
                         resource=f"s3://{env.artifact_bucket}/{runstore.key(env.name, run_id)}",
                         fix=fix)
    planned = env_plan(env, state.mode)
    if not planned.hands_off:
        raise InputError(f"run {run_id} is {state.mode}: it has no bake phase to hand off",
                         fix=fix)
    if state.status == DONE:
        raise InputError(f"run {run_id} is done already: its release phase ran",
                         fix="see it with `invoke status`; deploy again with a new bake")
    for stage in planned.stages:
        if stage.phase == planning.BAKE and not state.is_done(stage.name):
            raise InputError(f"run {run_id}'s bake is not done: {stage.name} is "
                             f"{state.entry(stage.name).status}",
                             fix=f"finish the bake where it ran (`invoke resume --run "
                             f"{run_id}`)")
    # The release phase holds the environment as the bake did: its lock, for its run id,
    # with a take of its own (the bake's process, following the build, writes no more).
    # Another run's lock is refused here, exit 3, before anything is written.
    fence = lock.acquire(clients.dynamodb(), env.lock_table, env.name, run_id,
                         ttl=env.lock_ttl)["fence"]
    state.facts.lock_fence = fence
    state.facts.adopted = True
    for stage in planned.stages:
        if stage.phase == planning.BAKE:
            state.entry(stage.name).elsewhere = True
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
        # (A command that opens the run's context takes the store's copy there when it
        # went further: runstore.attach. One that only reads it asks `newest`.)
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


def newest(env: config.Environment, state: RunState) -> RunState:
    """The run as far as it went: the store's copy when it went further than this
    machine's (a bake's release phase in Jenkins, a resume elsewhere); offline, this one."""
    try:
        stored = runstore.read(environment_clients(env).s3(), env, state.run_id)
    except DeployError:
        return state
    if stored is None or not runstore.further(stored, state):
        return state
    stored.write_local(stored.text())
    return stored


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

    Jenkins gets the run's id and runs the same Jenkinsfile with it, reading the run from
    the environment's store; the build is followed to its result, which is this run's.
    """
    from deploylib import jenkins

    state, env = ctx.state, ctx.env
    runner.execute(ctx, plan, phase=planning.BAKE, keep_on_error=keep_on_error)
    if ctx.jenkins is None:
        ctx.log("Jenkins is not configured: running test-and-promote here")
        runner.execute(ctx, plan, phase=planning.RELEASE, keep_on_error=keep_on_error)
        return
    # Jenkins gets the run's id; its build reads the run from the store, takes its lock
    # and writes it from then on: this process keeps the lock only until the build has
    # started, then follows it, writing its own record of the handoff here only.
    parameters = {"BAKE_RUN": state.run_id, "ENV": state.env, "VERSION": state.version}

    def failed(exc: BaseException) -> None:
        # The images are kept: `invoke resume` promotes them here; `invoke gc` removes
        # them if nobody does.
        state.status = FAILED
        state.facts.handoff = Handoff(job=env.jenkins.promote_job, error=str(exc))
        state.save()

    with runner.holding(ctx):
        try:
            item = jenkins.trigger(ctx.jenkins, env.jenkins.promote_job, parameters)
            build = jenkins.wait_started(ctx.jenkins, env.jenkins.promote_job, item,
                                         timeout=env.jenkins.timeout, say=ctx.log)
        except BaseException as exc:
            failed(exc)  # (the run ended: its lock is released on the way out)
            raise
    state.mirror = None  # the run is the build's now, its lock too
    ctx.log(f"  {build.job} #{build.number}: {build.console_url}")
    try:
        build = jenkins.succeeded(jenkins.wait_finished(
            ctx.jenkins, build, timeout=env.jenkins.timeout, say=ctx.log))
    except BaseException as exc:
        failed(exc)
        raise
    # The release phase ran there, under the same run id: this run is done.
    state.facts.handoff = Handoff(job=build.job, number=build.number, url=build.url,
                                  result=build.result)
    state.status = DONE
    state.save()
    ctx.log(f"  {build.job} #{build.number} {build.result}")
