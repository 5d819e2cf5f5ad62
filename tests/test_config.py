"""deploy.toml parsing and validation; versions, modes and environment names."""

from __future__ import annotations

import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploylib import config, schema
from deploylib.errors import ConfigError, InputError

BASE = """
[environments.prod]
primary_region = "us-east-1"
copy_regions = ["us-west-2"]
base_image = "ubuntu/images/*"
subnet = "app"
security_group = "app"
target_group = "web"
artifact_bucket = "my-artifacts"
"""


def with_line(line: str) -> str:
    """BASE with one key set (replacing the key if BASE has it)."""
    key = line.split("=", 1)[0].strip()
    kept = [ln for ln in BASE.splitlines() if ln.split("=", 1)[0].strip() != key]
    text = "\n".join(kept) + "\n"
    return text.replace("[environments.prod]\n", f"[environments.prod]\n{line}\n")


def test_the_lab_is_embedded_and_the_default():
    cfg = config.parse("")
    env = cfg.environment(None)
    assert env.name == "lab" and env.provider == "lab"
    assert env.all_regions[0] == env.primary_region


def test_a_full_environment_parses_with_per_region_overrides():
    cfg = config.parse(BASE + '[environments.prod.regions.us-west-2]\nsubnet = "subnet-0abc1234"\n')
    env = cfg.environment("prod")
    assert env.network("us-east-1") == ("app", "app", "web")
    assert env.network("us-west-2") == ("subnet-0abc1234", "app", "web")
    assert env.record_parameter == "/deploylib/prod/live"
    assert "lab" in cfg.environments  # the embedded lab stays available


def test_the_repository_deploy_toml_is_valid():
    from tests.conftest import REPO

    cfg = config.load(REPO / "deploy.toml")
    assert cfg.environment("production").copy_regions == ["us-west-2"]


@pytest.mark.parametrize("size,hosts,expected", [
    (1, 10, 1), (3, 10, 3), ("25%", 8, 2), ("25%", 3, 1), ("100%", 7, 7), ("50%", 1, 1)])
def test_batch_size_as_count_or_percentage(size, hosts, expected):
    line = f"batch_size = {size!r}".replace("'", '"')
    env = config.parse(with_line(line)).environment("prod")
    assert env.batch_count(hosts) == expected


BAD = [
    ("primary_region = \"mars-1\"", "primary_region"),
    ("copy_regions = [\"us-east-1\"]", "copy_regions repeats primary_region"),
    ("copy_regions = [\"nowhere\"]", "copy_regions"),
    ("copy_regions = [\"eu-west-1\", \"eu-west-1\"]", "twice"),
    ("instance_type = \"huge\"", "instance_type"),
    ("base_image = \"ami-xyz\"", "base_image"),
    ("batch_size = 0", "batch_size"),
    ("batch_size = \"150%\"", "batch_size"),
    ("batch_size = \"some\"", "batch_size"),
    ("batch_size = true", "batch_size"),
    ("fleet_size = 0", "fleet_size"),
    ("keep_releases = 1", "keep_releases"),
    ("app_port = 70000", "app_port"),
    ("ssh_port = 0", "ssh_port"),
    ("app_root = \"relative/path\"", "app_root"),
    ("app_root = \"/srv/../etc\"", "app_root"),
    ("app_root = \"/srv/app; rm -rf /\"", "app_root"),
    ("health_path = \"health\"", "health_path"),
    ("service = \"app;reboot\"", "service"),
    ("os_packages = [\"nginx; reboot\"]", "os_packages"),
    ("artifact_bucket = \"Bad_Bucket\"", "artifact_bucket"),
    ("kms_keys = [\"alias/aws/ebs\"]", "not a KMS key ARN"),
    ("provider = \"gcp\"", "provider"),
    ("plugins = [\"not a module\"]", "plugins"),
    ("artifact_transfer = \"carrier-pigeon\"", "artifact_transfer"),
    ("timeouts = { health = -1 }", "timeouts"),
    ("batch_sise = 2", "did you mean 'batch_size'"),
    ("extra_stages = [{ step = \"warm\" }]", "exactly one of before"),
    ("extra_stages = [{ step = \"Warm Cache\", after = \"promote\" }]", "step name"),
    ("jenkins = { url = \"jenkins.example.com\" }", "jenkins.url"),
    ("jenkins = { url = \"http://jenkins.example.com\" }", "must be https://"),
    ("timeouts = { presign = 86400 }", "timeouts.presign must be at most 3600"),
    ("jenkins = { urll = \"https://j\" }", "did you mean 'url'"),
    ("reload = \"graceful\"", 'needs health_check = "version"'),
    ("reload = \"hup\"", "reload"),
    ("rollout = \"all-at-once\"", "rollout"),
    ("drain_quiet = -1", "drain_quiet"),
    ("bake = \"everywhere\"", "bake"),
    ("account_id = 123456789012", "as a string"),
    ("account_id = \"12345\"", "not an AWS account id"),
    ("role_arn = \"deployer\"", "not an IAM role ARN"),
    ("aws_profile = \"my profile\"", "aws_profile"),
    ("role_arn = \"arn:aws:iam::111111111111:role/deploy\"\naccount_id = \"222222222222\"",
     "role_arn is a role of account 111111111111"),
    ("provider = \"lab\"\nrole_arn = \"arn:aws:iam::111111111111:role/deploy\"",
     "the lab signs with its own deployer key"),
    # it names the launch template, whose name EC2 holds to 128 characters
    (f"server_group_prefix = \"{'g' * 129}\"", "must be a launch template's name: at most "
     "128"),
    ("server_group_prefix = \"-web\"", "server_group_prefix"),
    ("subnets = [\"a\", \"b\", \"a\"]", "name a subnet twice"),
    ("subnets = \"subnet-1\"", "subnets"),
    ("verify = { latency = \"p100\" }", "not a percentile statistic"),
    ("verify = { latency = \"median\" }", "not a percentile statistic"),
    ("verify = { max_latency_ratio = 1 }", "verify.max_latency_ratio"),
    ("verify = { canary_for = -5 }", "verify.canary_for"),
    ("verify = { alarms = [\"\"] }", "not an alarm name"),
    ("verify = { windows = 3 }", "verify.windows"),
    ("verify = { alarms = [\"app-5xx\"] }", "alarms are watched only during a window"),
    ("transport = \"winrm\"", "transport"),
    ("transport = \"ssm\"\nartifact_transfer = \"push\"", 'needs artifact_transfer = "pull"'),
    ("transport = \"ssm\"", "needs instance_profile"),
]


