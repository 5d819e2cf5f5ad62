"""SSH with paramiko: one connection per host per run, strict host keys, timeouts.

Host keys are checked against a trusted source handed in by the caller (the lab's
registry, or for real EC2 the keys the instance printed to its console); an unknown or
changed key stops the run. Nothing here builds a shell command from unquoted input:
callers send rendered scripts on stdin, and `quote` is shlex.quote.
"""

from __future__ import annotations

import base64
import re
import select
import shlex
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

import paramiko

from deploylib import render, waits
from deploylib.errors import HostError, HostKeyError, RemoteCommandError, WaitTimeout

quote = shlex.quote
OUTPUT_LIMIT = 64 * 1024
# AES-GCM first: one pass for encryption and integrity, against AES-CTR plus a separate
# HMAC (paramiko's default order); OpenSSH has offered it since 6.2. The rest stay as
# the fallback, so a server without GCM still connects.
CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "aes128-ctr", "aes192-ctr",
           "aes256-ctr")
BLOCK = 1 << 20  # what a push reads and sends at a time
# What sudo says when it will not run a command without a password (sudo -n).
_SUDO_REFUSED = ("a password is required", "a terminal is required",
                 "not in the sudoers file", "is not allowed to run sudo")


@dataclass(frozen=True)
class Endpoint:
    """Where a host listens and which keys it must present."""

    name: str  # the instance id: what errors and reports name
    address: str
    port: int
    trusted_keys: tuple[paramiko.PKey, ...]


@dataclass(frozen=True)
class Credentials:
    user: str
    key_file: str | None = None  # None: use the SSH agent


@dataclass(frozen=True)
class Result:
    exit_status: int
    output: str  # stdout and stderr interleaved, the last OUTPUT_LIMIT bytes


_CONSOLE_KEYS = re.compile(
    r"-----BEGIN SSH HOST KEY KEYS-----(.*?)-----END SSH HOST KEY KEYS-----", re.S)
# One key as cloud-init prints it: type, base64, maybe a comment. Anything else between
# the markers (a kernel message written to the console at the same moment) is noise.
_KEY_LINE = re.compile(r"^\s*(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(?:256|384|521))"
                       r"\s+([A-Za-z0-9+/]+={0,2})(?:\s|$)")


def host_keys_from_console(text: str) -> list[paramiko.PKey]:
    """Parse the host keys cloud-init prints to an EC2 instance's console output: every
    key line between its markers, lines of other output among them passed over."""
    keys: list[paramiko.PKey] = []
    for block in _CONSOLE_KEYS.findall(text or ""):
        for line in block.splitlines():
            match = _KEY_LINE.match(line)
            if not match:
                continue
            try:
                key = parse_public_key(match.group(1), match.group(2))
            except (ValueError, paramiko.SSHException):
                continue  # cut off or garbled: not a key to trust
            if all(key.asbytes() != k.asbytes() for k in keys):
                keys.append(key)
    return keys


def parse_public_key(key_type: str, b64: str) -> paramiko.PKey:
    data = base64.b64decode(b64)
    return paramiko.PKey.from_type_string(key_type, data)


def read_public_key_file(path: str) -> paramiko.PKey:
    with open(path) as f:
        key_type, b64 = f.read().split()[:2]
    return parse_public_key(key_type, b64)


def _transport(*args: Any, **kwargs: Any) -> paramiko.Transport:
    transport = paramiko.Transport(*args, **kwargs)
    transport.get_security_options().ciphers = CIPHERS
    return transport


