"""Jenkins through python-jenkins: trigger a parameterized job and follow it.

Following a build is three waits, each with a deadline: the queue item until it has an
executable (or is cancelled), then the build until it has a result. The console URL is
reported as soon as the build number is known, so an operator can open it at once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from deploylib import waits
from deploylib.config import Environment, JenkinsConfig
from deploylib.errors import JenkinsError
from deploylib.facts import Notice
from deploylib.state import RunState

TOKEN_ENV = "JENKINS_API_TOKEN"


@dataclass(frozen=True)
class Build:
    job: str
    queue_item: int
    number: int | None
    url: str | None
    result: str | None

    @property
    def console_url(self) -> str | None:
        return f"{self.url.rstrip('/')}/console" if self.url else None


def connect(cfg: JenkinsConfig, *, timeout: float = 10.0) -> Any:
    """A python-jenkins client; the API token comes from $JENKINS_API_TOKEN, never config."""
    import jenkins

    return jenkins.Jenkins(cfg.url, username=cfg.user or None,
                           password=os.environ.get(TOKEN_ENV) or None, timeout=timeout)


def _wrap(action: str, job: str, fn: Callable[[], Any]) -> Any:
    import jenkins
    import requests

    try:
        return fn()
    except jenkins.NotFoundException:
        raise JenkinsError(f"{action}: the job does not exist", resource=f"job {job}",
                           fix="create the job in Jenkins (README, Jenkins) or fix the job "
                           "names under [environments.NAME.jenkins] in deploy.toml") from None
    except jenkins.JenkinsException as exc:
        text = str(exc).splitlines()[0][:200]
        raise JenkinsError(f"{action}: {text}", resource=f"job {job}",
                           fix="check the Jenkins user's permissions and $" + TOKEN_ENV) from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise JenkinsError(f"{action}: Jenkins is unreachable ({type(exc).__name__})",
                           resource=f"job {job}",
                           fix="check jenkins.url in deploy.toml and that Jenkins is up") from None


def trigger(server: Any, job: str, parameters: dict[str, str]) -> int:
    """Queue a parameterized build; returns the queue item number."""
    return _wrap("trigger", job, lambda: server.build_job(job, parameters=parameters))


def follow(server: Any, job: str, queue_item: int, *, timeout: float,
           on_started: Callable[[Build], None] | None = None,
           say: Callable[[str], None] | None = None, every: float = 30.0,
           poll: float = 0.5) -> Build:
    """Wait for the queue item to start and the build to finish; return its result."""
    build = wait_started(server, job, queue_item, timeout=timeout, say=say, poll=poll)
    if on_started:
        on_started(build)
    return wait_finished(server, build, timeout=timeout, say=say, every=every, poll=poll)


def wait_started(server: Any, job: str, queue_item: int, *, timeout: float,
                 say: Callable[[str], None] | None = None, poll: float = 0.5) -> Build:
    """Wait for the queue item to become a build; `say` hears why it waits, when that
    changes."""
    say = say or (lambda text: None)
    last: dict[str, Any] = {"why": None}

    def started() -> dict[str, Any] | None:
        item = _wrap("read queue item", job, lambda: server.get_queue_item(queue_item))
        if item.get("cancelled"):
            raise JenkinsError("the queued build was cancelled", resource=f"job {job}",
                               fix="see why in Jenkins' build queue, then run the job again")
        if not item.get("executable") and item.get("why") != last["why"]:
            last["why"] = item.get("why")
            say(f"  {job}: queued (item {queue_item}): {last['why'] or 'waiting'}")
        return item.get("executable") or None

    executable = waits.until(started, timeout=timeout, what="the build to leave the queue",
                             resource=f"job {job} queue item {queue_item}",
                             fix="check Jenkins has a free executor for this job",
                             first=poll, longest=max(poll, 5.0))
    return Build(job, queue_item, int(executable["number"]), executable.get("url"), None)


def wait_finished(server: Any, build: Build, *, timeout: float,
                  say: Callable[[str], None] | None = None, every: float = 30.0,
                  poll: float = 0.5) -> Build:
    """Wait for a started build to finish; `say` hears, every `every` seconds, that it is
    still running: a long wait never looks like a hang."""
    say = say or (lambda text: None)
    job, number = build.job, build.number
    began = time.monotonic()
    last = {"said": began}

    def finished() -> dict[str, Any] | None:
        info = _wrap("read build", job, lambda: server.get_build_info(job, number))
        if not info.get("result") and time.monotonic() - last["said"] >= every:
            last["said"] = time.monotonic()
            say(f"  {job} #{number}: still running after {last['said'] - began:.0f}s")
        return info if not info.get("building") and info.get("result") else None

    info = waits.until(finished, timeout=timeout, what="the build to finish",
                       resource=f"job {job} build {number}",
                       fix=f"open {build.url or 'the build'} to see where it is stuck",
                       first=poll, longest=max(poll, 5.0))
    return Build(job, build.queue_item, number, info.get("url", build.url), info["result"])


def succeeded(build: Build) -> Build:
    """The build, unless it did not succeed."""
    if build.result != "SUCCESS":
        raise JenkinsError(f"build #{build.number} finished {build.result}",
                           resource=f"job {build.job}",
                           fix=f"read {build.console_url or 'its console'} for the failure")
    return build


def run_job(server: Any, job: str, parameters: dict[str, str], *, timeout: float,
            on_started: Callable[[Build], None] | None = None,
            say: Callable[[str], None] | None = None) -> Build:
    """Trigger, follow, and raise unless the build succeeded."""
    item = trigger(server, job, parameters)
    return succeeded(follow(server, job, item, timeout=timeout, on_started=on_started,
                            say=say))


def notice_of(env: Environment, run: RunState) -> Notice | None:
    """A hotfix's notice as the record job takes it, made from the run's facts and this
    environment's config, never from a notice kept in a state file (whoever could write
    one would choose the job the deploy bot's token builds, and its parameters). None
    for a run of another environment, or one with no release."""
    if run.env != env.name or run.facts.release is None:
        return None
    hosts = [h.instance_id for b in run.facts.batches or [] for h in b
             if h.instance_id not in run.facts.failed_hosts]
    return Notice(job=env.jenkins.record_job, parameters={
        "ENV": env.name, "RELEASE": run.facts.release.version, "RUN_ID": run.run_id,
        "HOSTS": " ".join(hosts)})


def send_notice(server: Any, env: Environment, run: RunState) -> Notice | None:
    """Queue the run's notice (the hotfix record job), made afresh; keep it in the run as
    sent, with its queue item. None when the run has none to send."""
    notice = notice_of(env, run)
    if notice is None:
        return None
    notice.queue_item = trigger(server, notice.job, notice.parameters)
    notice.sent = True
    run.facts.notice = notice
    return notice


# -- jobs as code -------------------------------------------------------------------------


def _canonical(xml: str) -> str:
    """What a config.xml means, not how it is written: Jenkins stores a job's config its
    own way (an XML 1.1 header, plugin versions on elements, its own indentation)."""
    import xml.etree.ElementTree as ET

    text = xml.strip()
    if text.startswith("<?xml"):
        text = text.split("?>", 1)[1]
    try:
        root = ET.fromstring(text)
    except ET.ParseError:
        return text  # not ours to read: differs, so setup rewrites it
    for el in root.iter():
        el.attrib.pop("plugin", None)
    return ET.canonicalize(ET.tostring(root, encoding="unicode"), strip_text=True)


def setup(server: Any, jobs: dict[str, str]) -> dict[str, str]:
    """Create or update each job so its config is the rendered one; report what changed.

    Idempotent: a job whose config already means the same is left alone ("unchanged").
    """
    out: dict[str, str] = {}
    for name, xml in jobs.items():
        exists = _wrap("look up", name, partial(server.job_exists, name))
        if not exists:
            _wrap("create", name, partial(server.create_job, name, xml))
            out[name] = "created"
            continue
        current = _wrap("read config", name, partial(server.get_job_config, name))
        if _canonical(current) == _canonical(xml):
            out[name] = "unchanged"
        else:
            _wrap("update", name, partial(server.reconfig_job, name, xml))
            out[name] = "updated"
    return out
