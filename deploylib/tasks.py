"""Command line for deploylib: thin tasks that parse, call deploylib, and report.

A team's own tasks.py takes the whole collection (`from deploylib.tasks import ns`); the
`deploylib` command runs the same one (deploylib.cli).

    invoke plan --mode in-place --json      the stages of a procedure
    invoke deploy --mode M --version V      a whole procedure
    invoke bake --version V                 immutable; hands off to Jenkins when configured
    invoke hotfix --version V               in-place
    invoke status                           what is live, drift included
    invoke fold                             server groups: the live release into their image
    invoke lab.up / lab.down / demo         the local lab
    invoke lab.scale --region R --desired N a live server group scaled, as a policy would

Errors print one line naming the problem and the fix; bad input exits 2.
"""

from __future__ import annotations

import json as jsonlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from invoke import Collection, Exit, task

if TYPE_CHECKING:  # the tasks import deploylib when they run: `invoke --list` stays quick
    from deploylib.config import DeployConfig, Environment
    from deploylib.state import RunState


def _quiet_on_a_closed_pipe() -> None:
    """`invoke plan --json | head`: Invoke's program, whose reader went away, ends as a
    Unix filter does (SIGPIPE), not with a traceback — only when this process is Invoke's
    program (ours sets it in deploylib.cli), never inside another that imports the tasks."""
    import signal
    from pathlib import Path

    program = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    if program.name in ("invoke", "inv") or program.parts[-2:] == ("invoke", "__main__.py"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)


_quiet_on_a_closed_pipe()

MODE_HELP = "immutable, rebake-light or in-place"
HELP = {
    "mode": MODE_HELP,
    "version": "release version, e.g. 1.2.3",
    "artifact": "release tarball (default: build the app in app_source)",
    "env": "environment in deploy.toml (default: lab)",
    "config": "path of deploy.toml (default: ./deploy.toml or $DEPLOY_CONFIG)",
    "json": "print JSON for machines",
    "run": "run id, as printed by start/deploy",
    "keep_on_error": "on failure, leave what the run made (builder, images, candidates) for "
                     "inspection; `invoke cleanup --run ID` removes it later",
}


def require(**values: str) -> None:
    """A missing flag is bad input like any other: one line, the fix, exit 2."""
    from deploylib.errors import InputError

    for flag, value in values.items():
        if not value:
            example = {"mode": "in-place", "version": "1.2.3", "run": "RUN_ID",
                       "env": "production"}.get(flag, "VALUE")
            raise InputError(f"--{flag} is required", fix=f"pass --{flag} {example}")


@contextmanager
def reported() -> Iterator[None]:
    """Turn deploylib errors into one line and the right exit code."""
    from deploylib.errors import DeployError

    try:
        yield
    except DeployError as exc:
        raise Exit(f"error: {exc.line()}", code=exc.exit_code) from None
    except KeyboardInterrupt:
        raise Exit("interrupted: the run state says which stage stopped; "
                   "continue with `invoke resume --run ID`", code=130) from None


def _cfg(path: str | None):
    from deploylib import config

    return config.load(path)


def _emit(data: object) -> None:
    print(jsonlib.dumps(data, indent=2, sort_keys=True))


@contextmanager
def _running(cfg, state):
    """A run's context with the operator's view around it; the summary at the end,
    however it ends. Yields (ctx, plan)."""
    from deploylib import console, runs, summary

    env = cfg.environment(state.env)
    plan = runs.plan_for(env, state)
    title = f"{state.mode} {state.version} to {state.env} (run {state.run_id})"
    try:
        with console.for_run(title, plan.names()) as reporter, \
                runs.open_context(env, state, reporter) as ctx:
            yield ctx, plan
    finally:
        print(summary.text(state), file=sys.stderr)


def _run_all(cfg, state, *, keep_on_error: bool = False):
    from deploylib.engine import runner

    with _running(cfg, state) as (ctx, plan):
        runner.execute(ctx, plan, keep_on_error=keep_on_error)
    return state


