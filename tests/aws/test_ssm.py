"""The record of what is live, against moto's server over real HTTP."""

from __future__ import annotations

import pytest

from deploylib import aws
from deploylib.errors import CloudError


def test_the_live_record_round_trips(aws_clients):
    ssm = aws_clients.ssm()
    assert aws.ssm.read_record(ssm, "/deploylib/test/live") is None
    aws.ssm.write_record(ssm, "/deploylib/test/live",
                         {"release": "1.0.0", "images": {"r": "ami-1"}})
    assert aws.ssm.read_record(ssm, "/deploylib/test/live")["images"] == {"r": "ami-1"}
    ssm.put_parameter(Name="/deploylib/broken/live", Value="not json", Type="String")
    with pytest.raises(CloudError, match="not JSON"):
        aws.ssm.read_record(ssm, "/deploylib/broken/live")
