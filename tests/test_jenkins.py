"""Triggering and following Jenkins builds, against a server speaking Jenkins' REST API."""

from __future__ import annotations

import json

import pytest

from deploylib import jenkins, render
from deploylib.config import JenkinsConfig
from deploylib.errors import JenkinsError, WaitTimeout

PIPELINE = [p["name"] for p in render.PIPELINE_PARAMETERS]


def client(fake, monkeypatch, token: str = "api-token-secret"):
    fake.users["deploy-bot"] = "api-token-secret"
    monkeypatch.setenv(jenkins.TOKEN_ENV, token)
    return jenkins.connect(JenkinsConfig(url=fake.url.rstrip("/"), user="deploy-bot"))


def test_a_parameterized_build_is_triggered_followed_and_reported(fake_jenkins, monkeypatch):
    fake_jenkins.add_job("test-and-promote", polls_in_queue=2, polls_building=3,
                         parameters=PIPELINE)
    started = []
    build = jenkins.run_job(client(fake_jenkins, monkeypatch), "test-and-promote",
                            {"VERSION": "1.2.3", "BAKE_RUN": "20261127T120000-abc123"},
                            timeout=30, on_started=started.append)
    assert build.result == "SUCCESS" and build.number == 1
    assert build.url.endswith("/job/test-and-promote/1/")
    assert build.console_url.endswith("/job/test-and-promote/1/console")
    assert [b.number for b in started] == [1]  # reported as soon as it left the queue
    job = fake_jenkins.jobs["test-and-promote"]
    assert job.builds[0]["params"] == {"VERSION": "1.2.3", "BAKE_RUN": "20261127T120000-abc123"}
    # the crumb was fetched and sent, so the POST was not refused
    assert ("GET", "/crumbIssuer/api/json") in fake_jenkins.requests


def test_a_failed_build_fails_with_its_console_url(fake_jenkins, monkeypatch):
    fake_jenkins.add_job("test-and-promote", result="FAILURE")
    with pytest.raises(JenkinsError) as info:
        jenkins.run_job(client(fake_jenkins, monkeypatch), "test-and-promote", {}, timeout=30)
    assert "finished FAILURE" in info.value.line()
    assert "/job/test-and-promote/1/console" in info.value.line()


def test_an_unknown_job_names_the_fix(fake_jenkins, monkeypatch):
    with pytest.raises(JenkinsError) as info:
        jenkins.trigger(client(fake_jenkins, monkeypatch), "no-such-job", {"A": "1"})
    assert "does not exist" in info.value.line() and "deploy.toml" in info.value.line()


def test_a_cancelled_queue_item_is_an_error(fake_jenkins, monkeypatch):
    fake_jenkins.add_job("test-and-promote", cancel=True)
    with pytest.raises(JenkinsError, match="cancelled"):
        jenkins.run_job(client(fake_jenkins, monkeypatch), "test-and-promote", {}, timeout=30)


def test_a_build_that_never_leaves_the_queue_hits_the_deadline(fake_jenkins, monkeypatch):
    fake_jenkins.add_job("test-and-promote", polls_in_queue=10_000)
    server = client(fake_jenkins, monkeypatch)
    item = jenkins.trigger(server, "test-and-promote", {})
    with pytest.raises(WaitTimeout, match="leave the queue"):
        jenkins.follow(server, "test-and-promote", item, timeout=0.5, poll=0.05)


def test_a_post_without_the_crumb_is_refused_by_the_server(fake_jenkins):
    import urllib.error
    import urllib.request

    fake_jenkins.add_job("x")
    req = urllib.request.Request(f"{fake_jenkins.url}job/x/buildWithParameters", method="POST",
                                 data=b"")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    assert info.value.code == 403


def test_jenkins_unreachable_is_one_clear_line(monkeypatch):
    server = jenkins.connect(JenkinsConfig(url="http://127.0.0.1:9"), timeout=2)
    with pytest.raises(JenkinsError) as info:
        jenkins.trigger(server, "test-and-promote", {})
    assert "unreachable" in info.value.line() and "jenkins.url" in info.value.line()


