"""release.toml: how a release runs, held to the subset of TOML a host reads in shell."""

from __future__ import annotations

import io
import tarfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deploylib import manifest
from deploylib.errors import InputError
from deploylib.manifest import Manifest

FULL = """\
# how it runs
start = "bin/server --threads 4"
reload = 'kill -HUP "$MAINPID"'
stop_signal = "SIGINT"
stop_timeout = 20
health_path = "/health"
port_variable = "PORT"

[hooks]
before_install = "bin/server --check"
validate = "bin/selfcheck"
"""


def test_a_full_release_toml_reads_as_written():
    m = manifest.parse(FULL)
    assert m.for_host() == {
        "start": "bin/server --threads 4", "reload": 'kill -HUP "$MAINPID"',
        "stop_signal": "SIGINT", "stop_timeout": 20, "port_variable": "PORT",
        "before_install": "bin/server --check", "after_install": "", "validate": "bin/selfcheck"}


def test_the_releases_keys_win_over_the_environments_defaults():
    defaults = Manifest.model_validate({"start": "python3 app.py", "stop_timeout": 60,
                                        "hooks": {"after_install": "bin/migrate"}})
    runs = manifest.parse('start = "bin/server"\n[hooks]\nvalidate = "bin/ok"\n').over(defaults)
    assert runs.for_host() | {} == {
        "start": "bin/server", "reload": "", "stop_signal": "SIGTERM", "stop_timeout": 60,
        "port_variable": "APP_PORT", "before_install": "", "after_install": "bin/migrate",
        "validate": "bin/ok"}


@pytest.mark.parametrize("text, words", [
    ('start = "a \\" b"\n', "line 1"),                      # an escape: not for the host
    ('start = """bin/server"""\n', "line 1"),              # multi-line strings
    ('start = "bin/server" # trailing\n', "line 1"),       # a comment after a value
    ('env = { A = "1" }\n', "line 1"),                     # inline tables
    ('[deploy]\nstart = "x"\n', "not a table it knows"),
    ('[hooks]\nafter_start = "x"\n', "[hooks] has no 'after_start'"),
    ('strat = "bin/server"\n', "strat is not a key of release.toml"),
    ('stop_signal = "SIGSTOP"\n', "stop_signal must be one of SIGTERM"),
    ('stop_timeout = 0\n', "stop_timeout"),
    ('port_variable = "MY-PORT"\n', "port_variable must be an environment variable name"),
    ('health_path = "health"\n', "health_path must be a URL path"),
    ('start = ""\n', "start must be one non-empty line"),
])
def test_what_the_host_could_not_read_is_one_line_naming_it(text, words):
    with pytest.raises(InputError) as info:
        manifest.parse(text, source="app-1.0.0.tar.gz:release.toml")
    line = info.value.line()
    assert "\n" not in line and "Fix:" in line and words in line, line
    assert line.startswith("app-1.0.0.tar.gz:release.toml")


def _tarball(tmp_path, files: dict[str, str]):
    path = tmp_path / "app-1.0.0.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path


def test_a_release_with_no_start_command_anywhere_is_refused_before_it_is_published(tmp_path):
    path = _tarball(tmp_path, {"server": "binary"})
    with pytest.raises(InputError) as info:
        manifest.effective(path, Manifest(), health_path="/health", env_name="production")
    assert "says no start command and the environment production gives none" in str(info.value)
    with_defaults = Manifest(start="./server")
    assert manifest.effective(path, with_defaults, health_path="/health",
                              env_name="production").start == "./server"


def test_a_release_health_path_other_than_the_target_groups_is_refused(tmp_path):
    path = _tarball(tmp_path, {"release.toml": 'start = "x"\nhealth_path = "/ping"\n'})
    with pytest.raises(InputError, match="is not the environment's /health"):
        manifest.effective(path, Manifest(), health_path="/health", env_name="production")
    assert manifest.of_artifact(path).start == "x"
    assert manifest.of_artifact(_tarball(tmp_path, {"a": "b"})) is None


# What the host's reader (awk, in release.sh.j2) takes: any value the tool lets through.
_VALUE = st.text(st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters='"\\'),
                 min_size=1, max_size=40).filter(lambda s: s.strip() and "\n" not in s)


@settings(max_examples=60, deadline=None)
@given(start=_VALUE)
def test_any_start_command_it_accepts_the_host_reads_back_exactly(tmp_path_factory, start):
    import subprocess

    from deploylib import render

    directory = tmp_path_factory.mktemp("release")
    (directory / "release.toml").write_text(f'start = "{start}"\n', encoding="utf-8")
    assert manifest.parse((directory / "release.toml").read_text()).start == start
    script = render.render("release.sh.j2", app=Manifest().for_host(), service="app",
                           service_user="app", app_port=8080)
    out = subprocess.run(["bash", "-c", script + '\nmanifest_value "$1" "" start', "-",
                          str(directory)], capture_output=True, text=True, check=True)
    assert out.stdout.rstrip("\n") == start
