"""A real Debian root filesystem as a lab base image, so provisioning runs real apt-get.

Made once with debootstrap (`--variant=minbase`, Debian's archive; about 80 s and 300 MB)
and kept in CACHE. An instance of it is an overlay mount (the image read-only below, the
instance's own changes above) with /proc and /dev bound in; its sshd runs chrooted into
it, so the login user, sudo, apt-get, the app and its user are the root filesystem's own,
as on a real host. What stays the lab's: the service manager and cloud-init (the lab's
stand-ins, copied into /usr/local/sbin, as a lab host has no init system) and the
network (this machine's loopback).
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
from pathlib import Path

from deploylib.errors import InputError
from deploylib.lab import BIN
from deploylib.lab.accounts import LOGIN_USER

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
PACKAGES = ("openssh-server", "sudo", "curl", "python3", "ca-certificates")
CACHE = Path(os.environ.get("DEPLOY_LAB_ROOTFS_CACHE", "/var/cache/deploylab"))
IMAGE_NAME = "deploylab/debian-12-rootfs-*"
# The lab's stand-ins a root filesystem gets; apt-get is its own, the real one.
STAND_INS = ("systemctl", "cloud-init", "tar")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def path() -> Path:
    return CACHE / f"{SUITE}-minbase"


def ready() -> bool:
    return (path() / ".ready").exists()


def ensure() -> Path:
    """The cached root filesystem, made now if it is not there (one maker at a time)."""
    target = path()
    if ready():
        return target
    if not shutil.which("debootstrap"):
        raise InputError("a Debian base image needs debootstrap on this machine",
                         resource="lab", fix="apt-get install debootstrap")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if ready():
            return target
        partial = CACHE / f"{SUITE}-minbase.partial"
        shutil.rmtree(partial, ignore_errors=True)
        proc = subprocess.run(["debootstrap", "--variant=minbase",
                               f"--include={','.join(PACKAGES)}", SUITE, str(partial), MIRROR],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            raise InputError(f"debootstrap failed: {proc.stdout.strip().splitlines()[-1:]}",
                             resource=str(partial), fix="check this machine reaches "
                             f"{MIRROR}, then run again")
        # Host keys are each instance's own; the image has none.
        for key in (partial / "etc/ssh").glob("ssh_host_*"):
            key.unlink()
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        (target / ".ready").write_text("")
    return target


def mount(lower: Path, home: Path) -> Path:
    """The instance's root: `lower` read-only, its changes in home/upper."""
    root, upper, work = home / "root", home / "upper", home / "work"
    for d in (root, upper, work):
        d.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(root):
        _run(["mount", "-t", "overlay", "overlay", "-o",
              f"lowerdir={lower},upperdir={upper},workdir={work}", str(root)])
    for fs in ("proc", "dev"):  # /dev with its /dev/pts (apt and sudo use a pty)
        (root / fs).mkdir(exist_ok=True)
        if not os.path.ismount(root / fs):
            _run(["mount", "--rbind", f"/{fs}", str(root / fs)])
    return root


def unmount(home: Path) -> None:
    unmount_under(home / "root")


def mounts_under(place: Path) -> list[Path]:
    """Mount points at or below `place`, deepest first."""
    place = place.resolve() if place.exists() else place
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            point = Path(line.split()[1].replace("\\040", " "))
            if point == place or place in point.parents:
                found.append(point)
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(place: Path) -> None:
    for point in mounts_under(place):
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def remove(place: Path) -> None:
    """Remove a directory tree, never one that still has something mounted in it: a
    bound /dev or /proc would be emptied with it."""
    unmount_under(place)
    if mounts_under(place):
        raise OSError(f"{place} still has mounts ({mounts_under(place)[0]}): not removed")
    shutil.rmtree(place, ignore_errors=True)


def prepare(root: Path, *, address: str, port: int, host_key: Path,
            authorized_keys: Path) -> Path:
    """What cloud-init would do at boot, plus the lab's part; returns sshd's config."""
    etc = root / "etc"
    shutil.copy("/etc/resolv.conf", etc / "resolv.conf")
    # The machine's host name (a chroot shares it): sudo resolves it.
    (etc / "hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {socket.gethostname()}\n")
    if _chroot(root, ["id", "-u", LOGIN_USER]).returncode != 0:
        _chroot(root, ["useradd", "--create-home", "--shell", "/bin/bash", "--password", "*",
                       LOGIN_USER], check=True)
    sudoers = etc / "sudoers.d" / LOGIN_USER
    sudoers.write_text(f"{LOGIN_USER} ALL=(ALL) NOPASSWD:ALL\n"
                       f'Defaults:{LOGIN_USER} !secure_path, env_keep += "DEPLOY_HOST_ROOT"\n')
    os.chmod(sudoers, 0o440)
    for tool in STAND_INS:
        shutil.copy(BIN / tool, root / "usr/local/sbin" / tool)
        os.chmod(root / "usr/local/sbin" / tool, 0o755)
    shutil.copy(host_key, etc / "ssh/lab_host_ed25519_key")
    os.chmod(etc / "ssh/lab_host_ed25519_key", 0o600)
    shutil.copy(authorized_keys, etc / "ssh/lab_authorized_keys")
    os.chmod(etc / "ssh/lab_authorized_keys", 0o644)
    (root / "run/sshd").mkdir(parents=True, exist_ok=True)
    config = etc / "ssh/sshd_config.lab"
    config.write_text("\n".join([
        f"ListenAddress {address}:{port}", "HostKey /etc/ssh/lab_host_ed25519_key",
        "AuthorizedKeysFile /etc/ssh/lab_authorized_keys", f"AllowUsers {LOGIN_USER}",
        "PermitRootLogin no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "PidFile none", "UseDNS no", "LogLevel ERROR", "MaxSessions 50",
        "Subsystem sftp internal-sftp",
        # The host's scripts address its root as / (DEPLOY_HOST_ROOT), as on a real host.
        f"SetEnv DEPLOY_HOST_ROOT=/ PATH={PATH}", ""]))
    return Path("/etc/ssh/sshd_config.lab")


def sshd_command(root: Path, config: Path) -> list[str]:
    return ["chroot", str(root), "/usr/sbin/sshd", "-D", "-e", "-f", str(config)]


def systemctl_command(root: Path, *args: str) -> list[str]:
    return ["chroot", str(root), "/usr/local/sbin/systemctl", *args]


def copy(source: Path, target: Path) -> None:
    """An image of a root: every file with its owner and mode (cp -a), the mounted /proc
    and /dev left out (--one-file-system)."""
    target.mkdir(parents=True, exist_ok=True)
    _run(["cp", "-a", "--one-file-system", f"{source}/.", str(target)])
    for runtime in ("etc/app.env", "etc/ssh/lab_host_ed25519_key"):
        p = target / runtime
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    for pid in pid_dir(target).glob("*.pid"):
        pid.unlink(missing_ok=True)


def pid_dir(root: Path) -> Path:
    """A host root's /var/run, seen from outside it. On Debian it is a link to /run —
    absolute, so followed from outside it would be this machine's own /run."""
    var_run = root / "var/run"
    if var_run.is_symlink():
        target = os.readlink(var_run)
        return root / target.lstrip("/") if target.startswith("/") else var_run.parent / target
    return var_run


def _chroot(root: Path, argv: list[str], check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                          check=check, env={"PATH": PATH})


def _run(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise OSError(f"{' '.join(argv)}: {proc.stderr.strip()}")