@task(help={k: HELP[k] for k in ("mode", "json", "env", "config")})
def plan(c, mode="", json=False, env=None, config=None):
    """Show the stages of a procedure (a team's extra stages included)."""
    with reported():
        from deploylib import catalog
        from deploylib import plan as planning

        planning.check_mode(mode)
        environment = _cfg(config).environment(env)
        catalog.load(environment.plugins)
        from deploylib.runs import env_plan

        p = env_plan(environment, mode)
        data = p.to_dict()
        groups = {planning.PER_BATCH: "per batch of live hosts:",
                  planning.PER_REGION: "in every region at once, each as soon as it can:"}
        for stage, stage_data in zip(p.stages, data["stages"], strict=True):
            pairs = zip(stage.members, stage_data.get(stage.kind, []), strict=True) \
                if stage.is_group else [(stage, stage_data)]
            for one, one_data in pairs:
                one_data["function"] = catalog.get(one.step).function
        if json:
            _emit(data)
            return
        print(f"{mode}:")
        for stage in data["stages"]:
            if stage["kind"] in groups:
                print(f"  {stage['name']:<19} {groups[stage['kind']]}")
                for sub in stage[stage["kind"]]:
                    print(f"    {sub['name']:<17} {sub.get('targets', ''):<11} {sub['function']}")
                if stage.get("recover"):
                    print(f"    on a failed batch: {stage['recover']}; then, with "
                          f"rollback_on_failure, {stage['revert']} and these steps again "
                          "for the hosts already updated")
                continue
            print(f"  {stage['name']:<19} {stage.get('targets', ''):<11} {stage['function']}")
        if data["cleanup"]:
            print(f"  on failure: {', '.join(data['cleanup'])}")


@task(help={k: HELP[k] for k in ("mode", "version", "artifact", "env", "config", "json")} | {
    "run": "a run `invoke bake` handed off: continue its release phase here, as the "
           "environment's store has it"})
def start(c, mode="", version="", artifact=None, env=None, config=None, run=None,
          json=False):
    """Create a run and print its id (what the Jenkinsfile does first)."""
    with reported():
        from deploylib import runs
        from deploylib.errors import InputError

        cfg = _cfg(config)
        if run:
            given = [f"--{k}" for k, v in (("mode", mode), ("version", version),
                                            ("artifact", artifact)) if v]
            if given:
                raise InputError(f"{' '.join(given)} with --run: the run's own apply",
                                 fix="pass --run and --env only (the bake's run says its "
                                 "procedure and release)")
            state = runs.adopt(cfg, env, run)
        else:
            require(mode=mode, version=version)
            state = runs.start(cfg, mode=mode, version=version, env_name=env,
                               artifact=artifact)
        if json:
            # What the pipeline reads: the run, its procedure and where its files go.
            environment = cfg.environment(state.env)
            _emit({"run_id": state.run_id, "mode": state.mode, "version": state.version,
                   "env": state.env, "paths": runs.paths(environment, state),
                   # fold = "after-deploy": the pipeline runs `invoke fold` once it is done
                   "fold_after": runs.folds_after(environment, state.mode)})
        else:
            print(state.run_id)


@task(help={k: HELP[k] for k in ("mode", "version", "artifact", "env", "config", "json",
                                  "keep_on_error")})
def deploy(c, mode="", version="", artifact=None, env=None, config=None, json=False,
           keep_on_error=False):
    """Run a whole procedure: immutable, rebake-light or in-place."""
    with reported():
        from deploylib import runs, summary

        require(mode=mode, version=version)
        cfg = _cfg(config)
        state = runs.start(cfg, mode=mode, version=version, env_name=env, artifact=artifact)
        _run_all(cfg, state, keep_on_error=keep_on_error)
        _then_fold(cfg, state)
        if json:
            _emit({"run_id": state.run_id, **summary.timings(state)})


@task(help={k: HELP[k] for k in ("version", "artifact", "env", "config", "keep_on_error")})
def bake(c, version="", artifact=None, env=None, config=None, keep_on_error=False):
    """Bake an image (immutable); hand test-and-promote to Jenkins when it is configured."""
    with reported():
        from deploylib import runs
        from deploylib.errors import InputError

        require(version=version)
        cfg = _cfg(config)
        if not runs.env_plan(cfg.environment(env), "immutable").hands_off:
            raise InputError('bake = "per-region" bakes inside each region\'s release: there '
                             "is no bake phase to hand to Jenkins",
                             fix='run `invoke deploy --mode immutable`, or set bake = "copy" '
                             "to bake here and promote in Jenkins")
        state = runs.start(cfg, mode="immutable", version=version, env_name=env,
                           artifact=artifact)
        with _running(cfg, state) as (ctx, plan):
            runs.bake(ctx, plan, keep_on_error=keep_on_error)


