"""Lab hosts: an instance whose address something else holds is refused at once."""

from __future__ import annotations

import os
import socket

import pytest

from deploylib.lab.hosts import AddressTaken, HostFarm
from tests.conftest import open_to_services, own_range


def test_a_host_whose_address_is_held_fails_at_once_naming_the_holder(tmp_path):
    address = f"127.{own_range(10)}.0.5"
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        other.bind((address, 0))
        other.listen()
        # (a directory services can pass through: the hosts' roots then live in it, not
        # in one of the system's temporary directory the test would leave behind)
        farm = HostFarm(open_to_services(tmp_path), ssh_port=other.getsockname()[1])
        with pytest.raises(AddressTaken) as err:
            farm.boot("i-0123456789abcdef0", address, "ami-12345678")
    assert f"{address}:{farm.ssh_port} is held by pid {os.getpid()}" in str(err.value)
    assert "lab.down" in str(err.value)
    assert not (farm.hosts / "i-0123456789abcdef0").exists()  # nothing half-made