class Connection:
    """One SSH connection to one host; opens on first use, closes in __exit__."""

    def __init__(self, endpoint: Endpoint, credentials: Credentials, *,
                 connect_timeout: float = 10.0, retry_for: float = 0.0):
        self.endpoint = endpoint
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        # A refused or dropped connect is retried with backoff for this long: a host
        # restarting sshd, or a network blip, does not fail a rollout.
        self.retry_for = retry_for
        self._client: paramiko.SSHClient | None = None
        self._lock = threading.Lock()
        self.opened = 0  # how many TCP connections this object made (benchmarks count it)

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _host_key_name(self) -> str:
        e = self.endpoint
        return e.address if e.port == 22 else f"[{e.address}]:{e.port}"

    def open(self, *, retry: bool = True) -> paramiko.SSHClient:
        """The open connection; connect (retrying while `retry_for` allows) if needed.

        A host key problem is never retried: it stops the run at once."""
        if not retry or self.retry_for <= 0:
            return self._open()
        last: list[HostError] = []

        def attempt() -> paramiko.SSHClient | None:
            try:
                return self._open()
            except HostKeyError:
                raise
            except HostError as exc:
                last[:] = [exc]
                return None

        try:
            return waits.until(attempt, timeout=self.retry_for, what="SSH to connect",
                               resource=self.endpoint.name, fix="", first=0.2, longest=2.0)
        except WaitTimeout:
            exc = last[0]
            raise HostError(f"{exc.problem} (retried for {self.retry_for:g}s)",
                            resource=exc.resource, fix=exc.fix) from None

    def _open(self) -> paramiko.SSHClient:
        with self._lock:
            transport = self._client.get_transport() if self._client is not None else None
            if self._client is not None and transport is not None and transport.is_active():
                return self._client
            e = self.endpoint
            if not e.trusted_keys:
                raise HostKeyError("no trusted host key is known for this host",
                                   resource=f"{e.name} ({e.address})",
                                   fix="wait for the instance to publish its host keys, or "
                                   "check the trusted-key source for this environment")
            client = paramiko.SSHClient()
            # Strict: only the keys from the trusted source; never AutoAddPolicy.
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            for key in e.trusted_keys:
                client.get_host_keys().add(self._host_key_name(), key.get_name(), key)
            try:
                client.connect(
                    e.address, port=e.port, username=self.credentials.user,
                    key_filename=self.credentials.key_file,
                    allow_agent=self.credentials.key_file is None, look_for_keys=False,
                    timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                    auth_timeout=self.connect_timeout, compress=False,
                    transport_factory=_transport,
                )
            except paramiko.BadHostKeyException:
                client.close()
                raise HostKeyError("the host presented a different SSH host key than the "
                                   "trusted one", resource=f"{e.name} ({e.address})",
                                   fix="stop: this may be an impostor; check the instance "
                                   "before trusting a new key") from None
            except paramiko.SSHException as exc:
                client.close()
                if "not found in known_hosts" in str(exc):
                    raise HostKeyError("the host's SSH key is not a trusted one",
                                       resource=f"{e.name} ({e.address})",
                                       fix="check the trusted-key source for this "
                                       "environment") from None
                raise HostError(f"SSH failed: {exc}", resource=f"{e.name} ({e.address})",
                                fix="check sshd on the host and the SSH user/key") from None
            except (TimeoutError, OSError) as exc:
                client.close()
                raise HostError(f"cannot connect to port {e.port}: {exc}",
                                resource=f"{e.name} ({e.address})",
                                fix="check the instance is running and the security group "
                                "allows SSH from here") from None
            transport = client.get_transport()
            if transport is not None:
                transport.set_keepalive(15)
            self._client = client
            self.opened += 1
            return client

    def run(self, command: str, *, stdin: str | BinaryIO | None = None,
            timeout: float = 120.0, check: bool = True) -> Result:
        """Run a command with a deadline. stdin: a rendered script, sent in one go, or a
        file, streamed in blocks (a peer that stops reading fails it, never hangs it)."""
        client = self.open()
        transport = client.get_transport()
        assert transport is not None
        chan = transport.open_session(timeout=self.connect_timeout)
        try:
            chan.set_combine_stderr(True)
            chan.exec_command(command)
            try:
                if isinstance(stdin, str):
                    chan.sendall(stdin.encode())
                elif stdin is not None:
                    chan.settimeout(max(self.connect_timeout, 30.0))
                    while block := stdin.read(BLOCK):
                        chan.sendall(block)
                    chan.settimeout(None)
                chan.shutdown_write()
            except (OSError, paramiko.SSHException) as exc:
                # The command ended early (its exit status says why) or the link died.
                chan.settimeout(None)
                if not chan.exit_status_ready():
                    raise HostError(f"the connection broke while sending: {exc}",
                                    resource=f"{self.endpoint.name} ({self.endpoint.address})",
                                    fix="check the host is up and its disk has room, then "
                                    "resume") from None
            output = self._read_until_exit(chan, timeout, command)
            status = chan.recv_exit_status()
        finally:
            chan.close()
        result = Result(status, output)
        if check and status != 0:
            raise RemoteCommandError(
                f"remote command exited {status}: {_last_line(output)}",
                resource=f"{self.endpoint.name} ({self.endpoint.address})",
                exit_status=status, output=output)
        return result

    def _read_until_exit(self, chan: paramiko.Channel, timeout: float, command: str) -> str:
        deadline = time.monotonic() + timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            while chan.recv_ready():
                data = chan.recv(65536)
                chunks.append(data)
                size += len(data)
                while size > OUTPUT_LIMIT and len(chunks) > 1:
                    size -= len(chunks.pop(0))
            if chan.exit_status_ready() and not chan.recv_ready():
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RemoteCommandError(
                    f"remote command did not finish within {timeout:g}s",
                    resource=f"{self.endpoint.name} ({self.endpoint.address})",
                    fix="check the host's load and the command's log; raise the timeout "
                    "if the work is legitimately slow", exit_status=-1,
                    output=b"".join(chunks).decode(errors="replace"))
            select.select([chan], [], [], min(remaining, 0.5))
        return b"".join(chunks).decode(errors="replace")

    def run_as_root(self, script: str, *, timeout: float = 120.0) -> Result:
        """Run a rendered script as root: through the login user's passwordless sudo (as
        `ubuntu` has on Ubuntu AMIs), or directly when the login user is root."""
        return self._as_root("bash -s", script, timeout)

    def put_private(self, local: str, label: str, *, timeout: float = 600.0) -> str:
        """Copy a file to the host into a directory made for it (mktemp -d, as root, mode
        0700): nothing planted at a name someone could guess is followed or read. Returns
        the file's path there; the install script moves it out and removes the directory."""
        with open(local, "rb") as source:
            out = self._as_root(f"sh -c {quote(render.push_script(label))}", source,
                                timeout).output
        path = out.strip().splitlines()[-1] if out.strip() else ""
        if not render.PUSHED.fullmatch(path):
            raise HostError(f"the host did not say where the pushed release is ({path!r})",
                            resource=f"{self.endpoint.name} ({self.endpoint.address})",
                            fix="check mktemp and /var/tmp on the host")
        return path

    def _as_root(self, command: str, stdin: Any, timeout: float) -> Result:
        if self.credentials.user == "root":
            return self.run(command, stdin=stdin, timeout=timeout)
        try:
            return self.run(f"sudo -n -- {command}", stdin=stdin, timeout=timeout)
        except RemoteCommandError as exc:
            # sudo itself refused (exit 1, its own words first), before the script ran.
            first = exc.output.strip().splitlines()[:1]
            if exc.exit_status == 1 and first and any(w in first[0] for w in _SUDO_REFUSED):
                raise HostError(f"{self.credentials.user} cannot become root without a "
                                f"password ({first[0]})",
                                resource=f"{self.endpoint.name} ({self.endpoint.address})",
                                fix=f"give {self.credentials.user} passwordless sudo (a "
                                "NOPASSWD rule, as Ubuntu AMIs give `ubuntu`) or set "
                                "ssh_user to a user that has it") from None
            raise

    def put(self, local: str, remote: str, *, timeout: float = 600.0) -> None:
        """Copy a file to the host: streamed into `cat` over one channel of the run's
        connection. SFTP (paramiko's, pipelined) does the same work with a request and an
        acknowledgement per 32 KB block, parsed in Python: about a third slower."""
        with open(local, "rb") as source:
            self.run(f"umask 077 && cat > {quote(remote)}", stdin=source, timeout=timeout)

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


def _last_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _identity(e: Endpoint) -> tuple:
    return (e.address, e.port, tuple(sorted(k.asbytes() for k in e.trusted_keys)))


class Pool:
    """One Connection per host for the whole run, closed together."""

    def __init__(self, credentials: Credentials, *, connect_timeout: float = 10.0,
                 retry_for: float = 0.0):
        self.credentials = credentials
        self.connect_timeout = connect_timeout
        self.retry_for = retry_for
        self._conns: dict[str, Connection] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, endpoint: Endpoint) -> Connection:
        with self._lock:
            conn = self._conns.get(endpoint.name)
            if conn is None or _identity(conn.endpoint) != _identity(endpoint):
                if conn is not None:
                    conn.close()
                conn = Connection(endpoint, self.credentials,
                                  connect_timeout=self.connect_timeout, retry_for=self.retry_for)
                self._conns[endpoint.name] = conn
            return conn

    def connections_opened(self) -> int:
        return sum(c.opened for c in self._conns.values())

    def close(self) -> None:
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()
