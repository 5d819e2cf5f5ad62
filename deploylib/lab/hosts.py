"""Lab instances: a root directory plus a real OpenSSH sshd on the instance's address.

Booting restores the root from the image's snapshot (or the base root), writes what
cloud-init would (the instance's address, a fresh host key at first boot, printed to the
instance's console as cloud-init prints it), starts sshd in the foreground as a child,
and starts the units the image enabled. Creating an image snapshots the root; copying an
image copies the snapshot; terminating stops everything and removes the root.

An image that is a real root filesystem (deploylib.lab.rootfs) boots as a chroot over an
overlay mount of it instead, with its own sshd.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from deploylib.errors import InputError
from deploylib.lab import BIN, accounts, addresses, rootfs
from deploylib.lab.accounts import LOGIN_USER

if TYPE_CHECKING:
    from deploylib.lab.runcommand import RunCommand

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
# What a directory host's user data keeps of root's powers: starting the app as its user,
# owning and reading its files, signalling its processes. Not kept (among the rest):
# mounting, so the machine it sees read-only stays so; tracing other processes; raw I/O.
_USER_DATA_CAPS = ("CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_FOWNER", "CAP_DAC_OVERRIDE",
                   "CAP_DAC_READ_SEARCH", "CAP_KILL", "CAP_AUDIT_WRITE")


def confined(root: Path) -> list[str]:
    """The command prefix that runs a directory host's user data inside that host: the
    machine read-only, the host's own root the only place it may write (its temporary
    files too: TMPDIR), a /dev of its own (no disks), root without the powers to undo any
    of it (bubblewrap). Its paths are the machine's (DEPLOY_HOST_ROOT), so the pid files
    and units it writes mean the same to the host's later SSH sessions."""
    caps = [arg for cap in _USER_DATA_CAPS for arg in ("--cap-add", cap)]
    return ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--bind", str(root), str(root),
            "--cap-drop", "ALL", *caps, "--"]
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


class AddressTaken(Exception):
    """An instance's address is held by something outside this lab: its sshd could not
    bind, and a client would reach whatever does hold it."""

    def __init__(self, address: str, port: int, holder: str):
        super().__init__(f"lab: the instance's address {address}:{port} is held by {holder} "
                         "(another lab, or a process left by one); stop it (`invoke lab.down` "
                         "in that lab's directory) and launch again")
        self.address, self.port, self.holder = address, port, holder


def console_text(public_key: str | None) -> str:
    """A boot's console output as an Ubuntu AMI's looks: kernel lines, then (first boot
    only) cloud-init's host key block, a kernel message written in the middle of it."""
    lines = ["[    0.000000] Linux version 6.8.0-1018-aws (buildd@lcy02-amd64-022)",
             "[    0.000000] Command line: BOOT_IMAGE=/vmlinuz root=LABEL=cloudimg-rootfs ro",
             "[    2.114201] EXT4-fs (nvme0n1p1): mounted filesystem with ordered data mode."]
    if public_key:
        key_type, b64 = public_key.split()[:2]
        lines += ["[   11.902311] cloud-init[602]: Generating public/private ed25519 key pair.",
                  "-----BEGIN SSH HOST KEY FINGERPRINTS-----",
                  f"256 SHA256:{b64[:43]} root@lab (ED25519)",
                  "-----END SSH HOST KEY FINGERPRINTS-----",
                  "-----BEGIN SSH HOST KEY KEYS-----",
                  "[   12.031877] random: crng init done",
                  f"{key_type} {b64} root@lab",
                  "-----END SSH HOST KEY KEYS-----",
                  "[   12.340051] cloud-init[602]: Cloud-init v. 24.1 finished"]
    return "\n".join(lines) + "\n"