@pytest.mark.parametrize("line,words", BAD, ids=[b[0] for b in BAD])
def test_a_bad_value_names_the_key_and_the_fix_on_one_line(line, words):
    with pytest.raises(ConfigError) as info:
        config.parse(with_line(line), source="deploy.toml")
    message = info.value.line()
    assert "\n" not in message
    assert "deploy.toml" in message and "Fix:" in message
    assert words in message


@pytest.mark.parametrize("text,words", [
    ("[environments.prod\n", "not valid TOML"),
    ("environments = 3\n", "environments must be a table"),
    ("[environments]\nprod = 3\n", "environments.prod must be a table"),
    ("[environments.Prod]\nx=1\n", "environment name"),
    ("default_environment = \"nope\"\n", "default_environment"),
    (BASE.replace('subnet = "app"\n', ""), "missing key environments.prod.subnet"),
])
def test_malformed_files(text, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        config.parse(text)


def test_unknown_environment_lists_the_known_ones():
    with pytest.raises(InputError) as info:
        config.parse(BASE).environment("staging")
    assert "lab, prod" in info.value.line()


def test_a_missing_explicit_config_file_is_bad_input(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        config.load(tmp_path / "nope.toml")


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    (tmp_path / "deploy.toml").write_text(with_line('app_source = "app"'))
    env = config.load(tmp_path / "deploy.toml").environment("prod")
    assert env.app_source == str(tmp_path / "app")
    assert env.state_dir == str(tmp_path / ".runs")


SAFE = string.ascii_letters + string.digits + "._-"


@settings(deadline=None)  # timing is not what is tested; CI machines are busy
@given(st.text(alphabet=SAFE, min_size=1, max_size=64).filter(
    lambda v: v[0] not in "._-" and ".." not in v))
def test_plain_versions_are_accepted(version):
    assert config.check_version(version) == version


@settings(deadline=None)
@given(st.text(min_size=0, max_size=80))
def test_any_accepted_version_is_safe_in_paths_and_shells(version):
    try:
        config.check_version(version)
    except InputError as exc:
        assert "\n" not in exc.line()
        return
    assert set(version) <= set(SAFE)
    assert ".." not in version and not version.startswith(("-", ".", "/"))
    assert 1 <= len(version) <= 64


@pytest.mark.parametrize("version", ["1.0;rm -rf /", "$(reboot)", "../etc", "1.0 beta", "",
                                     "-rf", "a" * 65, "1.0\n", "1..2", "v1/2"])
def test_unsafe_versions_are_refused(version):
    with pytest.raises(InputError, match="not a valid release version"):
        config.check_version(version)


TOML_SCALARS = st.one_of(
    st.integers(min_value=-10**6, max_value=10**6), st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.text(alphabet=string.printable, max_size=20),
    st.lists(st.text(alphabet=string.ascii_letters + "-_ ;$", max_size=8), max_size=3))


def toml_literal(value) -> str:
    import json

    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    return json.dumps(value)


@settings(deadline=None, max_examples=300)
@given(key=st.sampled_from(sorted(config.Environment.model_fields)), value=TOML_SCALARS)
def test_any_value_for_any_key_parses_or_is_refused_naming_the_key(key, value):
    try:
        config.parse(with_line(f"{key} = {toml_literal(value)}"), source="deploy.toml")
    except ConfigError as exc:
        line = exc.line()
        assert "\n" not in line and "Fix:" in line
        assert key in line or "TOML" in line, line


@settings(deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_crashes_the_parser(text):
    try:
        config.parse(text)
    except ConfigError as exc:
        assert "\n" not in exc.line()


def test_the_configuration_reference_is_generated_from_the_schema():
    from tests.conftest import REPO

    written = (REPO / "docs/configuration.md").read_text()
    assert written == schema.reference() + "\n", "run `invoke docs` and commit the result"
    for name, field in config.Environment.model_fields.items():
        assert field.description, f"{name} has no description"
        assert f"| `{name}` |" in written


def test_a_health_endpoint_that_only_answers_200_is_the_default():
    env = config.parse(BASE).environment("prod")
    assert env.health_check == "status"


def test_one_environment_can_be_varied_without_touching_the_others(tmp_path):
    from tests.conftest import write_config

    cfg = config.load(write_config(tmp_path))
    varied = cfg.with_environment("lab", base_image="deploylab/debian-12-rootfs-*")
    assert varied.environment("lab").base_image == "deploylab/debian-12-rootfs-*"
    assert cfg.environment("lab").base_image != varied.environment("lab").base_image
    assert varied.environment("lab").primary_region == cfg.environment("lab").primary_region


def test_a_teams_lab_sets_its_keys_over_the_embedded_one():
    cfg = config.parse('[environments.lab]\napp_source = "app"\nbuild_command = "make"\n'
                       'app = { start = "bin/server" }\n')
    lab, embedded = cfg.environment("lab"), config.parse("").environment("lab")
    assert (lab.app_source, lab.build_command, lab.app.start) == ("app", "make", "bin/server")
    assert lab.subnet == embedded.subnet and lab.ssh_port == embedded.ssh_port
    # one of another provider is an environment of its own, named lab
    other = config.parse(BASE.replace("[environments.prod]",
                                      '[environments.lab]\nprovider = "aws"'))
    assert other.environment("lab").provider == "aws" and not other.environment("lab").app.start


def test_environments_that_may_share_an_account_never_share_a_target_group():
    """The policy scopes target groups and server groups by name: two environments that
    may be in one account with one name would reach each other's."""
    staging = BASE.replace("[environments.prod]", "[environments.staging]")
    with pytest.raises(ConfigError) as err:
        config.parse(BASE + staging)
    assert "environments prod and staging may share an account and both use target group " \
        "'web' in us-east-1" in str(err.value)
    assert "an account per environment" in err.value.fix and "\n" not in str(err.value)
    # a server-group prefix shared the same way
    with pytest.raises(ConfigError, match="server groups web-v"):
        config.parse(with_line('server_group_prefix = "web"') + staging.replace(
            'target_group = "web"', 'target_group = "web-staging"\nserver_group_prefix = "web"'))
    # one of them in a region the other is not in: nothing shared
    config.parse(BASE + staging.replace('copy_regions = ["us-west-2"]', "")
                 .replace('primary_region = "us-east-1"', 'primary_region = "eu-west-1"'))
    # an account each (the recommended set-up): the same names are theirs alone
    config.parse(with_line('account_id = "111111111111"') + staging.replace(
        "[environments.staging]", '[environments.staging]\naccount_id = "222222222222"'))
    with pytest.raises(ConfigError, match="may share an account"):
        config.parse(with_line('account_id = "111111111111"') + staging.replace(
            "[environments.staging]", '[environments.staging]\naccount_id = "111111111111"'))


def test_the_longest_wait_is_a_server_groups_when_the_fleet_is_one():
    """What the credentials must outlast (preflight), per procedure: with server groups,
    a group's instances launched and booted into the release, one wait of 25 minutes."""
    instances = config.parse(BASE).environment("prod")
    fleet = 'fleet = "server-groups"\ninstance_profile = "app-instance"'
    groups = config.parse(with_line(fleet)).environment("prod")
    assert instances.longest_wait("rebake-light") == ("launch", 600.0)
    assert instances.longest_wait("in-place") == ("drain", 600.0)
    assert groups.longest_wait("rebake-light") == ("launch + timeouts.boot", 1500.0)
    assert groups.longest_wait("in-place") == ("launch + timeouts.boot", 1500.0)
    assert groups.longest_wait("immutable") == ("copy", 7200.0)
    shorter = config.parse(with_line(fleet + "\ntimeouts = { boot = 120 }"))
    assert shorter.environment("prod").longest_wait("rebake-light")[1] == 720.0


def test_a_regions_own_alarms_replace_the_environments():
    cfg = config.parse(with_line('verify = { canary_for = 60, alarms = ["app-5xx"] }')
                       + '\n[environments.prod.regions.us-west-2]\nalarms = ["west-5xx"]\n',
                       source="deploy.toml")
    env = cfg.environment("prod")
    assert env.verify.enabled
    assert env.alarms("us-east-1") == ["app-5xx"]
    assert env.alarms("us-west-2") == ["west-5xx"]
    assert not config.parse(with_line(""), source="deploy.toml").environment(
        "prod").verify.enabled
