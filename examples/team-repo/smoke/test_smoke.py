"""The greeter's smoke tests, run by deploylib's smoke-test stage against every candidate
(DEPLOY_SMOKE_TARGETS: JSON of instance_id, address, url; DEPLOY_SMOKE_VERSION)."""

import json
import os
import urllib.error
import urllib.request

import pytest

TARGETS = json.loads(os.environ.get("DEPLOY_SMOKE_TARGETS", "[]"))
VERSION = os.environ.get("DEPLOY_SMOKE_VERSION", "")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.mark.parametrize("target", TARGETS, ids=[t["instance_id"] for t in TARGETS])
def test_it_greets_with_its_release(target):
    with OPENER.open(target["url"] + "/", timeout=5) as resp:
        assert resp.read().decode() == f"hello from release {VERSION}\n"


@pytest.mark.parametrize("target", TARGETS, ids=[t["instance_id"] for t in TARGETS])
def test_an_unknown_path_is_a_404(target):
    with pytest.raises(urllib.error.HTTPError) as err:
        OPENER.open(target["url"] + "/nowhere", timeout=5)
    assert err.value.code == 404