def _kill_pidfile(path: Path) -> None:
    """A halted host's service is gone at once, with whatever it started (the lab's
    systemctl gives each service a session of its own: its group is the service)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def roots_place(lab_dir: Path) -> Path:
    """Where the hosts' and images' roots live: in the lab's directory, unless a user
    other than root could not pass through it (a clone under /root): the app on a lab host
    runs as its own user and must reach its release. Then a directory of the lab's own
    under the system's temporary directory, linked from the lab's."""
    if accounts.reachable_by_services(lab_dir) is None:
        return lab_dir
    digest = hashlib.sha256(str(lab_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"deploylab-{digest}"


class HostFarm:
    def __init__(self, lab_dir: Path, ssh_port: int):
        self.dir = lab_dir
        self.ssh_port = ssh_port
        roots = roots_place(lab_dir)
        if roots != lab_dir:
            roots.mkdir(mode=0o711, exist_ok=True)
            os.chmod(roots, 0o711)  # others may pass through, not list
        for name in ("hosts", "images", "base"):
            (roots / name).mkdir(parents=True, exist_ok=True)
            if roots != lab_dir and not (lab_dir / name).exists():
                (lab_dir / name).symlink_to(roots / name)
        self.hosts = roots / "hosts"
        self.images = roots / "images"
        self.registry = lab_dir / "hostkeys"
        self.base = roots / "base"
        for d in (self.hosts, self.images, self.registry):
            d.mkdir(parents=True, exist_ok=True)
        for sub in ("etc", "var/lib", "var/log", "var/run", "tmp"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        self.authorized_keys = lab_dir / "authorized_keys"
        self._sshd: dict[str, subprocess.Popen] = {}
        self._user_data: dict[str, subprocess.Popen] = {}
        self._lock = threading.RLock()
        # Every host's SSM agent (deploylib.lab.runcommand), when the lab supplies Run
        # Command.
        self.agents: RunCommand | None = None
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        if shutil.which("bwrap") is None:
            raise InputError("the lab's hosts need bwrap (bubblewrap) on this machine: a "
                             "host's user data runs confined to the host", resource="lab",
                             fix="apt-get install bubblewrap (./dev setup does)")

    def root(self, instance_id: str) -> Path:
        return self.hosts / instance_id / "root"

    def mark_rootfs(self, image_id: str, root: Path) -> None:
        """Make an image a real root filesystem (deploylib.lab.rootfs): instances of it
        are chroots over it, not directories."""
        (self.images / f"{image_id}.rootfs").write_text(str(root))

    def _rootfs_lower(self, home: Path, image_id: str) -> Path | None:
        """The root filesystem below an instance: the one it was launched over."""
        if (home / "lower").exists():
            return Path((home / "lower").read_text())
        marker = self.images / f"{image_id}.rootfs"
        if not marker.exists():
            return None
        home.mkdir(parents=True, exist_ok=True)
        (home / "lower").write_text(marker.read_text())
        return Path(marker.read_text())

    def boot(self, instance_id: str, address: str, image_id: str,
             user_data: str | None = None, user_data_env: dict[str, str] | None = None,
             *, region: str = "", sshd: bool | None = None) -> None:
        """Boot the instance; at its first boot, run its user data as cloud-init would
        (emulated: after its services have started, as root, once per instance, its output
        in /var/log/cloud-init-output.log and on the console). Its SSM agent starts too.
        `sshd=False` (at its first boot; kept for later ones): a host with no sshd at all,
        reached by Run Command only."""
        with self._lock:
            holder = addresses.holder(address, self.ssh_port)
            if holder is not None and instance_id not in self._sshd:
                raise AddressTaken(address, self.ssh_port, holder)
            home = self.hosts / instance_id
            home.mkdir(parents=True, exist_ok=True)
            if sshd is False:
                (home / "no-sshd").touch()
            lower = self._rootfs_lower(home, image_id)
            if lower is not None:
                first = not (home / "ssh_host_ed25519_key").exists()
                root = self._boot_rootfs(instance_id, home, address, lower)
                if self.agents is not None and region:
                    self.agents.start_agent(instance_id, region, root, chroot=True)
                if first and user_data:
                    self._run_user_data(instance_id, home, root, user_data,
                                        user_data_env or {}, chroot=True)
                return
            first = not (home / "root").exists()
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
            key = self._host_key(instance_id, home)
            config = home / "sshd_config"
            config.write_text(self._sshd_config(address, key, root))
            self._start_sshd(instance_id, home, [SSHD, "-D", "-e", "-f", str(config)])
            self._start_enabled(root)
            if self.agents is not None and region:
                self.agents.start_agent(instance_id, region, root, chroot=False)
            if first and user_data:
                self._run_user_data(instance_id, home, root, user_data, user_data_env or {})

    def _run_user_data(self, instance_id: str, home: Path, root: Path, script: str,
                       extra: dict[str, str], chroot: bool = False) -> None:
        if chroot:
            # A real root filesystem: the script runs inside it, as on the instance (its
            # own curl, python3 and systemctl), where cloud-init keeps it.
            (root / "var/lib/cloud").mkdir(parents=True, exist_ok=True)
            (root / "var/lib/cloud/user-data").write_text(script)
            argv = ["chroot", str(root), "bash", "/var/lib/cloud/user-data"]
            env = {"DEPLOY_HOST_ROOT": "/", "PATH": rootfs.PATH, "HOME": "/root", **extra}
        else:
            # Kept in the host's root, as cloud-init keeps it: the confined script reads
            # it there.
            (root / "var/lib/cloud").mkdir(parents=True, exist_ok=True)
            (root / "var/lib/cloud/user-data").write_text(script)
            (root / "tmp").mkdir(exist_ok=True)
            argv = [*confined(root), "bash", str(root / "var/lib/cloud/user-data")]
            # Only what a boot on EC2 has (none of the lab daemon's own environment).
            env = {"DEPLOY_HOST_ROOT": str(root), "HOME": "/root", "LANG": "C.UTF-8",
                   "TMPDIR": str(root / "tmp"),
                   "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", **extra}
        (root / "var/log").mkdir(parents=True, exist_ok=True)
        output = root / "var/log/cloud-init-output.log"
        with open(output, "ab") as out:
            start = out.tell()
            proc = subprocess.Popen(argv, env=env, stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        self._user_data[instance_id] = proc

        def finished() -> None:
            rc = proc.wait()
            try:
                with open(output, "rb") as out:
                    out.seek(start)
                    printed = out.read().decode(errors="replace").splitlines()[-200:]
                with open(home / "console.log", "a") as console:
                    # cloud-init's output goes to the console as well as its log (Ubuntu's
                    # default `output: {all: '| tee -a /var/log/cloud-init-output.log'}`).
                    console.writelines(f"{line}\n" for line in printed)
                    console.write(f"[   30.000000] cloud-init[1071]: scripts-user: user data "
                                  f"exited {rc}\n")
            except OSError:
                pass  # terminated meanwhile

        threading.Thread(target=finished, daemon=True).start()

    def _boot_rootfs(self, instance_id: str, home: Path, address: str, lower: Path) -> Path:
        root = rootfs.mount(lower, home)
        for stale in rootfs.pid_dir(root).glob("*.pid"):
            stale.unlink()
        (root / "etc/app.env").write_text(f"APP_HOST={address}\n")
        key = self._host_key(instance_id, home)
        config = rootfs.prepare(root, address=address, port=self.ssh_port, host_key=key,
                                authorized_keys=self.authorized_keys)
        self._start_sshd(instance_id, home, rootfs.sshd_command(root, config))
        self._start_enabled(root, chroot=True)
        return root

    def _host_key(self, instance_id: str, home: Path) -> Path:
        """The instance's host key (made at its first boot), and this boot's console."""
        key = home / "ssh_host_ed25519_key"
        first = not key.exists()
        if first:
            # The lab's own record of every host's key (benchmarks' known_hosts).
            (self.registry / f"{instance_id}.pub").write_text(write_keypair(key) + "\n")
        # What EC2 keeps of the console: this boot's output only. cloud-init prints the
        # host keys once per instance, at its first boot, a kernel line among them.
        (home / "console.log").write_text(console_text(
            (self.registry / f"{instance_id}.pub").read_text().strip() if first else None))
        return key

    def _start_sshd(self, instance_id: str, home: Path, argv: list[str]) -> None:
        if (home / "no-sshd").exists():
            return  # port 22 closed for good: Run Command is the only way in
        with open(home / "sshd.log", "ab") as log:
            self._sshd[instance_id] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        (home / "sshd.pid").write_text(str(self._sshd[instance_id].pid))

    def _sshd_config(self, address: str, key: Path, root: Path) -> str:
        path = f"{BIN}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
        return "\n".join([
            f"ListenAddress {address}:{self.ssh_port}",
            f"HostKey {key}",
            # Read as root: the login user need not reach the lab's directory, only its
            # own home (as on a real host).
            "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand /usr/bin/cat {self.authorized_keys}",
            "AuthorizedKeysCommandUser root",
            f"AllowUsers {LOGIN_USER}",
            "PermitRootLogin no",
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

    def _start_enabled(self, root: Path, chroot: bool = False) -> None:
        wants = root / "etc/systemd/system/multi-user.target.wants"
        if not wants.is_dir():
            return
        env = ({"DEPLOY_HOST_ROOT": "/", "PATH": rootfs.PATH} if chroot
               else dict(os.environ, DEPLOY_HOST_ROOT=str(root)))
        for unit in sorted(wants.glob("*.service")):
            if not (root / "etc/systemd/system" / unit.name).exists():
                continue  # the OS's own units (a real root filesystem's ssh, e2scrub)
            argv = (rootfs.systemctl_command(root, "start", unit.stem) if chroot
                    else [str(BIN / "systemctl"), "start", unit.stem])
            subprocess.run(argv, env=env, check=False, stdin=subprocess.DEVNULL)

    def console(self, instance_id: str) -> str | None:
        """The instance's console output since it last booted (None: not a lab host)."""
        try:
            return (self.hosts / instance_id / "console.log").read_text()
        except FileNotFoundError:
            return None

    def halt(self, instance_id: str) -> None:
        """Stop the instance: its services and its sshd (sessions included)."""
        with self._lock:
            if self.agents is not None:
                self.agents.stop_agent(instance_id)
            root = self.root(instance_id)
            for pidfile in rootfs.pid_dir(root).glob("*.pid"):
                _kill_pidfile(pidfile)
                pidfile.unlink(missing_ok=True)
            script = self._user_data.pop(instance_id, None)
            if script is not None and script.poll() is None:
                try:
                    os.killpg(script.pid, signal.SIGKILL)
                except OSError:
                    pass
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
            rootfs.unmount(self.hosts / instance_id)

    def destroy(self, instance_id: str) -> None:
        with self._lock:
            self.halt(instance_id)
            rootfs.remove(self.hosts / instance_id)
            (self.registry / f"{instance_id}.pub").unlink(missing_ok=True)

    def snapshot(self, instance_id: str, image_id: str) -> None:
        with self._lock:
            home = self.hosts / instance_id
            if (home / "lower").exists():
                # A stopped instance's root is mounted again for the copy, then let go.
                running = instance_id in self._sshd
                root = rootfs.mount(Path((home / "lower").read_text()), home)
                try:
                    rootfs.copy(root, self.images / image_id)
                finally:
                    if not running:
                        rootfs.unmount(home)
                self.mark_rootfs(image_id, self.images / image_id)
                return
            root = self.root(instance_id)
            target = self.images / image_id
            if root.exists():
                shutil.copytree(root, target, symlinks=True,
                                ignore=_ignore_runtime(root))

    def copy_image(self, source_image: str, image_id: str) -> None:
        source = self.images / source_image
        if (self.images / f"{source_image}.rootfs").exists():
            rootfs.copy(source, self.images / image_id)
            self.mark_rootfs(image_id, self.images / image_id)
        elif source.exists():
            shutil.copytree(source, self.images / image_id, symlinks=True)

    def drop_image(self, image_id: str) -> None:
        rootfs.remove(self.images / image_id)
        (self.images / f"{image_id}.rootfs").unlink(missing_ok=True)

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
    """Kill processes a crashed lab left behind (sshd and services) and let go of its
    mounts (root filesystem hosts); returns how many processes."""
    killed = 0
    services = [p for root in lab_dir.glob("hosts/*/root") for p in
                rootfs.pid_dir(root).glob("*.pid")]
    for pidfile in [*lab_dir.glob("hosts/*/sshd.pid"), *services]:
        try:
            pid = int(pidfile.read_text().strip())
            if pidfile.name == "sshd.pid":
                os.killpg(pid, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
            killed += 1
        except (OSError, ValueError):
            pass
    rootfs.unmount_under(lab_dir)
    if lab_dir.exists():
        rootfs.unmount_under(roots_place(lab_dir))
    return killed
