"""Command line for deploylib: thin tasks that parse, call deploylib, and report.

    invoke plan --mode in-place --json      the stages of a procedure
    invoke deploy --mode M --version V      a whole procedure
    invoke bake --version V                 immutable; hands off to Jenkins when configured
    invoke hotfix --version V               in-place
    invoke status                           what is live, drift included
    invoke lab.up / lab.down / demo         the local lab

Errors print one line naming the problem and the fix; bad input exits 2.
"""

from __future__ import annotations

import json as jsonlib
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from invoke import Collection, Exit, task

MODE_HELP = "immutable, rebake-light or in-place"
HELP = {
    "mode": MODE_HELP,
    "version": "release version, e.g. 1.2.3",
    "artifact": "release tarball (default: build the app in app_source)",
    "env": "environment in deploy.toml (default: lab)",
    "config": "path of deploy.toml (default: ./deploy.toml or $DEPLOY_CONFIG)",
    "json": "print JSON for machines",
    "run": "run id, as printed by start/deploy",
}


def require(**values: str) -> None:
    """A missing flag is bad input like any other: one line, the fix, exit 2."""
    from deploylib.errors import InputError

    for flag, value in values.items():
        if not value:
            example = {"mode": "in-place", "version": "1.2.3", "run": "RUN_ID"}.get(flag, "VALUE")
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


def _run_all(cfg, state, *, phase: str | None = None):
    from deploylib import runner

    env = cfg.environment(state.env)
    with runner.open_context(env, state) as ctx:
        try:
            runner.execute(ctx, runner.plan_for(env, state), phase=phase)
        finally:
            print(runner.summary(state), file=sys.stderr)
    return state


@task(help={k: HELP[k] for k in ("mode", "json", "env", "config")})
def plan(c, mode="", json=False, env=None, config=None):
    """Show the stages of a procedure (a team's extra stages included)."""
    with reported():
        from deploylib import catalog
        from deploylib import config as cfgmod
        from deploylib import plan as planning

        cfgmod.check_mode(mode)
        environment = _cfg(config).environment(env)
        catalog.load(environment.plugins)
        p = planning.plan(mode, environment.extra_stages)
        data = p.to_dict()
        nested = [s for st in data["stages"] for s in st.get("per_batch", [])]
        for stage in [*data["stages"], *nested]:
            if "per_batch" not in stage:
                stage["function"] = catalog.get(stage["step"]).function
        if json:
            _emit(data)
            return
        print(f"{mode}:")
        for stage in data["stages"]:
            if "per_batch" in stage:
                print(f"  {stage['name']:<19} per batch of live hosts:")
                for sub in stage["per_batch"]:
                    print(f"    {sub['name']:<17} {sub.get('targets', ''):<11} {sub['function']}")
                if stage.get("recover"):
                    print(f"    on a failed batch: {stage['recover']}")
                continue
            print(f"  {stage['name']:<19} {stage.get('targets', ''):<11} {stage['function']}")
        if data["cleanup"]:
            print(f"  on failure: {', '.join(data['cleanup'])}")


@task(help={k: HELP[k] for k in ("mode", "version", "artifact", "env", "config")} | {
    "handoff": "JSON a bake handed to Jenkins: continue that run's release phase here"})
def start(c, mode="", version="", artifact=None, env=None, config=None, handoff=None):
    """Create a run and print its id (what the Jenkinsfile does first)."""
    with reported():
        from deploylib import runner
        from deploylib.errors import InputError

        if not handoff:
            require(mode=mode, version=version)
        cfg = _cfg(config)
        if handoff:
            try:
                data = jsonlib.loads(handoff)
            except jsonlib.JSONDecodeError:
                raise InputError("--handoff is not valid JSON",
                                 fix="pass the HANDOFF parameter exactly as sent") from None
            state = runner.adopt(cfg, data)
        else:
            state = runner.start(cfg, mode=mode, version=version, env_name=env,
                                 artifact=artifact)
        print(state.run_id)


@task(help={k: HELP[k] for k in ("mode", "version", "artifact", "env", "config", "json")})
def deploy(c, mode="", version="", artifact=None, env=None, config=None, json=False):
    """Run a whole procedure: immutable, rebake-light or in-place."""
    with reported():
        from deploylib import runner

        require(mode=mode, version=version)
        cfg = _cfg(config)
        state = runner.start(cfg, mode=mode, version=version, env_name=env, artifact=artifact)
        _run_all(cfg, state)
        if json:
            _emit({"run_id": state.run_id, **runner.timings(state)})


@task(help={k: HELP[k] for k in ("version", "artifact", "env", "config")})
def bake(c, version="", artifact=None, env=None, config=None):
    """Bake an image (immutable); hand test-and-promote to Jenkins when it is configured."""
    with reported():
        from deploylib import runner

        require(version=version)
        cfg = _cfg(config)
        state = runner.start(cfg, mode="immutable", version=version, env_name=env,
                             artifact=artifact)
        environment = cfg.environment(state.env)
        with runner.open_context(environment, state) as ctx:
            runner.bake(ctx, runner.plan_for(environment, state))
        print(runner.summary(state), file=sys.stderr)


@task(help={k: HELP[k] for k in ("version", "artifact", "env", "config", "json")})
def hotfix(c, version="", artifact=None, env=None, config=None, json=False):
    """Put a release on the live hosts in place, batch by batch."""
    deploy(c, mode="in-place", version=version, artifact=artifact, env=env, config=config,
           json=json)


@task(positional=["name"], help={"name": "stage name, from `invoke plan`", "run": HELP["run"],
                                 "config": HELP["config"]})
