"""The record of what is live, against moto's server over real HTTP."""

from __future__ import annotations

import pytest

from deploylib import aws
from deploylib.errors import CloudError, InputError


def test_the_live_record_round_trips(aws_clients):
    ssm = aws_clients.ssm()
    assert aws.ssm.read_record(ssm, "/deploylib/test/live") is None
    aws.ssm.write_record(ssm, "/deploylib/test/live",
                         {"release": "1.0.0", "images": {"r": "ami-1"}})
    assert aws.ssm.read_record(ssm, "/deploylib/test/live")["images"] == {"r": "ami-1"}
    ssm.put_parameter(Name="/deploylib/broken/live", Value="not json", Type="String")
    with pytest.raises(CloudError, match="not the tool's JSON"):
        aws.ssm.read_record(ssm, "/deploylib/broken/live")


def _record(regions: int) -> dict:
    """A record as `record` writes it for an environment of `regions` regions, each with
    its server group, image, the previous release's and a drift ledger of three layers."""
    import os

    names = [f"xx-region-{n}" for n in range(regions)]
    ami = {r: f"ami-{os.urandom(9).hex()[:17]}" for r in names}
    old = {r: f"ami-{os.urandom(9).hex()[:17]}" for r in names}
    groups = {r: f"checkout-api-production-v{120 + n:03d}" for n, r in enumerate(names)}
    layer = [{"how": how, "release": f"4.12.{n}", "since": f"2026-12-0{n}T10:2{n}:00Z"}
             for n, how in enumerate(("in-place", "boot", "in-place"), start=3)]
    return {
        "release": "4.12.5", "sha256": "ab" * 32, "version_id": "3HL4kqtJlcpXroDTDmJ",
        "procedure": "in-place", "run_id": "20261207T101500-4f2a9c", "fence": 41,
        "recorded_at": "2026-12-07T10:25:00Z", "images": ami, "server_groups": groups,
        "previous": {"release": "4.12.4", "sha256": "cd" * 32, "images": old,
                     "server_groups": groups, "procedure": "in-place",
                     "run_id": "20261206T101500-1b2c3d"},
        "ledger": {r: {"group": groups[r], "image": ami[r], "baked": "4.12.0",
                       "layers": layer, "dropped": 2} for r in names},
        "foundations": {r: {"image": old[r], "base": ami[r]} for r in names}}


def test_parameter_store_refuses_a_value_past_its_tiers_limit_as_aws_does(aws_clients):
    ssm = aws_clients.ssm()
    with pytest.raises(Exception, match="Standard tier parameters support a maximum "
                                        "parameter value of 4096 characters"):
        ssm.put_parameter(Name="/deploylib/big", Value="x" * 4097, Type="String")
    ssm.put_parameter(Name="/deploylib/big", Value="x" * 4097, Type="String",
                      Tier="Intelligent-Tiering")  # made advanced: 8 KB
    with pytest.raises(Exception, match="Advanced tier parameters support a maximum"):
        ssm.put_parameter(Name="/deploylib/big", Value="x" * 8193, Type="String",
                          Overwrite=True)


def test_a_record_of_20_regions_stays_a_standard_parameter_packed(aws_clients):
    """As JSON it passes the 4,096 characters of a standard parameter at about 7 regions;
    packed, 20 regions fit, and it reads back the same."""
    ssm = aws_clients.ssm()
    import json

    seven, twenty = _record(7), _record(20)
    assert len(json.dumps(seven, separators=(",", ":"))) > aws.ssm.STANDARD_LIMIT
    for record in (_record(2), seven, twenty):
        aws.ssm.write_record(ssm, "/deploylib/wide/live", record)
        assert aws.ssm.read_record(ssm, "/deploylib/wide/live") == record
    value = ssm.get_parameter(Name="/deploylib/wide/live")["Parameter"]
    assert value["Value"].startswith(aws.ssm.PACKED)  # (and written as a standard one)
    assert len(value["Value"]) <= aws.ssm.STANDARD_LIMIT
    aws.ssm.write_record(ssm, "/deploylib/wide/live", _record(2))  # small: plain JSON again
    assert ssm.get_parameter(Name="/deploylib/wide/live")["Parameter"]["Value"].startswith("{")


def test_a_record_too_long_even_packed_is_refused_in_one_line_and_not_written(aws_clients):
    ssm = aws_clients.ssm()
    aws.ssm.write_record(ssm, "/deploylib/huge/live", _record(1))
    with pytest.raises(InputError, match=r"would be [\d,]+ characters packed \([\d,]+ as "
                                         r"JSON\), over SSM's 4,096"):
        aws.ssm.write_record(ssm, "/deploylib/huge/live", _record(80))
    assert len(aws.ssm.read_record(ssm, "/deploylib/huge/live")["images"]) == 1


def test_a_packed_value_that_is_not_a_record_is_refused():
    import base64
    import zlib

    bomb = aws.ssm.PACKED + base64.b64encode(zlib.compress(b"[" * (2 << 20))).decode()
    for value in (bomb, aws.ssm.PACKED + "not base64!", aws.ssm.PACKED + base64.b64encode(
            zlib.compress(b'["a list"]')).decode()):
        with pytest.raises(CloudError, match="not the tool's JSON"):
            aws.ssm.unpack(value)
