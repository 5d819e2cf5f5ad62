"""deploylib.smoke: the team's smoke tests run as pytest, against the targets, and without
the deploy's secrets."""

from __future__ import annotations

from deploylib import smoke

PROBE = '''
import json, os

def test_the_targets_are_given():
    assert json.loads(os.environ["DEPLOY_SMOKE_TARGETS"])[0]["instance_id"] == "i-0000000a"

def test_no_secret_of_the_deploy_is_in_reach():
    leaked = [k for k in os.environ if k.startswith("AWS_") or k == "JENKINS_API_TOKEN"]
    assert not leaked, leaked
'''


def test_smoke_tests_run_without_the_deploys_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-for-smoke-tests")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "not-for-smoke-tests")
    monkeypatch.setenv("JENKINS_API_TOKEN", "not-for-smoke-tests")
    tests = tmp_path / "smoke"
    tests.mkdir()
    (tests / "test_probe.py").write_text(PROBE)
    outcome = smoke.run(str(tests), [{"instance_id": "i-0000000a", "url": "http://x"}],
                        version="1.0", health_path="/health", report=tmp_path / "r.xml",
                        timeout=120)
    assert outcome.passed, outcome.summary
    assert "2 passed" in outcome.summary
