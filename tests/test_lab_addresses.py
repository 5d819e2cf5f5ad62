"""The lab's loopback ranges: every lab on the machine gets ranges of its own."""

from __future__ import annotations

import os
import socket

import pytest

from deploylib.errors import DeployError
from deploylib.lab import addresses
from tests.conftest import own_range

# Ranges of this worker's own, above the ones its labs take (conftest: own_range).
FIRST = own_range(0)


def test_two_labs_asking_for_the_same_ranges_get_ranges_of_their_own(tmp_path):
    one = addresses.claim(FIRST, 3, directory=tmp_path)
    two = addresses.claim(FIRST, 3, directory=tmp_path)
    try:
        assert one.first == FIRST
        assert two.first == FIRST + 3  # the first three free after the first lab's
    finally:
        one.release()
        two.release()


def test_ranges_are_free_again_once_their_lab_lets_go(tmp_path):
    addresses.claim(FIRST, 3, directory=tmp_path).release()
    again = addresses.claim(FIRST, 3, directory=tmp_path)
    try:
        assert again.first == FIRST
    finally:
        again.release()


def test_a_range_something_listens_on_is_passed_over(tmp_path):
    with socket.socket() as stray:
        stray.bind((f"127.{FIRST + 1}.0.9", 0))
        stray.listen()
        claim = addresses.claim(FIRST, 2, directory=tmp_path)
        try:
            assert claim.first == FIRST + 2
        finally:
            claim.release()


def test_who_listens_on_an_address_is_named():
    with socket.socket() as server:
        server.bind((f"127.{FIRST}.0.7", 0))
        port = server.getsockname()[1]
        assert addresses.holder(f"127.{FIRST}.0.7", port) is None  # bound, not listening
        server.listen()
        assert addresses.holder(f"127.{FIRST}.0.7", port) == \
            f"pid {os.getpid()} ({open('/proc/self/comm').read().strip()})"
    assert addresses.holder(f"127.{FIRST}.0.7", port) is None


def test_no_free_ranges_is_one_line_with_the_fix(tmp_path):
    held = addresses.claim(addresses.LAST_RANGE - 1, 2, directory=tmp_path)
    try:
        with pytest.raises(DeployError) as err:
            addresses.claim(addresses.LAST_RANGE - 1, 2, directory=tmp_path)
        assert "no 2 free loopback ranges" in str(err.value)
        assert "lab.down" in err.value.fix
    finally:
        held.release()
