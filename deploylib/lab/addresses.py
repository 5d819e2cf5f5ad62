"""The loopback ranges a lab's regions live on, held so that no two labs share one.

Each region of a lab is a VPC on a loopback /16 (127.N.0.0/16), so its instances have
real, reachable addresses. Several labs run side by side on one machine — the demo's,
which a newcomer leaves up, each test worker's, another clone's — and two of them on one
range would hand the same address to two hosts: one host's sshd cannot bind, and the
tool, connecting, meets the other lab's host (a different host key). So a lab *claims*
its ranges for as long as its daemon lives: an advisory lock per range, in a directory
every lab on the machine shares, released by the kernel when the daemon exits however it
ends (no stale claim outlives a killed lab). A range something else listens on (a lab
from before claims, a stray sshd) is passed over too.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from deploylib.errors import DeployError

LAST_RANGE = 240
CLAIMS_DIR = Path(tempfile.gettempdir()) / "deploylab-ranges"


@dataclass
class Claim:
    """Ranges 127.first.0.0/16 … held by this process until `release` or its exit."""

    first: int
    count: int
    _fds: list[int] = field(default_factory=list, repr=False)

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)  # closing the descriptor lets go of its lock
        self._fds.clear()


def claim(first: int, count: int, *, directory: Path | None = None) -> Claim:
    """The first `count` consecutive ranges from `first` on that no other lab holds and
    nothing listens on; held until released or this process exits."""
    directory = directory or CLAIMS_DIR
    directory.mkdir(mode=0o1777, parents=True, exist_ok=True)
    listening = {int(ip.split(".")[1]) for ip, _port, _inode in listeners()
                 if ip.startswith("127.") and ip != "127.0.0.1"}
    for start in range(first, LAST_RANGE - count + 2):
        if any(n in listening for n in range(start, start + count)):
            continue
        fds: list[int] = []
        for n in range(start, start + count):
            fd = os.open(directory / f"127.{n}", os.O_CREAT | os.O_RDWR, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                break
            fds.append(fd)
            # Who holds it, for a person looking (the lock is what counts).
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        if len(fds) == count:
            return Claim(start, count, fds)
        for fd in fds:
            os.close(fd)
    raise DeployError(f"no {count} free loopback ranges from 127.{first}.0.0/16 to "
                      f"127.{LAST_RANGE}.0.0/16", resource=str(directory),
                      fix="stop labs you no longer need (`invoke lab.down` in their "
                      "directories)")


def listeners() -> list[tuple[str, int, int]]:
    """Every IPv4 socket listening on this machine: (address, port, socket inode)."""
    found = []
    try:
        lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    except OSError:
        return []
    for line in lines:
        parts = line.split()
        if len(parts) < 10 or parts[3] != "0A":  # 0A: LISTEN
            continue
        hex_ip, hex_port = parts[1].split(":")
        ip = socket.inet_ntoa(struct.pack("<I", int(hex_ip, 16)))
        found.append((ip, int(hex_port, 16), int(parts[9])))
    return found


def holder(address: str, port: int) -> str | None:
    """Who listens on address:port (or on every address at that port): "pid N (name)",
    "a process" when it cannot be told, None when nothing does."""
    inodes = {inode for ip, p, inode in listeners()
              if p == port and ip in (address, "0.0.0.0")}
    if not inodes:
        return None
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fds = list((proc / "fd").iterdir())
        except OSError:
            continue  # gone, or not ours to read
        for fd in fds:
            try:
                target = os.readlink(fd)
            except OSError:
                continue  # closed since it was listed: the process's others still count
            if target.startswith("socket:[") and int(target[8:-1]) in inodes:
                try:
                    name = (proc / "comm").read_text().strip()
                except OSError:
                    name = "gone since"
                return f"pid {proc.name} ({name})"
    return "a process"
