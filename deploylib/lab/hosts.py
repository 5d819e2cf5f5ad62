"""Lab instances: a root directory plus a real OpenSSH sshd on the instance's address.

Booting restores the root from the image's snapshot (or the base root), writes what
cloud-init would (the instance's address, a fresh host key published to the lab's
trusted-key registry), starts sshd in the foreground as a child, and starts the units
the image enabled. Creating an image snapshots the root; copying an image copies the
snapshot; terminating stops everything and removes the root.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deploylib.lab import BIN

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# Runtime state never goes into an image: pid files and the instance's own address.
_NOT_IN_IMAGES = ("var/run", "etc/app.env")


def write_keypair(private_path: Path) -> str:
    """An ed25519 key pair in OpenSSH format; returns the public key line."""
    key = ed25519.Ed25519PrivateKey.generate()
    private_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption()))
    os.chmod(private_path, 0o600)
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    Path(f"{private_path}.pub").write_text(public + "\n")
    return public


def _kill_pidfile(path: Path) -> None:
    try:
        pid = int(path.read_text().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


class HostFarm:
    def __init__(self, lab_dir: Path, ssh_port: int):
        self.dir = lab_dir
        self.ssh_port = ssh_port
        self.hosts = lab_dir / "hosts"
        self.images = lab_dir / "images"
        self.registry = lab_dir / "hostkeys"
        self.base = lab_dir / "base"
        for d in (self.hosts, self.images, self.registry):
            d.mkdir(parents=True, exist_ok=True)
        for d in ("etc", "var/lib", "var/log", "var/run", "tmp"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.authorized_keys = lab_dir / "authorized_keys"
        self._sshd: dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir

    def root(self, instance_id: str) -> Path:
        return self.hosts / instance_id / "root"

    def boot(self, instance_id: str, address: str, image_id: str) -> None:
        with self._lock:
            home = self.hosts / instance_id
            root = home / "root"
            if not root.exists():
                snapshot = self.images / image_id
                shutil.copytree(snapshot if snapshot.exists() else self.base, root,
                                symlinks=True)
            (root / "var/run").mkdir(parents=True, exist_ok=True)
            for stale in (root / "var/run").glob("*.pid"):
                stale.unlink()
            (root / "etc").mkdir(parents=True, exist_ok=True)
            (root / "etc/app.env").write_text(f"APP_HOST={address}\n")
            key = home / "ssh_host_ed25519_key"
            if not key.exists():
                public = write_keypair(key)
                # The registry is the lab's trusted source, as console output is on EC2.
                (self.registry / f"{instance_id}.pub").write_text(public + "\n")
            config = home / "sshd_config"
            config.write_text(self._sshd_config(address, key, root))
            log = open(home / "sshd.log", "ab")
            self._sshd[instance_id] = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, start_new_session=True)
            log.close()
            (home / "sshd.pid").write_text(str(self._sshd[instance_id].pid))
            self._start_enabled(root)

    def _sshd_config(self, address: str, key: Path, root: Path) -> str:
        path = f"{BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        return "\n".join([
            f"ListenAddress {address}:{self.ssh_port}",
            f"HostKey {key}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "PermitRootLogin prohibit-password",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PidFile none",
            "UseDNS no",
            "LogLevel ERROR",
            "MaxStartups 100:30:200",
            "MaxSessions 50",
            "Subsystem sftp internal-sftp",
            f"SetEnv DEPLOY_HOST_ROOT={root} PATH={path}",
            "",
        ])

    def _start_enabled(self, root: Path) -> None:
        wants = root / "etc/systemd/system/multi-user.target.wants"
        if not wants.is_dir():
            return
        env = dict(os.environ, DEPLOY_HOST_ROOT=str(root))
        for unit in sorted(wants.glob("*.service")):
            subprocess.run([str(BIN / "systemctl"), "start", unit.stem], env=env,
                           check=False, stdin=subprocess.DEVNULL)

    def halt(self, instance_id: str) -> None:
        """Stop the instance: its services and its sshd (sessions included)."""
        with self._lock:
            root = self.root(instance_id)
            for pidfile in (root / "var/run").glob("*.pid"):
                _kill_pidfile(pidfile)
                pidfile.unlink(missing_ok=True)
            proc = self._sshd.pop(instance_id, None)
            if proc is not None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                proc.wait(timeout=10)
            # Also the pid on file: an sshd started again by hand (a test reviving a host)
            # is not the daemon's child.
            pidfile = self.hosts / instance_id / "sshd.pid"
            try:
                os.killpg(int(pidfile.read_text().strip()), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def destroy(self, instance_id: str) -> None:
        with self._lock:
            self.halt(instance_id)
            shutil.rmtree(self.hosts / instance_id, ignore_errors=True)
            (self.registry / f"{instance_id}.pub").unlink(missing_ok=True)

    def snapshot(self, instance_id: str, image_id: str) -> None:
        with self._lock:
            root = self.root(instance_id)
            target = self.images / image_id
            if root.exists():
                shutil.copytree(root, target, symlinks=True,
                                ignore=_ignore_runtime(root))

    def copy_image(self, source_image: str, image_id: str) -> None:
        source = self.images / source_image
        if source.exists():
            shutil.copytree(source, self.images / image_id, symlinks=True)

    def drop_image(self, image_id: str) -> None:
        shutil.rmtree(self.images / image_id, ignore_errors=True)

    def shutdown(self) -> None:
        with self._lock:
            for instance_id in [p.name for p in self.hosts.iterdir()]:
                self.halt(instance_id)


def _ignore_runtime(root: Path):
    skip = {str(root / p) for p in _NOT_IN_IMAGES}

    def ignore(directory: str, names: list[str]) -> list[str]:
        return [n for n in names if os.path.join(directory, n) in skip]

    return ignore


def kill_leftovers(lab_dir: Path) -> int:
    """Kill processes a crashed lab left behind (sshd and services); returns how many."""
    killed = 0
    for pidfile in [*lab_dir.glob("hosts/*/sshd.pid"), *lab_dir.glob("hosts/*/root/var/run/*.pid")]:
        try:
            pid = int(pidfile.read_text().strip())
            if pidfile.name == "sshd.pid":
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed += 1
        except (OSError, ValueError):
            pass
    return killed
