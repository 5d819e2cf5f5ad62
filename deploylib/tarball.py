"""Releases as local files: build an app's tarball, checksum and check an artifact."""

from __future__ import annotations

import gzip
import hashlib
import io
import posixpath
import tarfile
import zlib
from pathlib import Path

from deploylib import manifest
from deploylib.config import check_version
from deploylib.errors import InputError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_artifact(path: str | Path, *, read_through: bool = True, max_mb: int = 2048,
                   max_files: int = 100_000) -> Path:
    """An artifact must be a readable gzip tarball; say which and how to fix it if not.

    `read_through` reads every member (catches corrupt archives, paths escaping the
    release, and more than `max_mb` unpacked or `max_files` members: what every host
    unpacks); the run's start does it once, later steps only check the file is there."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"artifact {str(path)!r} does not exist",
                         fix="pass --artifact with the path of a release tarball, or omit it "
                         "to build one with `invoke artifact`")
    if not p.is_file():
        raise InputError(f"artifact {str(path)!r} is not a file",
                         fix="pass the path of a .tar.gz release tarball")
    with open(p, "rb") as f:
        magic = f.read(2)
    if magic != b"\x1f\x8b":
        raise InputError(f"artifact {str(path)!r} is not a gzip tarball",
                         fix="build it with `invoke artifact --version V` or `tar -czf`")
    if not read_through:
        return p
    # Read it through once: a truncated or corrupt archive is refused here, before it is
    # published, and so is a member that would land outside the release directory.
    unpacked, members = 0, 0
    try:
        with tarfile.open(p, "r:gz") as tar:
            for member in tar:
                unpacked += member.size
                members += 1
                if unpacked > max_mb * 2**20:
                    raise InputError(f"artifact {str(path)!r} holds more than {max_mb} MB "
                                     "unpacked", fix="leave out what the release does not "
                                     "need, or raise max_release_mb in deploy.toml")
                if members > max_files:
                    raise InputError(f"artifact {str(path)!r} holds more than {max_files} "
                                     "files", fix="leave out what the release does not "
                                     "need, or raise max_release_files in deploy.toml")
                parts = Path(member.name).parts
                if member.name.startswith("/") or ".." in parts:
                    raise InputError(f"artifact {str(path)!r} has a member outside the "
                                     f"release: {member.name!r}",
                                     fix="pack paths relative to the app directory")
                if not (member.isfile() or member.isdir() or member.issym()):
                    raise InputError(f"artifact {str(path)!r} has a special file "
                                     f"{member.name!r}", fix="pack regular files only")
                if member.issym() and _links_out(member):
                    raise InputError(f"artifact {str(path)!r} has a link out of the "
                                     f"release: {member.name!r} -> {member.linkname!r}",
                                     fix="link only within the release, with relative paths")
                if member.mode & 0o6000:
                    raise InputError(f"artifact {str(path)!r} has a setuid or setgid file "
                                     f"{member.name!r}", fix="pack it without those bits")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InputError(f"artifact {str(path)!r} is corrupt or truncated "
                         f"({type(exc).__name__})",
                         fix="build it again with `invoke artifact --version V`") from None
    return p


def _run_build(src: Path, command: str, version: str) -> None:
    """The team's build, in the app directory, told the version (DEPLOY_VERSION)."""
    import os
    import subprocess

    proc = subprocess.run(["/bin/sh", "-c", command], cwd=src, capture_output=True, text=True,
                          env={**os.environ, "DEPLOY_VERSION": version})
    if proc.returncode != 0:
        # Its first line (a compiler's first error, as a rule) and its last (make's verdict).
        said = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        shown = " … ".join(dict.fromkeys(said[:1] + said[-1:])) or "no output"
        raise InputError(f"the build ({command}) exited {proc.returncode} in {src}: {shown}",
                         resource="build_command",
                         fix="run it there yourself and fix what it says")


def _links_out(member: tarfile.TarInfo) -> bool:
    if member.linkname.startswith("/"):
        return True
    target = posixpath.normpath(posixpath.join(posixpath.dirname(member.name),
                                               member.linkname))
    return target == ".." or target.startswith("../")


def build(source: str | Path, version: str, out_dir: str | Path = "dist", *,
          build_command: str = "") -> Path:
    """Pack the app directory plus a VERSION file into dist/app-VERSION.tar.gz, after
    `build_command` (deploy.toml's: the team's own build) has run in it.

    The archive is reproducible (fixed mtimes, sorted names, no owners), so the same
    source and version always give the same sha256.
    """
    check_version(version)
    src = Path(source)
    if not src.is_dir() or not any(src.iterdir()):
        raise InputError(f"{str(src)!r} is not an app directory (missing or empty)",
                         fix="set app_source in deploy.toml to the application directory")
    if build_command:
        _run_build(src, build_command, version)
    if (src / manifest.FILE).is_file():  # checked here, not first on a host
        manifest.parse((src / manifest.FILE).read_text(), source=str(src / manifest.FILE))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"app-{version}.tar.gz"

    def add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(data), 0, mode
        tar.addfile(info, io.BytesIO(data))

    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        with tarfile.open(fileobj=gz, mode="w") as tar:
            for path in sorted(p for p in src.rglob("*") if p.is_file()):
                if "__pycache__" in path.parts or path.name == "VERSION":
                    continue
                # Executables stay executable (a compiled server, a bin/ script); nothing
                # else of the file's mode is kept.
                mode = 0o755 if path.stat().st_mode & 0o100 else 0o644
                add(tar, str(path.relative_to(src)), path.read_bytes(), mode)
            add(tar, "VERSION", f"{version}\n".encode())
    target.write_bytes(buf.getvalue())
    return target
