"""Bad input on the command line, against a running lab: refused with one line naming
the problem and the fix, exit 2, and nothing started — no instance, no run."""

from __future__ import annotations

import pytest

from tests.lab.checks import instances, runs

pytestmark = pytest.mark.lab


BAD_INPUTS = [
    # (arguments, words the one-line error must contain)
    ("deploy --mode sideways --version 1.2.3", ["unknown mode 'sideways'", "Fix:", "in-place"]),
    ("deploy --mode in-place --version '1.0;rm -rf /'", ["version", "not a valid", "Fix:"]),
    ("deploy --mode in-place --version '$(reboot)'", ["version", "Fix:"]),
    ("deploy --mode in-place --version ../../etc", ["version", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --artifact /nonexistent/app.tar.gz",
     ["does not exist", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --artifact tasks.py", ["not a gzip", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --env staging",
     ["unknown environment 'staging'", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --env 'Prod;ls'", ["environment name", "Fix:"]),
    ("step install-release --run not-a-run", ["run id", "Fix:"]),
    ("step install-release --run 20200101T000000-abcdef", ["no run", "Fix:"]),
    ("plan --mode bogus", ["unknown mode", "Fix:"]),
    ("deploy --version 1.2.3", ["--mode is required", "Fix:"]),
    ("hotfix", ["--version is required", "Fix:"]),
    ("step install-release", ["--run is required", "Fix:"]),
    ("resume", ["--run is required", "Fix:"]),
    ("lab.up --hosts 0", ["--hosts 0 is out of range", "Fix:"]),
    ("lab.up --hosts 251", ["--hosts 251 is out of range", "Fix:"]),
    ("deploy --mode IN-PLACE --version 1.2.3", ["unknown mode 'IN-PLACE'", "Fix:"]),
    ("deploy --mode in-place --version=.hidden", ["version", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --artifact examples", ["not a file", "Fix:"]),
    ("deploy --mode in-place --version 1.2.3 --config /nonexistent/deploy.toml",
     ["does not exist", "--config"]),
    ("rollback --env staging", ["unknown environment 'staging'", "Fix:"]),
    ("rollback --env 'a b'", ["environment name", "Fix:"]),
    ("status --env 'Prod;ls'", ["environment name", "Fix:"]),
    ("lock.break", ["--env is required", "Fix:"]),
    ("lock.status --env nope", ["unknown environment 'nope'", "Fix:"]),
    ("gc --older-than soon", ["--older-than 'soon' is not a number", "Fix:"]),
    ("gc --older-than -3", ["is not a number of hours", "Fix:"]),
    ("cleanup", ["--run is required", "Fix:"]),
    ("resume --run ../../etc/passwd", ["run id", "Fix:"]),
    ("start --run '../x'", ["run id '../x' is not valid", "Fix:"]),
    ("start --run 20261127T120000-abc123 --mode in-place", ["--mode with --run", "Fix:"]),
    ("start --run 20261127T120000-abc123", ["store has no run 20261127T120000-abc123",
                                            "Fix:"]),
    ("plan --mode rollback-image", ["unknown mode", "Fix:"]),
]


@pytest.mark.parametrize("args,words", BAD_INPUTS, ids=[a for a, _ in BAD_INPUTS])
def test_bad_input_is_refused_with_one_line_and_nothing_launched(lab, args, words):
    before_instances, before_runs = instances(lab), runs(lab)
    proc = lab.cli(args, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for word in words:
        assert word in lines[0]
    assert instances(lab) == before_instances
    assert runs(lab) == before_runs


@pytest.mark.parametrize("text,words", [
    ("[environments.lab\n", ["not valid TOML", "Fix:"]),
    ('[environments.lab]\nbatch_sise = 2\n', ["unknown key", "batch_sise", "batch_size"]),
    ('[environments.lab]\nprimary_region = "mars-1"\n', ["primary_region", "Fix:"]),
    ('[environments.lab]\ncopy_regions = ["moon-2"]\n', ["copy_regions", "region"]),
    ('[environments.lab]\nbase_image = "ami-12"\n', ["base_image", "image id"]),
    ('[environments.lab]\nbatch_size = "0%"\n', ["batch_size", "percentage"]),
    ('[environments.lab]\nbatch_size = "150%"\n', ["batch_size", "percentage"]),
    ('[environments.lab]\nbatch_size = -2\n', ["batch_size", "at least 1"]),
    ('[environments.lab]\nmax_failed_hosts = -1\n', ["max_failed_hosts", "Fix:"]),
    ('[environments.lab]\nlock_table = "x"\n', ["lock_table", "DynamoDB table name"]),
    ('[environments.lab]\nkeep_images = 0\n', ["keep_images", "Fix:"]),
    ('[environments.lab]\ntimeouts = { ssh = 0 }\n', ["timeouts", "positive"]),
    ('[environments.lab]\nartifact_transfer = "ftp"\n', ["artifact_transfer", "Fix:"]),
])
def test_malformed_deploy_toml_is_refused(lab, tmp_path, text, words):
    bad = tmp_path / "deploy.toml"
    bad.write_text(text)
    before = instances(lab)
    proc = lab.cli(f"deploy --mode in-place --version 1.2.3 --config {bad}", check=False)
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "\n" not in line and all(w in line for w in words), line
    assert instances(lab) == before
