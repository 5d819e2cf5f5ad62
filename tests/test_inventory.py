"""The status table."""

from deploylib import inventory


def row(iid, baked, running):
    return {"instance_id": iid, "region": "us-east-1", "address": "127.1.0.5", "state": "running",
            "target_health": "healthy", "image_id": "ami-1", "baked_release": baked,
            "running_release": running, "drift": bool(running and running != baked)}


def test_the_table_flags_drift_and_explains_it():
    report = {"environment": "lab", "errors": {"eu-west-1": "AccessDenied"},
              "record": {"release": "1.0.1", "procedure": "in-place", "run_id": "r1"},
              "instances": [row("i-1", "1.0.0", "1.0.1"), row("i-2", "1.0.1", "1.0.1"),
                            row("i-3", "1.0.1", None)]}
    text = inventory.table(report)
    lines = text.splitlines()
    assert lines[0] == "environment lab: live release 1.0.1 via in-place (run r1)"
    assert lines[1].split() == ["instance", "region", "address", "image", "baked", "running",
                                "drift"]
    assert lines[2].endswith("DRIFT") and not lines[3].endswith("DRIFT")
    assert lines[4].split()[5] == "?"  # not answering: unknown, not drift
    assert "1 host(s) run a release their image does not carry." in text
    assert "no recorded image carries it; a replacement would lose it" in text
    report["recorded_image_releases"] = {"us-east-1": "1.0.1"}
    assert "the recorded image of their region carries it" in inventory.table(report)
    assert "eu-west-1: could not be read: AccessDenied" in text


def test_nothing_recorded_yet():
    text = inventory.table({"environment": "x", "record": None, "instances": [], "errors": {}})
    assert "(none recorded)" in text


def test_the_table_says_whether_every_regions_image_carries_the_same_release_bytes():
    report = {"environment": "lab", "errors": {}, "instances": [],
              "record": {"release": "1.1.5", "procedure": "immutable", "run_id": "r2"},
              "recorded_image_digests": {"us-east-1": "ab" * 32, "eu-west-1": "ab" * 32}}
    assert "The recorded images of eu-west-1, us-east-1 carry the same release bytes " \
        "(sha256 abababababab…)." in inventory.table(report)
    report["recorded_image_digests"]["eu-west-1"] = "cd" * 32
    assert "carry different release bytes: eu-west-1 cdcdcdcdcdcd…, us-east-1 " \
        "abababababab…" in inventory.table(report)


def test_how_a_host_got_its_release_and_since_when():
    import datetime as dt

    from deploylib.inventory import how

    utc = dt.UTC
    before = dt.datetime(2026, 12, 2, 5, 0, 10, tzinfo=utc)
    after = dt.datetime(2026, 12, 2, 5, 0, 50, tzinfo=utc)
    recorded = "2026-12-02T05:00:30Z"
    assert how("1.0.0", "1.0.0", before, recorded) == ("baked", "2026-12-02 05:00")
    # launched before the hotfix was recorded: a rollout (or catch-up) put it there
    assert how("1.0.1", "1.0.0", before, recorded) == ("in-place", "2026-12-02 05:00")
    # launched after: its boot read the hotfix from the record
    assert how("1.0.1", "1.0.0", after, recorded) == ("boot", "2026-12-02 05:00")
    assert how(None, "1.0.0", after, recorded) == ("-", "-")
    # a rebake-light's candidate: launched (before the record) by the run that recorded it
    assert how("1.0.1", "1.0.0", before, recorded, launched_by_recording_run=True) == \
        ("boot", "2026-12-02 05:00")
    # a hotfix recorded later, on it: in place again
    assert how("1.0.2", "1.0.0", before, recorded) == ("in-place", "2026-12-02 05:00")


def test_the_table_shows_each_regions_ledger():
    report = {"environment": "lab", "errors": {}, "instances": [row("i-1", "1.0.0", "1.0.1")],
              "record": {"release": "1.0.1", "procedure": "in-place", "run_id": "r1",
                         "ledger": {"us-east-1": {
                             "group": "app-lab-v002", "image": "ami-0000000a",
                             "baked": "1.0.0", "layers": [{"release": "1.0.1", "how": "in-place",
                                                           "since": "2026-12-02T10:00:00Z"}]}}}}
    assert "us-east-1: app-lab-v002 launches from ami-0000000a (baked 1.0.0); on top: 1.0.1 " \
        "in-place since 2026-12-02 10:00" in inventory.table(report).splitlines()



def test_with_server_groups_drift_says_a_replacement_boots_into_the_release():
    rows = [{**row("i-1", "1.0.0", "1.0.1"), "server_group": "app-lab-v001", "how": "in-place",
             "since": "2026-12-02 10:00"}]
    text = inventory.table({"environment": "lab", "errors": {}, "instances": rows,
                            "record": {"release": "1.0.1", "procedure": "in-place",
                                       "run_id": "r1"}})
    assert "a new or replacement instance installs the recorded release at boot" in text
    assert "a replacement would lose it" not in text


def test_the_table_gives_the_last_runs_window_verdicts():
    report = {"environment": "lab", "record": None, "instances": [], "errors": {},
              "last_run": {"run_id": "r9", "mode": "in-place", "version": "1.0.2", "windows": [
                  {"stage": "rollout/1/verify", "passed": True, "why": "us-east-1: 5xx 0 of 90"},
                  {"stage": "rollout/2/verify", "passed": False, "why": "alarm app-5xx"}]}}
    lines = inventory.table(report).splitlines()
    assert lines[-2:] == [
        "window rollout/1/verify of run r9 (in-place 1.0.2): passed: us-east-1: 5xx 0 of 90",
        "window rollout/2/verify of run r9 (in-place 1.0.2): FAILED: alarm app-5xx"]