@task(help={k: HELP[k] for k in ("version", "artifact", "env", "config", "json",
                                  "keep_on_error")})
def hotfix(c, version="", artifact=None, env=None, config=None, json=False,
           keep_on_error=False):
    """Put a release on the live hosts in place, batch by batch."""
    deploy(c, mode="in-place", version=version, artifact=artifact, env=env, config=config,
           json=json, keep_on_error=keep_on_error)


def _then_fold(cfg: DeployConfig, state: RunState) -> None:
    """fold = "after-deploy": once an in-place release is done, fold it."""
    from deploylib import runs

    if runs.folds_after(cfg.environment(state.env), state.mode):
        print(f"folding {state.version} into the live server groups (fold = after-deploy)",
              file=sys.stderr)
        _run_all(cfg, runs.start_fold(cfg, state.env))


@task(help={k: HELP[k] for k in ("env", "config", "json")})
def fold(c, env=None, config=None, json=False):
    """Server groups: the live release in an image, in the live groups' launch templates:
    new instances boot on it without installing at boot; no host is replaced."""
    with reported():
        from deploylib import runs, summary

        cfg = _cfg(config)
        state = runs.start_fold(cfg, env)
        _run_all(cfg, state)
        if json:
            _emit({"run_id": state.run_id, "mode": state.mode, "release": state.version,
                   **summary.timings(state)})


@task(help={k: HELP[k] for k in ("env", "config", "json", "keep_on_error")})
def rollback(c, env=None, config=None, json=False, keep_on_error=False):
    """Make the previous release live again, the way the last release went out.

    After an in-place deploy every host switches back in place; after an image-based one
    a fleet from the previous image is made live. The environment's record says which."""
    with reported():
        from deploylib import runs, summary

        cfg = _cfg(config)
        state = runs.start_rollback(cfg, env)
        _run_all(cfg, state, keep_on_error=keep_on_error)
        if json:
            _emit({"run_id": state.run_id, "mode": state.mode, "release": state.version,
                   **summary.timings(state)})


@task(positional=["name"], help={"name": "stage name, from `invoke plan`", "run": HELP["run"],
                                 "config": HELP["config"],
                                 "region": "of a per-region group, only this region's lane "
                                 "(the pipeline's parallel branches)"})
def step(c, name, run="", config=None, region=None):
    """Run one stage of a run (what each Jenkins stage calls); a finished stage is a no-op."""
    with reported():
        from deploylib import plan as planning
        from deploylib import runs
        from deploylib.engine import runner
        from deploylib.errors import InputError

        require(run=run)
        cfg = _cfg(config)
        environment, state = runs.load_run(cfg, run)
        p = runs.plan_for(environment, state)
        if name not in p.names():
            group = p.group_of(name)
            inside = f" (it runs inside {group.name}: `invoke step {group.name}`)" \
                if group else ""
            raise InputError(f"{state.mode} has no stage {name!r} of its own{inside}",
                             fix=f"use one of: {', '.join(p.names())}")
        if region is not None and p.stage(name).kind != planning.PER_REGION:
            raise InputError(f"{name} is not run region by region: --region does not apply",
                             fix="leave out --region (it is for a group `invoke plan` "
                             "shows as run in every region at once)")
        if region is not None and region not in environment.all_regions:
            raise InputError(f"{region} is not a region of {environment.name}",
                             resource=f"environments.{environment.name}.regions",
                             fix=f"use one of: {', '.join(environment.all_regions)}")
        with runs.open_context(environment, state) as ctx:
            runner.execute(ctx, p, only=name, region=region)


@task(help={"run": HELP["run"], "config": HELP["config"], "keep_on_error": HELP["keep_on_error"]})
def resume(c, run="", config=None, keep_on_error=False):
    """Continue a failed or interrupted run from the stage that did not finish."""
    with reported():
        from deploylib import runs

        require(run=run)
        cfg = _cfg(config)
        _, state = runs.load_run(cfg, run)
        _run_all(cfg, state, keep_on_error=keep_on_error)


