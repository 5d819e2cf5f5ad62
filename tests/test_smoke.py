"""deploylib.smoke: the team's smoke tests run as pytest, against the targets, and without
the deploy's secrets."""

from __future__ import annotations

import json
import os

import pytest

from deploylib import config, smoke
from deploylib.errors import ConfigError

PROBE = '''
import json, os
from pathlib import Path

def test_the_targets_are_given():
    assert json.loads(os.environ["DEPLOY_SMOKE_TARGETS"])[0]["instance_id"] == "i-0000000a"

def test_only_what_is_listed_reaches_it():  # (and what pytest sets itself)
    seen = sorted(k for k in os.environ if not k.startswith("PYTEST_"))
    assert seen == sorted(json.loads(os.environ["EXPECTED"]) + ["EXPECTED"])

def test_its_home_is_its_own_and_empty():
    home = Path(os.environ["HOME"])
    assert home != Path(os.environ["DEPLOYS_HOME"]) and list(home.iterdir()) == []
'''


def test_smoke_tests_get_a_short_list_of_variables_and_a_home_of_their_own(
        tmp_path, monkeypatch):
    """A smoke test is the team's code: never the deploy's credentials, SSH agent (a key
    to every host) or Jenkins token; nothing the tool does not name; not its HOME (the
    deploy's SSH key, AWS config)."""
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "JENKINS_API_TOKEN", "SSH_AUTH_SOCK", "SOMETHING_ELSE", "DEPLOY_CONFIG"):
        monkeypatch.setenv(name, "not-for-smoke-tests")
    monkeypatch.setenv("TEAM_SETTING", "for-the-tests")
    monkeypatch.setenv("LANG", "C.UTF-8")
    expected = ["PATH", "LANG", "HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "TEAM_SETTING",
                "DEPLOYS_HOME", "DEPLOY_SMOKE_TARGETS", "DEPLOY_SMOKE_VERSION",
                "DEPLOY_SMOKE_HEALTH"] + [k for k in os.environ if smoke.KEPT.match(k)]
    monkeypatch.setenv("EXPECTED", json.dumps(sorted(set(expected))))
    monkeypatch.setenv("DEPLOYS_HOME", os.environ.get("HOME", "/"))
    tests = tmp_path / "smoke"
    tests.mkdir()
    (tests / "test_probe.py").write_text(PROBE)
    outcome = smoke.run(str(tests), [{"instance_id": "i-0000000a", "url": "http://x"}],
                        version="1.0", health_path="/health", report=tmp_path / "r.xml",
                        timeout=120, extra_env=["TEAM_SETTING", "EXPECTED", "DEPLOYS_HOME",
                                                "SSH_AUTH_SOCK"])
    assert outcome.passed, outcome.summary
    assert "3 passed" in outcome.summary


@pytest.mark.parametrize("name", ["AWS_SECRET_ACCESS_KEY", "SSH_AUTH_SOCK",
                                  "JENKINS_API_TOKEN", "DEPLOY_CONFIG"])
def test_smoke_env_refuses_what_is_the_deploys_own(tmp_path, name):
    from tests.conftest import write_config

    path = write_config(tmp_path, smoke_env=[name])
    with pytest.raises(ConfigError, match=f"{name} is the deploy's own"):
        config.load(path)
