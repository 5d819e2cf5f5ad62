"""deploylib.lab.runcommand's rate controls as Systems Manager reads them (the agents and
the API are tested against a running lab: tests/lab/test_runcommand.py)."""

from __future__ import annotations

import pytest

from deploylib.lab.runcommand import Command, Invocation


def _command(targets: int) -> Command:
    command = Command(region="us-east-1", moto=None, requested=0.0)
    command.invocations = [Invocation(command, f"i-{n}", {"Status": "Pending"})
                           for n in range(targets)]
    return command


@pytest.mark.parametrize("value,targets,expected", [
    ("3", 10, 3), ("50%", 5, 2), ("10%", 5, 1), ("100%", 7, 7), ("", 4, 50), ("x", 4, 50)])
def test_a_limit_is_a_count_or_a_share_of_the_targets_at_least_one(value, targets, expected):
    assert _command(targets).limit(value, 50) == expected
