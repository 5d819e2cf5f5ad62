"""The SSH module against a real OpenSSH sshd on loopback."""

from __future__ import annotations

import base64
from pathlib import Path

import paramiko
import pytest

from deploylib import render, ssh
from deploylib.errors import HostError, HostKeyError, RemoteCommandError
from deploylib.lab.accounts import LOGIN_USER
from deploylib.lab.hosts import write_keypair
from tests.conftest import NO_SUDO_USER, loopback


def endpoint(server, keys=None, name="i-test"):
    trusted = keys if keys is not None else (ssh.read_public_key_file(f"{server.host_key}.pub"),)
    return ssh.Endpoint(name=name, address=server.address, port=server.port,
                        trusted_keys=tuple(trusted))


def connection(server, user="root", **kw):
    return ssh.Connection(endpoint(server, **kw),
                          ssh.Credentials(user=user, key_file=str(server.client_key)),
                          connect_timeout=5)


def test_scripts_run_as_root_through_the_login_users_passwordless_sudo(sshd):
    with connection(sshd, user=LOGIN_USER) as conn:
        assert conn.run("id -un").output.strip() == LOGIN_USER
        assert conn.run_as_root("id -un\n").output.strip() == "root"
        # what the lab's hosts need through sudo: their root and the stand-ins' PATH
        assert conn.run_as_root("echo $DEPLOY_HOST_ROOT\n").output.strip() == str(sshd.root)
    with connection(sshd) as conn:
        assert conn.run_as_root("id -un\n").output.strip() == "root"  # root: no sudo


def test_a_login_user_without_passwordless_sudo_is_one_line_with_the_fix(sshd):
    with connection(sshd, user=NO_SUDO_USER) as conn:
        with pytest.raises(HostError, match="cannot become root without a password") as info:
            conn.run_as_root("touch /tmp/should-not-exist\n")
    assert "NOPASSWD" in info.value.line() and "\n" not in info.value.line()


def test_a_failing_script_run_through_sudo_keeps_its_own_exit_status(sshd):
    with connection(sshd, user=LOGIN_USER) as conn:
        with pytest.raises(RemoteCommandError) as info:
            conn.run_as_root("echo 'sudo: not really' >&2; exit 1\n")
    assert info.value.exit_status == 1


def test_one_connection_serves_every_command_and_transfer(sshd, tmp_path):
    local = tmp_path / "payload"
    local.write_bytes(b"x" * 300_000)
    with connection(sshd) as conn:
        for i in range(5):
            assert conn.run(f"echo {i}").output.strip() == str(i)
        conn.put(str(local), str(sshd.root / "payload"))
        assert conn.run("bash -s", stdin="echo $DEPLOY_HOST_ROOT\n").output.strip() == str(
            sshd.root)
        assert conn.opened == 1
    assert (sshd.root / "payload").read_bytes() == local.read_bytes()


def test_a_push_streams_the_file_whole_to_any_path_and_fails_clearly(sshd, tmp_path):
    import os

    local = tmp_path / "release.tar.gz"
    local.write_bytes(os.urandom(3 * ssh.BLOCK + 12345))  # several blocks and a tail
    odd = sshd.root / "it's a $(dir)"
    odd.mkdir()
    with connection(sshd) as conn:
        conn.put(str(local), str(odd / "r.tar.gz"))
        assert (odd / "r.tar.gz").read_bytes() == local.read_bytes()
        assert (odd / "r.tar.gz").stat().st_mode & 0o077 == 0  # private to its owner
        with pytest.raises(RemoteCommandError, match="exited 1"):
            conn.put(str(local), str(sshd.root / "no-such-dir" / "r.tar.gz"))