@task(help={"run": HELP["run"], "config": HELP["config"]})
def cleanup(c, run="", config=None):
    """Remove what a failed run created and never made live (Jenkins' post-failure step)."""
    with reported():
        from deploylib import runs
        from deploylib.engine import runner

        require(run=run)
        cfg = _cfg(config)
        environment, state = runs.load_run(cfg, run)
        with runs.open_context(environment, state) as ctx:
            runner.discard(ctx, runs.plan_for(environment, state))
        print(jsonlib.dumps(state.facts.cleanup, sort_keys=True))


@task(help={k: HELP[k] for k in ("env", "config", "json")})
def status(c, env=None, config=None, json=False):
    """Every live instance (image, releases, drift) and the last run's windows."""
    with reported():
        from deploylib import inventory, runs

        environment = _cfg(config).environment(env)
        report = inventory.fleet(environment, runs.environment_clients(environment))
        report["last_run"] = inventory.last_run(environment.state_dir)
        if json:
            _emit(report)
        else:
            print(inventory.table(report))


@task(help={"run": "only this run (default: the newest runs, to compare procedures)",
            "env": HELP["env"], "config": HELP["config"], "json": HELP["json"],
            "open": "open the page in a browser (default; --no-open to only write it)",
            "out": "directory for report.json and report.html (default: STATE_DIR/report)",
            "last": "how many of the newest runs (default 12)"})
def report(c, run="", env=None, config=None, json=False, open=True, out="", last=12):
    """Write the run report (JSON and an HTML timeline) and open it."""
    with reported():
        from pathlib import Path

        from deploylib import report as reports
        from deploylib import runs

        cfg = _cfg(config)
        environment = cfg.environment(env)
        if run:
            environment, state = runs.load_run(cfg, run)
            states = [runs.newest(environment, state)]
        else:
            states = reports.load_states(environment.state_dir, limit=int(last))
        data = reports.build(states)
        json_path, page = reports.write(out or Path(environment.state_dir) / "report", data)
        if json:
            _emit(data)
        else:
            print(page)
        if open and not json:
            import webbrowser

            if not webbrowser.open(page.resolve().as_uri()):
                print(f"no browser here: open {page} yourself", file=sys.stderr)


@task(help={"out": "where to write it (default: docs/configuration.md here)"})
def docs(c, out="docs/configuration.md"):
    """Write the configuration reference (every deploy.toml key) from the schema."""
    from pathlib import Path

    from deploylib import schema

    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(schema.reference() + "\n")
    print(path)


@task(help={"env": HELP["env"], "mode": "the procedure to check for (its longest wait "
            "bounds the credentials; default: immutable, the longest)",
            "config": HELP["config"], "json": HELP["json"]})
def preflight(c, env=None, mode="", config=None, json=False):
    """Check the account is ready for a deploy (credentials, bucket, lock table, base
    image, each region's network), reading only; exit 2 when something is not."""
    with reported():
        from deploylib import plan, runs
        from deploylib import preflight as checks

        if mode:
            plan.check_mode(mode)
        environment = _cfg(config).environment(env)
        found = checks.run(environment, runs.environment_clients(environment),
                           mode=mode or None)
        if json:
            _emit(checks.summary(found))
        else:
            print(f"preflight for {environment.name}:")
            for check in found:
                print(f"  {check.line()}")
    if any(check.error is not None for check in found):
        raise Exit(code=2)


@task(help={"env": HELP["env"], "config": HELP["config"],
            "instance": "the policy of the role server groups' instances launch with"})
def policy(c, env=None, config=None, instance=False):
    """Print the least-privilege IAM policy for an environment (its bucket and lock table)."""
    with reported():
        from deploylib import render

        environment = _cfg(config).environment(env)
        print((render.instance_policy if instance else render.iam_policy)(environment), end="")


@task(help={"version": HELP["version"], "env": HELP["env"], "config": HELP["config"]})
def artifact(c, version="", env=None, config=None):
    """Build the app's release tarball (app_source, after build_command) into dist/ and
    print its path and sha256."""
    with reported():
        from deploylib import tarball

        require(version=version)
        environment = _cfg(config).environment(env)
        path = tarball.build(environment.app_source, version,
                             build_command=environment.build_command)
        print(f"{path}  sha256 {tarball.sha256_file(path)}")


# -- locks and garbage --------------------------------------------------------------------


