"""deploylib.live: what is live, read back — and held to its shapes, since whoever may
write the record parameter could otherwise steer every host."""

from __future__ import annotations

import json

import pytest

from deploylib import config, live
from deploylib.errors import StateError
from tests.conftest import write_config

GOOD = {"release": "1.0.1", "sha256": "a" * 64, "version_id": "3HL4kqtJlcpXroDTDmJ.rmSpXd3d",
        "images": {"us-east-1": "ami-0000000a"},
        "procedure": "in-place", "run_id": "20261127T120000-abc123",
        "recorded_at": "2026-11-27T12:00:00Z", "fence": 7,
        "ledger": {"us-east-1": {"image": "ami-0000000a", "baked": "1.0.0", "dropped": 0,
                                 "layers": [{"release": "1.0.1", "how": "in-place",
                                             "since": "2026-11-27T12:00:00Z"}]}},
        "previous": {"release": "1.0.0", "sha256": "b" * 64, "images": {},
                     "procedure": "immutable", "run_id": "20261126T120000-abc123"}}


@pytest.fixture
def env(tmp_path):
    return config.load(write_config(tmp_path)).environment("lab")


def _write(aws_clients, env, record) -> None:
    aws_clients.ssm().put_parameter(Name=env.record_parameter, Value=json.dumps(record),
                                    Type="String", Overwrite=True)


def test_a_good_record_reads_back_whole(aws_clients, env):
    _write(aws_clients, env, GOOD)
    assert live.record(aws_clients, env) == GOOD


@pytest.mark.parametrize("change", [
    {"release": "1.0\ntouch /tmp/x #"},
    {"sha256": "not hex"},
    {"images": {"us-east-1": "ami-1; reboot"}},
    {"procedure": "$(id)"},
    {"run_id": "../../etc"},
    {"previous": {**GOOD["previous"], "release": "`reboot`"}},
    {"previous": {**GOOD["previous"], "sha256": None}},  # a release without its digest
    {"version_id": "v1&x-id=PutObject"},  # into the presigned URL
    {"fence": -1},
    {"ledger": {"us-east-1": {"image": "ami-0000000a", "layers": [
        {"release": "1.0.1", "how": "$(id)"}]}}},
    {"previous": {**GOOD["previous"], "version_id": "../v1"}},
])
def test_a_hostile_record_stops_the_read_in_one_line(aws_clients, env, change):
    _write(aws_clients, env, {**GOOD, **change})
    with pytest.raises(StateError) as refused:
        live.record(aws_clients, env)
    line = refused.value.line()
    assert "\n" not in line and "get-parameter-history" in line and env.record_parameter in line
