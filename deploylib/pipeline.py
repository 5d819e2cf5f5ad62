"""What the Jenkins pipeline (vars/deploylibPipeline.groovy) asks of deploy.toml before it
touches AWS: the environments it may name, the credentials it binds for one and whether a
person approves its release phase, and how long each of its stages may take.

Pure: read from the configuration and the plan, never from AWS or Jenkins, so the
pipeline can ask before it has any credentials bound (`invoke jenkins.settings`).
"""

from __future__ import annotations

import math
from typing import Any

from deploylib import plan as planning
from deploylib.config import DeployConfig, Environment
from deploylib.errors import InputError

# The waits each step may meet, as the steps ask for them: (timeout key, the tool's own
# default in seconds). A stage may take the sum of its steps' waits; a step that waits on
# nothing of these is given UNTIMED.
STEP_WAITS: dict[str, tuple[tuple[str, float], ...]] = {
    "launch-builder": (("launch", 600),),
    "wait-ssh": (("ssh", 300), ("first_boot", 600)),
    "provision": (("provision", 900),),
    "install-release": (("install", 600), ("health", 60)),
    "stop-builder": (("stop", 600),),
    "create-image": (("image", 3600),),
    "wait-image": (("copy", 7200),),
    "launch-candidates": (("launch", 600), ("boot", 900)),
    "smoke-test": (("smoke", 600),),
    "promote": (("healthy", 300),),
    "demote": (("healthy", 300),),
    "select-hosts": (("ssh", 300),),
    "drain": (("drain", 600),),
    "health-check": (("health", 60),),
    "put-back": (("healthy", 300),),
    "catch-up": (("boot", 900), ("install", 600)),
}
UNTIMED = 300.0
# Steps that run scripts on hosts: over Run Command (transport = "ssm") each command may
# first wait its delivery timeout for an agent to take it.
_COMMANDS = frozenset({"wait-ssh", "install-release", "drain", "health-check", "catch-up"})
# Room over the waits themselves: the calls between them, a slow agent.
MARGIN_MINUTES = 15


def _seconds(env: Environment, step: str) -> float:
    if step == "verify":  # the longest window, its metrics' arrival, a period to spare
        v = env.verify
        return max(v.canary_for, v.wave_for, v.live_for) + v.delay + 2 * v.period
    delivery = env.timeout("delivery", 120) if env.transport == "ssm" and step in _COMMANDS \
        else 0
    return sum(env.timeout(key, default) for key, default in STEP_WAITS.get(step, ())) \
        + delivery or UNTIMED


def most_batches(env: Environment) -> int:
    """The most in-place batches a rollout can have: every region's largest fleet."""
    hosts = env.max_size or 2 * env.fleet_size
    return env.batch_count(hosts) * len(env.all_regions)


def stage_minutes(env: Environment, stage: planning.Stage) -> int:
    """The longest a stage of the pipeline may take, from the tool's own timeouts: its
    steps' waits (a region's lane once, for they run side by side; a rollout's batch once
    per batch it can have), with a margin."""
    if stage.kind == planning.PER_BATCH:
        seconds = sum(_seconds(env, m.step) for m in stage.members) * most_batches(env)
    elif stage.is_group:
        seconds = sum(_seconds(env, m.step) for m in stage.members)
    else:
        seconds = _seconds(env, stage.step)
    return math.ceil(seconds / 60) + MARGIN_MINUTES


def plan_minutes(env: Environment, plan: planning.Plan) -> dict[str, int]:
    """Every stage's timeout, by name."""
    return {stage.name: stage_minutes(env, stage) for stage in plan.stages}


def settings(cfg: DeployConfig, env_name: str) -> dict[str, Any]:
    """What the pipeline needs for a build of ENV: one line and exit 2 when ENV is none of
    deploy.toml's environments (the job's choice lists them)."""
    from deploylib.runs import env_plan

    names = choices(cfg)
    if env_name not in names:
        raise InputError(f"ENV {env_name!r} is not an environment of {cfg.source}" if env_name
                         else "ENV is empty: the pipeline deploys to no default environment",
                         fix=f"build with ENV one of: {', '.join(names) or '(none: add one)'}")
    env = cfg.environment(env_name)
    fold = env_plan(env, planning.FOLD)
    minutes: dict[str, int] = {}
    for mode in planning.MODES:
        for name, stage in plan_minutes(env, env_plan(env, mode)).items():
            minutes[name] = max(stage, minutes.get(name, 0))
    return {
        "env": env.name,
        "environments": names,
        "credentials": env.jenkins.credentials or f"deploy-aws-{env.name}",
        "approval": env.jenkins.approval,
        # jenkins.region_agents: a per-region group as parallel branches, one per region
        "region_agents": env.jenkins.region_agents,
        "regions": env.all_regions,
        # Every stage name any procedure has (the longest where two share a name): a
        # handoff's procedure is known only later.
        "stage_minutes": minutes,
        "fold_minutes": sum(plan_minutes(env, fold).values()),
    }


def choices(cfg: DeployConfig) -> list[str]:
    """The environments a Jenkins build may name: deploy.toml's own, the lab only where
    the file defines one (the embedded lab is a laptop's, not a Jenkins server's)."""
    return [name for name in cfg.environments
            if name != "lab" or cfg.defines_lab]