@task(help={k: HELP[k] for k in ("env", "config", "json")})
def lock_status(c, env=None, config=None, json=False):
    """Who holds an environment's deploy lock, and until when."""
    with reported():
        from deploylib import lock, runs

        environment = _cfg(config).environment(env)
        clients = runs.environment_clients(environment)
        held = lock.read(clients.dynamodb(), environment.lock_table, environment.name)
        if json:
            _emit({"env": environment.name, "lock": held})
        elif held is None:
            print(f"{environment.name}: free")
        else:
            left = held["expires_at"] - time.time()
            state = f"stale for {-left:.0f}s" if held["stale"] else f"expires in {left:.0f}s"
            print(f"{environment.name}: held by run {held['run_id']} of {held['owner']} "
                  f"({state}; token {held['fence']})")


@task(help={"env": "environment whose lock to break (required: no default here)",
            "config": HELP["config"]})
def lock_break(c, env="", config=None):
    """Remove an environment's deploy lock whoever holds it (when its run is dead)."""
    with reported():
        from deploylib import lock, runs

        require(env=env)
        environment = _cfg(config).environment(env)
        clients = runs.environment_clients(environment)
        held = lock.break_lock(clients.dynamodb(), environment.lock_table, environment.name)
        print(f"{environment.name}: lock of run {held['run_id']} ({held['owner']}, token "
              f"{held['fence']}) broken: its next write stops it" if held
              else f"{environment.name}: was not locked")


@task(help={"env": HELP["env"], "config": HELP["config"], "json": HELP["json"],
            "older_than": "hours: only what is older than this goes (default 24)",
            "dry_run": "only say what would be removed"})
def gc(c, env=None, config=None, older_than="24", dry_run=False, json=False):
    """Remove what crashed runs left behind; never what is live or a rollback target.

    Instances, images and snapshots tagged with the environment and older than
    --older-than hours; kept: registered instances, the record's images, the newest
    keep_images images per region, and the run holding the lock."""
    with reported():
        from deploylib import gc as collector
        from deploylib import lock, runs
        from deploylib.errors import InputError

        try:
            hours = float(older_than)
        except ValueError:
            hours = -1.0
        if not 0 <= hours < 1e6:
            raise InputError(f"--older-than {older_than!r} is not a number of hours",
                             fix="give hours >= 0, e.g. --older-than 24")
        environment = _cfg(config).environment(env)
        clients = runs.environment_clients(environment)
        items, registered, live, owned = collector.collect(clients, environment)
        held = lock.read(clients.dynamodb(), environment.lock_table, environment.name)
        verdict = collector.select(
            items, registered=registered, live_images=live,
            locked_run=held["run_id"] if held and not held["stale"] else None,
            keep_images=environment.keep_images, older_than=hours * 3600, now=time.time(),
            held=owned)
        done = {} if dry_run else collector.remove(clients, verdict.remove)
        if json:
            _emit({"removed" if not dry_run else "would_remove": [
                {"kind": i.kind, "region": i.region, "id": i.resource_id, "run": i.run_id,
                 "result": done.get(i.resource_id, "dry run")} for i in verdict.remove],
                "kept": [{"kind": i.kind, "region": i.region, "id": i.resource_id,
                          "reason": why} for i, why in verdict.keep]})
            return
        verb = "would remove" if dry_run else "removed"
        for i in verdict.remove:
            result = done.get(i.resource_id, verb)
            print(f"{verb if result in (verb, 'removed') else 'FAILED'}  {i.kind:<16} "
                  f"{i.resource_id:<24} {i.region:<12} run {i.run_id or '-'}"
                  + ("" if result in (verb, "removed") else f"  {result}"))
        for i, why in verdict.keep:
            print(f"kept          {i.kind:<16} {i.resource_id:<24} {i.region:<12} {why}")
        if not verdict.remove:
            print(f"nothing to remove in {environment.name}")


# -- Jenkins ------------------------------------------------------------------------------


def _jenkins_for(environment):
    from deploylib import jenkins
    from deploylib.errors import InputError

    if not environment.jenkins.url:
        raise InputError(f"jenkins.url is not set for environment {environment.name}",
                         fix=f"add url = \"https://…\" under [environments.{environment.name}"
                         ".jenkins] in deploy.toml")
    return jenkins.connect(environment.jenkins)


