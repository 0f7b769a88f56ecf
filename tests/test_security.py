"""CURVE on real sockets: the right password connects, a wrong one or none gets nothing, and nothing leaks."""

from __future__ import annotations

import os
import socket
import stat
import time
from pathlib import Path

import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.security import NetworkKey, NodeIdentity, node_id_from_public
from overdrive.errors import AuthError, ConfigError, UnreachableError
from tests.conftest import TestNetwork
from tests.relay import RecordingRelay

LOOPBACK = Endpoint("127.0.0.1", 0)
SECRET = b"the-exam-answers-are-42-" * 4


def _router(net: TestNetwork, insecure: bool = False) -> tuple[zmq.Socket, Endpoint]:  # type: ignore[type-arg]
    bus = net.bus(insecure=insecure)
    sock = bus.server(zmq.ROUTER)
    return sock, bus.bind(sock, LOOPBACK)


def test_right_password_connects_and_server_learns_node_id(network: TestNetwork) -> None:
    server_bus = network.bus()
    server = server_bus.server(zmq.ROUTER)
    endpoint = server_bus.bind(server, LOOPBACK)
    client_bus = network.bus()
    client = client_bus.client(zmq.DEALER)
    try:
        client_bus.connect(client, endpoint)
        client.send(b"hello")
        assert server.poll(3000)
        frames = server.recv_multipart(copy=False)
        assert frames[1].bytes == b"hello"
        assert server_bus.peer_id(frames[1]) == client_bus.node_id
    finally:
        client.close()
        server.close()


def test_wrong_password_gets_auth_error_quickly_and_nothing_through(network: TestNetwork) -> None:
    server, endpoint = _router(network)
    intruder_bus = network.bus(password="not the password")
    intruder = intruder_bus.client(zmq.DEALER)
    try:
        started = time.monotonic()
        with pytest.raises(AuthError, match=rf"authentication failed for 127\.0\.0\.1:{endpoint.port}"):
            intruder_bus.connect(intruder, endpoint)
        assert time.monotonic() - started < 3.0
        intruder.send(b"injected", zmq.NOBLOCK) if intruder.poll(0, zmq.POLLOUT) else None
        assert not server.poll(500), "a client with the wrong password got a message through"
    finally:
        intruder.close()
        server.close()


def test_plain_null_client_gets_nothing(network: TestNetwork) -> None:
    server, endpoint = _router(network)
    plain_bus = network.bus(insecure=True)
    plain = plain_bus.client(zmq.DEALER)
    try:
        with pytest.raises(AuthError):
            plain_bus.connect(plain, endpoint)
        plain.connect(str(endpoint))  # try anyway, without waiting for the handshake
        try:
            plain.send(b"injected", zmq.NOBLOCK)
        except zmq.Again:
            pass
        assert not server.poll(500), "a NULL-mechanism client got a message through"
    finally:
        plain.close()
        server.close()


def test_nobody_listening_is_unreachable_not_a_hang(network: TestNetwork) -> None:
    bus = network.bus()
    sock = bus.client(zmq.DEALER)
    # A bound but never listening TCP socket: connections to it are refused, and nobody else (another test, a
    # concurrent run on the same machine) can take the port while the test runs.
    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    port = holder.getsockname()[1]
    try:
        with pytest.raises(UnreachableError, match=r"no answer from .*: nothing is listening there"):
            bus.connect(sock, Endpoint("127.0.0.1", port), timeout=1.0)
    finally:
        sock.close()
        holder.close()


def test_a_peer_that_takes_the_connection_and_says_nothing_is_named_as_such(network: TestNetwork) -> None:
    bus = network.bus()
    sock = bus.client(zmq.DEALER)
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the kernel completes TCP connections in the backlog; nothing ever speaks
    try:
        with pytest.raises(AuthError, match=r"no secure handshake .* took the connection but did not answer"):
            bus.connect(sock, Endpoint("127.0.0.1", silent.getsockname()[1]), timeout=1.0)
    finally:
        sock.close()
        silent.close()


@pytest.mark.parametrize("insecure", [False, True], ids=["curve", "insecure"])
def test_eavesdropper_sees_payload_only_when_insecure(network: TestNetwork, insecure: bool) -> None:
    server, endpoint = _router(network, insecure=insecure)
    relay = RecordingRelay(endpoint.port)
    client_bus = network.bus(insecure=insecure)
    client = client_bus.client(zmq.DEALER)
    try:
        client_bus.connect(client, Endpoint("127.0.0.1", relay.port))
        client.send(SECRET)
        assert server.poll(3000)
        server.recv_multipart()
        deadline = time.monotonic() + 3
        while SECRET not in relay.seen() and time.monotonic() < deadline and insecure:
            time.sleep(0.01)
        captured = relay.seen()
        assert len(captured) > len(SECRET) // 2, "the relay saw no traffic: the check would prove nothing"
        assert (SECRET in captured) is insecure
        assert (network.password.encode() in captured) is False
    finally:
        client.close()
        server.close()
        relay.close()


def test_password_derivation_is_deterministic_salted_and_cached(tmp_path: Path) -> None:
    cache = tmp_path / "keys"
    started = time.monotonic()
    first = NetworkKey.from_password("pw", "lab", cache=cache)
    slow = time.monotonic() - started
    started = time.monotonic()
    second = NetworkKey.from_password("pw", "lab", cache=cache)
    fast = time.monotonic() - started
    assert first == second
    assert fast < slow / 5, f"cached derivation took {fast:.3f}s vs {slow:.3f}s uncached"
    assert NetworkKey.from_password("pw", "other-lab").server_public != first.server_public
    entries = [p for p in cache.iterdir() if p.name.startswith("netkey-")]
    assert len(entries) == 1
    assert b"pw" not in entries[0].name.encode()
    for path in cache.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_key_file_round_trip_and_errors(tmp_path: Path) -> None:
    key = NetworkKey.generate("lab")
    path = tmp_path / "lab.key"
    key.write(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert NetworkKey.from_file(path) == key
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not an overdrive key file"):
        NetworkKey.from_file(path)
    with pytest.raises(ConfigError, match="cannot read key file"):
        NetworkKey.from_file(tmp_path / "missing.key")


def test_node_identity_persists_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "id" / "identity.key"
    first = NodeIdentity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = NodeIdentity.load_or_create(path)
    assert again == first
    assert first.node_id == node_id_from_public(first.public)
    assert len(first.node_id) == 16
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="readable by others"):
        NodeIdentity.load_or_create(path)
