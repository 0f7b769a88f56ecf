"""Connection limits: one machine cannot hold more than its share of a listening socket, nor lock out the class."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.admission import Admission, Limits
from overdrive.bus.monitor import await_handshake
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.bus.sockets import Bus, Security
from overdrive.errors import UnreachableError


def test_one_address_is_held_to_its_share() -> None:
    admission = Admission(Limits(per_address=2, total=10))
    for fd in (10, 11, 12):
        admission.accepted(fd, "10.0.0.7")
    assert admission.admit("10.0.0.7") is False  # three live connections from one address, two allowed
    admission.closed(12)
    assert admission.admit("10.0.0.7") is True
    assert admission.admit("10.0.0.8") is True  # another machine is not affected
    assert admission.refused == 1


def test_total_counts_each_address_at_most_its_share() -> None:
    admission = Admission(Limits(per_address=2, total=4))
    fd = iter(range(100, 200))
    for _ in range(2):
        admission.accepted(next(fd), "10.0.0.1")
        assert admission.admit("10.0.0.1")
    admission.accepted(next(fd), "10.0.0.2")
    assert admission.admit("10.0.0.2")
    for _ in range(50):  # a flood of connections from one admitted address counts only two towards the total
        admission.accepted(next(fd), "10.0.0.1")
    admission.accepted(next(fd), "10.0.0.3")
    assert admission.admit("10.0.0.3")  # total: 2 + 1 + 1
    admission.accepted(next(fd), "10.0.0.4")
    assert not admission.admit("10.0.0.4")  # would be 5 > 4


def test_addresses_that_never_authenticated_do_not_count_towards_the_total() -> None:
    admission = Admission(Limits(per_address=2, total=3))
    for fd in range(500):  # an outsider's half-open connections never reach ZAP
        admission.accepted(fd, "10.9.9.9")
    admission.accepted(1000, "10.0.0.1")
    assert admission.admit("10.0.0.1")
    for fd in range(500):
        admission.closed(fd)
    assert admission.live("10.9.9.9") == 0
    assert admission.live() == 1


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError):
        Limits(per_address=0, total=5)
    with pytest.raises(ValueError):
        Limits(per_address=6, total=5)


@pytest.fixture
def key() -> NetworkKey:
    return NetworkKey.generate("admission")


@pytest.fixture
def server(key: NetworkKey) -> Iterator[tuple[Bus, zmq.Socket, int]]:  # type: ignore[type-arg]
    bus = Bus(Security(NodeIdentity.generate(), key))
    sock = bus.server(zmq.ROUTER, limits=Limits(per_address=2, total=3))
    port = bus.bind(sock, Endpoint("127.0.0.1", 0)).port
    try:
        yield bus, sock, port
    finally:
        sock.close(linger=0)
        bus.close()


def test_a_full_server_refuses_with_its_own_message_and_frees_slots(
    key: NetworkKey,
    server: tuple[Bus, zmq.Socket, int],  # type: ignore[type-arg]
) -> None:
    bus, sock, port = server
    admission = bus.admission(sock)
    assert admission is not None
    client = Bus(Security(NodeIdentity.generate(), key))
    try:
        held = []
        for _ in range(2):
            conn = client.client(zmq.DEALER)
            await_handshake(conn, f"tcp://127.0.0.1:{port}", "127.0.0.1")
            held.append(conn)
        extra = client.client(zmq.DEALER)
        with pytest.raises(UnreachableError, match="is full"):
            await_handshake(extra, f"tcp://127.0.0.1:{port}", "127.0.0.1")
        # Another machine (a second loopback source address) still gets in.
        other = client.client(zmq.DEALER)
        await_handshake(other, f"tcp://127.0.0.2:0;127.0.0.1:{port}", "127.0.0.2")
        held.append(other)
        assert admission.refused >= 1
        held.pop(0).close(linger=0)
        deadline = time.monotonic() + 5
        while admission.live("127.0.0.1") > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        again = client.client(zmq.DEALER)
        await_handshake(again, f"tcp://127.0.0.1:{port}", "127.0.0.1")
        held.append(again)
        for conn in (*held, extra):
            conn.close(linger=0)
    finally:
        client.close()