@task(help={k: HELP[k] for k in ("env", "config", "json")})
def jenkins_setup(c, env=None, config=None, json=False):
    """Create or update the Jenkins jobs (deploylib/templates/jenkins); running it again
    changes nothing."""
    with reported():
        from deploylib import jenkins, pipeline, render
        from deploylib.errors import InputError

        cfg = _cfg(config)
        environment = cfg.environment(env)
        server = _jenkins_for(environment)
        if not environment.jenkins.repository:
            raise InputError("jenkins.repository is not set: the pipeline jobs read the "
                             "Jenkinsfile from it",
                             fix=f"add repository = \"<git URL of your repository>\" under "
                             f"[environments.{environment.name}.jenkins]")
        result = jenkins.setup(server, render.jenkins_jobs(environment,
                                                           pipeline.choices(cfg)))
        if json:
            _emit(result)
            return
        for job, what in result.items():
            print(f"{what:<10} {job}")
        if set(result.values()) == {"unchanged"}:
            print("no change: every job is as deploylib/templates/jenkins renders it")


@task(help={"env": "the environment a build deploys to (its ENV)", "config": HELP["config"]})
def jenkins_settings(c, env="", config=None):
    """What the pipeline needs of deploy.toml before it binds any credentials (JSON): the
    environments, this one's credentials id and approval, each stage's timeout."""
    with reported():
        from deploylib import pipeline

        _emit(pipeline.settings(_cfg(config), env))


@task(help={"run": "only this run's notice (default: every unsent one)",
            "env": HELP["env"], "config": HELP["config"]})
def jenkins_notify(c, run="", env=None, config=None):
    """Send the hotfix notices Jenkins could not take when they were made."""
    with reported():
        from deploylib import jenkins
        from deploylib.state import runs_with_pending_notice

        environment = _cfg(config).environment(env)
        server = _jenkins_for(environment)
        pending = [r for r in runs_with_pending_notice(environment.state_dir)
                   if not run or r.run_id == run]
        if not pending:
            print("no notice is waiting to be sent")
            return
        for state in pending:
            notice = jenkins.send_notice(server, environment, state)
            if notice is None:
                print(f"not sent: run {state.run_id} is not a hotfix of {environment.name}")
                continue
            state.save()
            print(f"sent: run {state.run_id} ({notice.parameters['RELEASE']})")


# -- the lab --------------------------------------------------------------------------------


def _lab_up(hosts: int, config: str | None, debian: bool = False) -> None:
    from deploylib import live, runs
    from deploylib.errors import InputError
    from deploylib.lab import control, rootfs

    # A region's lab subnet is a /24: 251 addresses once AWS's five are taken out, one of
    # them a builder's.
    if not 1 <= hosts <= 250:
        raise InputError(f"--hosts {hosts} is out of range", fix="use 1 to 250 hosts per region")
    cfg = _cfg(config)
    env = cfg.environment("lab")
    # A lab environment whose base image is the Debian one needs it made (once).
    debian = debian or env.base_image == rootfs.IMAGE_NAME
    if control.running():
        print("the lab is up already; `invoke lab.down` first to start it afresh "
              "(with another --hosts)", file=sys.stderr)
    if debian and not rootfs.ready():
        print("making the Debian base image once (debootstrap from Debian's archive, about "
              "a minute)", file=sys.stderr)
    if debian:
        rootfs.ensure()
    info = control.start_daemon(env)
    print(f"lab up: AWS API {info['endpoint']}", file=sys.stderr)
    if live.record(runs.environment_clients(env), env) is None:
        first = cfg.with_environment("lab", base_image=rootfs.IMAGE_NAME) if debian else cfg
        print(f"baking release 1.0.0 for a fleet of {hosts} host(s) per region"
              + (" from the Debian base image (real apt-get)" if debian else ""),
              file=sys.stderr)
        state = runs.start(first, mode="immutable", version="1.0.0", env_name="lab",
                           artifact=None, fleet_size=hosts)
        _run_all(first, state)
    for region, r in info["regions"].items():
        print(f"{region}: load balancer {r['load_balancer']}")


@task(help={"hosts": "hosts per region in the live fleet (default 2)", "config": HELP["config"],
            "debian": "bake the first release from a real Debian root filesystem (made "
                      "once with debootstrap) rather than the lab's directory base image"})
def lab_up(c, hosts=2, config=None, debian=False):
    """Start the lab (moto, sshd hosts, load balancers) with a live fleet on 1.0.0."""
    with reported():
        _lab_up(int(hosts), config, debian=debian)


