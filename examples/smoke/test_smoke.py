"""The sample app's smoke tests, run by the smoke-test stage against every candidate.

The stage passes the candidates in DEPLOY_SMOKE_TARGETS (JSON: instance_id, address,
url) and the release in DEPLOY_SMOKE_VERSION; pytest's --junitxml report goes to Jenkins.
"""

import json
import os
import urllib.error
import urllib.request

import pytest

TARGETS = json.loads(os.environ.get("DEPLOY_SMOKE_TARGETS", "[]"))
VERSION = os.environ.get("DEPLOY_SMOKE_VERSION", "")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.mark.parametrize("target", TARGETS, ids=[t["instance_id"] for t in TARGETS])
def test_the_home_page_greets_with_the_release(target):
    with OPENER.open(target["url"] + "/", timeout=5) as resp:
        assert resp.status == 200
        assert f"release {VERSION}" in resp.read().decode()


@pytest.mark.parametrize("target", TARGETS, ids=[t["instance_id"] for t in TARGETS])
def test_an_unknown_path_is_a_404_not_a_crash(target):
    with pytest.raises(urllib.error.HTTPError) as err:
        OPENER.open(target["url"] + "/no-such-page", timeout=5)
    assert err.value.code == 404
