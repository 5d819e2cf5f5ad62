"""Release tarballs: reproducible builds and artifact checks."""

from __future__ import annotations

import io
import tarfile

import pytest

from deploylib import tarball
from deploylib.errors import InputError
from tests.conftest import REPO


def test_the_same_source_and_version_give_the_same_bytes(tmp_path):
    a = tarball.build(REPO / "examples/app", "1.2.3", tmp_path / "a")
    b = tarball.build(REPO / "examples/app", "1.2.3", tmp_path / "b")
    assert tarball.sha256_file(a) == tarball.sha256_file(b)
    assert tarball.sha256_file(a) != tarball.sha256_file(
        tarball.build(REPO / "examples/app", "1.2.4", tmp_path / "c"))


def test_the_tarball_carries_the_app_and_its_version(tmp_path):
    path = tarball.build(REPO / "examples/app", "1.2.3", tmp_path)
    assert path.name == "app-1.2.3.tar.gz"
    with tarfile.open(path) as tar:
        assert sorted(tar.getnames()) == ["VERSION", "app.py", "release.toml"]
        assert tar.extractfile("VERSION").read() == b"1.2.3\n"


def test_building_refuses_a_bad_version_or_source(tmp_path):
    with pytest.raises(InputError, match="version"):
        tarball.build(REPO / "examples/app", "1.0;ls", tmp_path)
    with pytest.raises(InputError, match="not an app directory"):
        tarball.build(tmp_path / "empty", "1.0.0", tmp_path)


def test_any_app_builds_its_own_way_and_executables_stay_executable(tmp_path):
    source = tmp_path / "svc"
    source.mkdir()
    (source / "server.sh").write_text("#!/bin/sh\necho built $DEPLOY_VERSION > out.txt\n")
    (source / "release.toml").write_text('start = "bin/server"\n')
    path = tarball.build(source, "2.0.0", tmp_path / "dist", build_command=(
        "mkdir -p bin && cp server.sh bin/server && chmod +x bin/server && sh server.sh"))
    with tarfile.open(path) as tar:
        members = {m.name: m for m in tar}
        assert members["bin/server"].mode == 0o755 and members["server.sh"].mode == 0o644
        assert tar.extractfile("out.txt").read() == b"built 2.0.0\n"


def test_a_build_that_fails_or_a_bad_release_toml_is_one_line(tmp_path):
    source = tmp_path / "svc"
    source.mkdir()
    (source / "Makefile").write_text("all:\n\t@echo 'cc: server.c: no such file' >&2; false\n")
    with pytest.raises(InputError) as info:
        tarball.build(source, "2.0.0", tmp_path, build_command="make")
    assert "exited 2" in info.value.line() and "no such file" in info.value.line()
    (source / "release.toml").write_text('start = "bin/server"\nstop_signal = "SIGSTOP"\n')
    with pytest.raises(InputError) as info:
        tarball.build(source, "2.0.0", tmp_path)
    assert "stop_signal must be one of SIGTERM" in info.value.line()


def test_artifact_checks(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        tarball.check_artifact(tmp_path / "missing.tar.gz")
    with pytest.raises(InputError, match="is not a file"):
        tarball.check_artifact(tmp_path)
    (tmp_path / "plain.txt").write_text("hello")
    with pytest.raises(InputError, match="not a gzip tarball"):
        tarball.check_artifact(tmp_path / "plain.txt")


@pytest.mark.parametrize("member,words", [
    (dict(name="etc", type=tarfile.SYMTYPE, linkname="/etc"), "link out of the release"),
    (dict(name="a/up", type=tarfile.SYMTYPE, linkname="../../x"), "link out of the release"),
    (dict(name="tool", type=tarfile.REGTYPE, mode=0o4755), "setuid or setgid"),
    (dict(name="pipe", type=tarfile.FIFOTYPE), "special file"),
])
def test_an_artifact_holding_what_a_release_may_not_is_refused_at_start(tmp_path, member,
                                                                        words):
    path = tmp_path / "hostile.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("app.py"), io.BytesIO(b""))
        info = tarfile.TarInfo(member.pop("name"))
        for key, value in member.items():
            setattr(info, key, value)
        tar.addfile(info, io.BytesIO(b"") if info.isfile() else None)
    with pytest.raises(InputError, match=words):
        tarball.check_artifact(path)


@pytest.mark.parametrize("files, size, words", [
    (6, 1, "more than 5 files"), (1, 2 * 2**20, "more than 1 MB unpacked")])
def test_an_artifact_past_the_environments_caps_is_refused(tmp_path, files, size, words):
    path = tmp_path / "big.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for n in range(files):
            info = tarfile.TarInfo(f"f{n}")
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
    with pytest.raises(InputError, match=words) as refused:
        tarball.check_artifact(path, max_mb=1, max_files=5)
    assert "max_release_" in refused.value.fix
    assert tarball.check_artifact(path, max_mb=3, max_files=6) == path


def test_a_link_within_the_release_is_fine(tmp_path):
    path = tmp_path / "linked.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.addfile(tarfile.TarInfo("lib/real.py"), io.BytesIO(b""))
        link = tarfile.TarInfo("lib/alias.py")
        link.type, link.linkname = tarfile.SYMTYPE, "real.py"
        tar.addfile(link)
    assert tarball.check_artifact(path) == path
