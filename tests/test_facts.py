"""A run's facts have a declared shape: known keys, typed; a team's steps keep theirs
in `team`."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from deploylib.facts import Facts, HostRef, Release


def test_unknown_keys_and_wrong_types_are_refused():
    with pytest.raises(ValidationError):
        Facts.model_validate({"installed": {"i-00000001": "ok"}})  # no such fact
    with pytest.raises(ValidationError):
        Facts.model_validate({"batches": [["i-00000001"]]})  # hosts are region + id
    facts = Facts()
    with pytest.raises(ValidationError):
        facts.release = {"version": "1"}  # type: ignore[assignment]


def test_facts_round_trip_through_json():
    facts = Facts(release=Release(version="1.2.3", sha256="a" * 64, bucket="artifacts",
                                  key="releases/lab/1.2.3.tar.gz"),
                  batches=[[HostRef(region="us-east-1", instance_id="i-00000001")]],
                  team={"announced": ["1.2.3"]})
    again = Facts.model_validate_json(facts.model_dump_json())
    assert again == facts and again.batches[0][0].instance_id == "i-00000001"


def test_nothing_cached_or_written_only_is_kept():
    # target groups are resolved per process; what no stage reads is not kept
    assert not {"target_groups", "installed", "rolled_back_from",
                "batches_done"} & set(Facts.model_fields)