def step(c, name, run="", config=None):
    """Run one stage of a run (what each Jenkins stage calls); a finished stage is a no-op."""
    with reported():
        from deploylib import runner
        from deploylib.errors import InputError

        require(run=run)
        cfg = _cfg(config)
        environment, state = runner.load_run(cfg, run)
        p = runner.plan_for(environment, state)
        try:
            stage = p.stage(name)
        except KeyError:
            raise InputError(f"{state.mode} has no stage {name!r}",
                             fix=f"use one of: {', '.join(p.names())}") from None
        with runner.open_context(environment, state) as ctx:
            runner.run_stage(ctx, stage)


@task(help={"run": HELP["run"], "config": HELP["config"]})
def resume(c, run="", config=None):
    """Continue a failed or interrupted run from the stage that did not finish."""
    with reported():
        from deploylib import runner

        require(run=run)
        cfg = _cfg(config)
        _, state = runner.load_run(cfg, run)
        _run_all(cfg, state)


@task(help={"run": HELP["run"], "config": HELP["config"]})
def cleanup(c, run="", config=None):
    """Remove what a failed run created and never made live (Jenkins' post-failure step)."""
    with reported():
        from deploylib import runner
        from deploylib.state import FAILED

        require(run=run)
        cfg = _cfg(config)
        environment, state = runner.load_run(cfg, run)
        state.status = FAILED
        with runner.open_context(environment, state) as ctx:
            runner.clean_up(ctx, runner.plan_for(environment, state))
        print(jsonlib.dumps(state.facts.get("cleanup", {}), sort_keys=True))


@task(help={k: HELP[k] for k in ("env", "config", "json")})
def status(c, env=None, config=None, json=False):
    """Every live instance: image, baked release, running release, drift."""
    with reported():
        from deploylib import inventory, runner

        environment = _cfg(config).environment(env)
        report = inventory.fleet(environment, runner.environment_clients(environment))
        if json:
            _emit(report)
        else:
            print(inventory.table(report))


@task(help={"version": HELP["version"], "env": HELP["env"], "config": HELP["config"]})
def artifact(c, version="", env=None, config=None):
    """Build the sample app's release tarball into dist/ and print its path and sha256."""
    with reported():
        from deploylib import release

        require(version=version)
        environment = _cfg(config).environment(env)
        path = release.build(environment.app_source, version)
        print(f"{path}  sha256 {release.sha256_file(path)}")


# -- the lab --------------------------------------------------------------------------------


def _lab_up(hosts: int, config: str | None) -> None:
    from deploylib import aws, runner
    from deploylib.errors import InputError
    from deploylib.lab import control

    if not 1 <= hosts <= 20:
        raise InputError(f"--hosts {hosts} is out of range", fix="use 1 to 20 hosts per region")
    cfg = _cfg(config)
    env = cfg.environment("lab")
    if control.running():
        print("the lab is up already; `invoke lab.down` first to start it afresh "
              "(with another --hosts)", file=sys.stderr)
    info = control.start_daemon(env)
    print(f"lab up: AWS API {info['endpoint']}", file=sys.stderr)
    record = aws.read_record(runner.environment_clients(env).ssm(), env.record_parameter)
    if record is None:
        print(f"baking release 1.0.0 for a fleet of {hosts} host(s) per region", file=sys.stderr)
        state = runner.start(cfg, mode="immutable", version="1.0.0", env_name="lab",
                             artifact=None, fleet_size=hosts)
        _run_all(cfg, state)
    for region, r in info["regions"].items():
        print(f"{region}: load balancer {r['load_balancer']}")


@task(help={"hosts": "hosts per region in the live fleet (default 2)", "config": HELP["config"]})
def lab_up(c, hosts=2, config=None):
    """Start the lab (moto, sshd hosts, load balancers) with a live fleet on 1.0.0."""
    with reported():
        _lab_up(int(hosts), config)


@task
def lab_down(c):
    """Stop the lab: every host, the load balancers and the AWS API; remove .lab/."""
    from deploylib.lab import control

    print("lab stopped" if control.stop_daemon() else "the lab was not running")


@task(help={"hosts": "hosts per region (default 2)", "config": HELP["config"]})
def demo(c, hosts=2, config=None):
    """Run all three procedures against a fresh lab fleet and compare their time-to-live."""
    with reported():
        from deploylib import inventory, runner
        from deploylib.lab import control

        control.stop_daemon()
        _lab_up(int(hosts), config)
        cfg = _cfg(config)
        env = cfg.environment("lab")
        results = []
        for mode, version in (("in-place", "1.0.1"), ("rebake-light", "1.0.2"),
                              ("immutable", "1.1.0")):
            print(f"\n=== {mode} {version} ===", flush=True)
            began = time.monotonic()
            state = runner.start(cfg, mode=mode, version=version, env_name="lab", artifact=None)
            _run_all(cfg, state)
            t = runner.timings(state)
            results.append((mode, version, t["time_to_live"], time.monotonic() - began))
            print(inventory.table(inventory.fleet(env, runner.environment_clients(env))))
        print("\nprocedure      release  time to live  total")
        for mode, version, ttl, total in results:
            print(f"{mode:<14} {version:<8} {ttl:>10.2f}s  {total:6.2f}s")
        print("\nThe lab is still up: try `invoke status`, or curl a load balancer above. "
              "`invoke lab.down` stops it.")


lab = Collection("lab")
lab.add_task(lab_up, "up")
lab.add_task(lab_down, "down")

ns = Collection(plan, start, deploy, bake, hotfix, step, resume, cleanup, status, artifact,
                demo)
ns.add_collection(lab)