def test_the_user_authenticates_with_the_token_from_the_environment(fake_jenkins, monkeypatch):
    import base64

    fake_jenkins.add_job("record-hotfix")
    jenkins.trigger(client(fake_jenkins, monkeypatch), "record-hotfix", {"VERSION": "1"})
    expected = "Basic " + base64.b64encode(b"deploy-bot:api-token-secret").decode()
    assert fake_jenkins.authorizations == {expected}
    assert "token" not in JenkinsConfig.model_fields  # never in deploy.toml


def jenkins_env(fake_jenkins, tmp_path):
    from deploylib import config as cfgmod
    from tests.conftest import write_config

    path = write_config(tmp_path, jenkins={"url": fake_jenkins.url.rstrip("/"), "user": "bot",
                                           "repository": "https://git.example.com/deploy.git"})
    return cfgmod.load(path).environment("lab"), path


def test_setup_creates_the_jobs_then_changes_nothing(fake_jenkins, tmp_path, monkeypatch):
    from deploylib import render

    monkeypatch.setenv("JENKINS_API_TOKEN", "t0ken")
    fake_jenkins.users["bot"] = "t0ken"
    env, _ = jenkins_env(fake_jenkins, tmp_path)
    server = jenkins.connect(env.jenkins)
    jobs = render.jenkins_jobs(env, ["lab"])
    assert set(jobs) == {"deploy", "test-and-promote", "record-hotfix"}
    assert jenkins.setup(server, jobs) == dict.fromkeys(jobs, "created")
    # Jenkins stored them its own way (header, plugin versions): still no change
    assert "plugin=" in fake_jenkins.jobs["deploy"].config
    assert jenkins.setup(server, jobs) == dict.fromkeys(jobs, "unchanged")
    assert all(j.updates == 0 for j in fake_jenkins.jobs.values())
    # someone edited a job by hand: setup puts the template's version back
    fake_jenkins.jobs["deploy"].config = fake_jenkins.jobs["deploy"].config.replace(
        "<numToKeep>200</numToKeep>", "<numToKeep>5</numToKeep>")
    assert jenkins.setup(server, jobs)["deploy"] == "updated"
    assert "<numToKeep>200</numToKeep>" in fake_jenkins.jobs["deploy"].config


def test_the_jobs_are_parameterized_pipelines_without_concurrent_builds(fake_jenkins, tmp_path):
    import xml.etree.ElementTree as ET

    from deploylib import render

    env, _ = jenkins_env(fake_jenkins, tmp_path)
    jobs = render.jenkins_jobs(env, ["staging", "production"])
    deploy = ET.fromstring(jobs["deploy"].split("?>", 1)[1])
    assert deploy.find(".//org.jenkinsci.plugins.workflow.job.properties."
                       "DisableConcurrentBuildsJobProperty") is not None
    assert deploy.findtext(".//scriptPath") == "Jenkinsfile"
    assert deploy.findtext(".//hudson.plugins.git.UserRemoteConfig/url") == \
        "https://git.example.com/deploy.git"
    names = [e.text for e in deploy.iter("name")]
    assert {"MODE", "VERSION", "BAKE_RUN", "KEEP_ON_ERROR"} <= set(names)
    # ENV: deploy.toml's environments, after an empty first choice (no default one)
    env_choice = next(p for p in deploy.iter("hudson.model.ChoiceParameterDefinition")
                      if p.findtext("name") == "ENV")
    assert [s.text or "" for s in env_choice.iter("string")] == ["", "staging", "production"]
    record = ET.fromstring(jobs["record-hotfix"].split("?>", 1)[1])
    assert "currentBuild.description" in record.findtext(".//script")


def test_jenkins_setup_twice_from_the_command_line_reports_no_change(fake_jenkins, tmp_path):
    from tests.conftest import Cli

    _, path = jenkins_env(fake_jenkins, tmp_path)
    cli = Cli(config=path, lab_dir=tmp_path / "no-lab")
    first = cli("jenkins.setup")
    assert first.stdout.split() == ["created", "deploy", "created", "test-and-promote",
                                    "created", "record-hotfix"]
    second = cli("jenkins.setup")
    assert "no change" in second.stdout
    assert json.loads(cli("jenkins.setup --json").stdout) == {
        "deploy": "unchanged", "test-and-promote": "unchanged", "record-hotfix": "unchanged"}