@task()
def lab_down(c):
    """Stop the lab: every host, the load balancers and the AWS API; remove .lab/."""
    from deploylib.lab import control

    print("lab stopped" if control.stop_daemon() else "the lab was not running")


@task(help={"region": "the region whose live server group scales",
            "desired": "its new desired capacity", "config": HELP["config"]})
def lab_scale(c, region, desired, config=None):
    """Scale a region's live server group, as an autoscaling policy would."""
    with reported():
        from deploylib.lab import control

        env = _cfg(config).environment("lab")
        name, before = control.scale(env, region, int(desired))
        print(f"{name} in {region}: desired {before} -> {desired}; each new instance goes in "
              "service once its boot has put the live release on it")


@task(help={"hosts": "hosts per region (default 2)", "config": HELP["config"],
            "debian": "bake the first release from a real Debian root filesystem (default; "
                      "--no-debian for the lab's directory base image, without network)"})
def demo(c, hosts=2, config=None, debian=True):
    """Run all three procedures against a fresh lab fleet and compare their time-to-live
    (with server groups, the lab's fleet: a scale-out after the hotfix too)."""
    with reported():
        from deploylib import inventory, runs, summary
        from deploylib.lab import control, rootfs

        control.stop_daemon()
        _lab_up(int(hosts), config, debian=debian)
        cfg = _cfg(config)
        if debian:
            # Every procedure from the base the first release was baked from: a rebake-light
            # on an image of another base is refused (max_layers, the packages key).
            cfg = cfg.with_environment("lab", base_image=rootfs.IMAGE_NAME)
        env = cfg.environment("lab")
        results = []
        for mode, version in (("in-place", "1.0.1"), ("rebake-light", "1.0.2"),
                              ("immutable", "1.1.0")):
            print(f"\n=== {mode} {version} ===", flush=True)
            began = time.monotonic()
            state = runs.start(cfg, mode=mode, version=version, env_name="lab", artifact=None)
            _run_all(cfg, state)
            t = summary.timings(state)
            results.append((mode, version, t["time_to_live"], time.monotonic() - began))
            print(inventory.table(inventory.fleet(env, runs.environment_clients(env))))
            if mode == "in-place" and env.server_groups:
                _demo_scale_out(env, int(hosts))
        print("\nprocedure      release  time to live  total")
        for mode, version, ttl, total in results:
            print(f"{mode:<14} {version:<8} {ttl:>10.2f}s  {total:6.2f}s")
        print("\nThe lab is still up: try `invoke status`, or curl a load balancer above. "
              "`invoke lab.down` stops it.")


def _demo_scale_out(env: Environment, hosts: int) -> None:
    """Server groups, after the hotfix: the primary region's group scaled out by one as a
    policy would, its new instance launched from an image without the hotfix and put in
    service on it by its boot; then scaled back in."""
    from deploylib import inventory, live, runs, waits
    from deploylib.lab import control

    region = env.primary_region
    clients = runs.environment_clients(env)
    print(f"\n=== scale-out after the hotfix: {region}'s server group grows to {hosts + 1} ===",
          flush=True)
    name, _ = control.scale(env, region, hosts + 1)

    def healthy() -> bool:
        return len(live.hosts(clients, env, region)) == hosts + 1

    waits.until(healthy, timeout=300, what=f"{hosts + 1} healthy targets", resource=name,
                fix="read the new instance's console output (its boot script's log)")
    print(inventory.table(inventory.fleet(env, clients)))
    control.scale(env, region, hosts)
    print(f"{name} scaled back to {hosts}: its oldest instance drains, then terminates")


lab = Collection("lab")
lab.add_task(lab_up, "up")
lab.add_task(lab_down, "down")
lab.add_task(lab_scale, "scale")

jenkins_tasks = Collection("jenkins")
jenkins_tasks.add_task(jenkins_setup, "setup")
jenkins_tasks.add_task(jenkins_notify, "notify")
jenkins_tasks.add_task(jenkins_settings, "settings")

locks = Collection("lock")
locks.add_task(lock_status, "status")
locks.add_task(lock_break, "break")

ns = Collection(plan, preflight, start, deploy, bake, hotfix, rollback, fold, step, resume, cleanup,
                status, gc, report, artifact, policy, docs, demo)
ns.add_collection(lab)
ns.add_collection(locks)
ns.add_collection(jenkins_tasks)