def test_a_release_is_pushed_into_a_directory_made_for_it_only_root_enters(sshd, tmp_path):
    """Nothing planted at a name someone could guess is followed: the landing directory
    is new (mktemp -d, as root) and private; the install script removes it."""
    import os
    import stat

    local = tmp_path / "release.tar.gz"
    local.write_bytes(os.urandom(ssh.BLOCK + 7))
    with connection(sshd, user=LOGIN_USER) as conn:
        first, second = (conn.put_private(str(local), "i-0000000a"),
                         conn.put_private(str(local), "i-0000000a"))
    assert first != second and render.PUSHED.fullmatch(first) and ".i-0000000a." in first
    for path in (Path(first), Path(second)):
        try:
            assert path.read_bytes() == local.read_bytes()
            landing = path.parent.stat()
            assert landing.st_uid == 0 and stat.S_IMODE(landing.st_mode) == 0o700
            assert path.stat().st_uid == 0 and stat.S_IMODE(path.stat().st_mode) == 0o600
        finally:
            path.unlink()
            path.parent.rmdir()


def test_the_connection_prefers_aes_gcm(sshd):
    with connection(sshd) as conn:
        transport = conn.open().get_transport()
        assert transport.local_cipher == "aes128-gcm@openssh.com"


def test_a_failing_command_raises_with_its_exit_status_and_last_line(sshd):
    with connection(sshd) as conn:
        with pytest.raises(RemoteCommandError) as info:
            conn.run("echo starting; echo 'it broke' >&2; exit 7")
        assert info.value.exit_status == 7
        assert "exited 7: it broke" in info.value.line()
        assert conn.run("exit 3", check=False).exit_status == 3


def test_every_command_has_a_deadline(sshd):
    with connection(sshd) as conn:
        with pytest.raises(RemoteCommandError, match="did not finish within 0.5s"):
            conn.run("sleep 5", timeout=0.5)
        assert conn.run("echo still usable").output.strip() == "still usable"


def test_a_host_key_other_than_the_trusted_one_stops_the_connection(sshd, tmp_path):
    other = tmp_path / "other"
    write_keypair(other)
    with connection(sshd, keys=(ssh.read_public_key_file(f"{other}.pub"),)) as conn:
        with pytest.raises(HostKeyError, match="different SSH host key"):
            conn.open()


def test_no_trusted_key_means_no_connection(sshd):
    with connection(sshd, keys=()) as conn:
        with pytest.raises(HostKeyError, match="no trusted host key"):
            conn.open()


def test_nothing_listening_is_a_host_error_naming_the_host():
    key = paramiko.PKey.from_type_string("ssh-ed25519", base64.b64decode(
        "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"))
    conn = ssh.Connection(ssh.Endpoint("i-gone", loopback(99, 250), 2022, (key,)),
                          ssh.Credentials("root"), connect_timeout=1)
    with pytest.raises(HostError, match="cannot connect") as info:
        conn.open()
    assert "i-gone" in info.value.line()


def test_the_pool_keeps_one_connection_per_host(sshd):
    creds = ssh.Credentials(user="root", key_file=str(sshd.client_key))
    with ssh.Pool(creds) as pool:
        for _ in range(3):
            pool.get(endpoint(sshd)).run("true")
        assert pool.connections_opened() == 1


CONSOLE = """[   10.0] cloud-init: something
-----BEGIN SSH HOST KEY KEYS-----
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl root@ip-10-0-0-1
-----END SSH HOST KEY KEYS-----
[   11.0] more boot output
"""


def test_host_keys_are_read_from_ec2_console_output():
    keys = ssh.host_keys_from_console(CONSOLE)
    assert [k.get_name() for k in keys] == ["ssh-ed25519"]
    assert ssh.host_keys_from_console("no keys printed yet") == []


def test_console_noise_among_the_keys_is_passed_over():
    ed25519 = CONSOLE.splitlines()[2]
    noisy = "\n".join([
        "-----BEGIN SSH HOST KEY KEYS-----",
        "[   12.345678] random: crng init done",
        "ecdsa-sha2-nistp256 AAAA-cut-off-by-a-kernel-line",
        ed25519,
        "[   12.400000] EXT4-fs (xvda1): resized filesystem",
        ed25519,  # printed twice: one key
        "-----END SSH HOST KEY KEYS-----"])
    keys = ssh.host_keys_from_console("boot\n" + noisy + "\nlogin:")
    assert [k.get_name() for k in keys] == ["ssh-ed25519"]


def test_quote_is_shlex_quote():
    assert ssh.quote("a b; rm -rf /") == "'a b; rm -rf /'"