def test_jenkins_setup_without_a_repository_is_bad_input(fake_jenkins, tmp_path):
    from tests.conftest import Cli, write_config

    path = write_config(tmp_path, jenkins={"url": fake_jenkins.url.rstrip("/")})
    proc = Cli(config=path, lab_dir=tmp_path / "no-lab")("jenkins.setup", check=False)
    assert proc.returncode == 2 and "jenkins.repository" in proc.stderr
    assert fake_jenkins.requests == []  # refused before talking to Jenkins


def test_following_says_why_a_build_waits_and_that_it_still_runs(fake_jenkins, monkeypatch):
    fake_jenkins.add_job("slow", polls_in_queue=2, polls_building=4)
    server = client(fake_jenkins, monkeypatch)
    heard: list[str] = []
    build = jenkins.run_job(server, "slow", {"X": "1"}, timeout=30, say=heard.append)
    assert build.result == "SUCCESS"
    assert heard[0].startswith("  slow: queued (item") and "Waiting for next" in heard[0]
    assert len([h for h in heard if "queued" in h]) == 1  # said once, not per poll


def test_the_fake_refuses_what_jenkins_refuses(fake_jenkins, monkeypatch):
    """So the tool's handling of each is tested: unknown credentials, a parameterized job
    built without parameters, parameters the job does not define (dropped)."""
    job = fake_jenkins.add_job("deploy", parameters=PIPELINE)
    with pytest.raises(JenkinsError) as info:
        jenkins.trigger(client(fake_jenkins, monkeypatch, token="wrong"), "deploy", {"A": "1"})
    assert "JENKINS_API_TOKEN" in info.value.line() and "wrong" not in info.value.line()
    server = client(fake_jenkins, monkeypatch)
    with pytest.raises(JenkinsError):
        jenkins.trigger(server, "deploy", {})  # python-jenkins posts /build: 400
    jenkins.trigger(server, "deploy", {"VERSION": "1", "IMAGES": "{}"})
    assert job.dropped == ["IMAGES"]


def test_a_kept_notice_is_sent_as_the_run_makes_it_not_as_the_state_file_says(
        fake_jenkins, monkeypatch, tmp_path):
    """A notice kept in a state file (Jenkins was down) is made afresh when it is sent:
    the record job of this environment's config, the run's own release, id and hosts —
    whatever job and parameters someone wrote into the file."""
    from deploylib import config
    from deploylib.facts import HostRef, Notice, Release
    from deploylib.state import RunState
    from tests.conftest import write_config

    fake_jenkins.add_job("record-hotfix", parameters=[p["name"] for p in
                                                      render.RECORD_PARAMETERS])
    fake_jenkins.add_job("deploy", parameters=PIPELINE)
    env = config.load(write_config(tmp_path)).environment("lab")
    run = RunState.create(tmp_path / "runs", env="lab", mode="in-place", version="1.2.3",
                          artifact="")
    run.facts.release = Release(version="1.2.3", sha256="0" * 64, bucket="deploylab-artifacts",
                                key="releases/lab/1.2.3.tar.gz")
    run.facts.batches = [[HostRef(region="us-east-1", instance_id="i-0000000a")]]
    run.facts.notice = Notice(job="deploy", parameters={"MODE": "immutable", "ENV": "prod",
                                                        "BAKE_RUN": "20261127T120000-abc123"})
    notice = jenkins.send_notice(client(fake_jenkins, monkeypatch), env, run)
    assert notice.job == "record-hotfix" and run.facts.notice == notice and notice.sent
    assert not fake_jenkins.jobs["deploy"].builds and not any(
        item["job"].name == "deploy" for item in fake_jenkins.queue.values())
    (sent,) = [item["params"] for item in fake_jenkins.queue.values()]
    assert sent == {"ENV": "lab", "RELEASE": "1.2.3", "RUN_ID": run.run_id,
                    "HOSTS": "i-0000000a"}
    other = RunState.create(tmp_path / "runs", env="staging", mode="in-place",
                            version="1.2.3", artifact="")
    other.facts.release = run.facts.release
    assert jenkins.send_notice(client(fake_jenkins, monkeypatch), env, other) is None
