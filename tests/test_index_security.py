"""Bad input to a master: malformed and forged messages are dropped and counted, state unchanged; wrong password."""

from __future__ import annotations

import time
from collections.abc import Iterator

import msgspec
import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import PROTOCOL_VERSION
from overdrive.bus.kind import WrongService
from overdrive.bus.sockets import Bus
from overdrive.errors import AuthError
from overdrive.files.model import FileInfo
from overdrive.index.client import IndexClient
from overdrive.index.master import MAX_SERVING, Master, MasterConfig
from overdrive.index.pages import encode_page
from overdrive.index.protocol import CODEC, Ack, Announce, SyncBatch, SyncDone, SyncRequest, Updates
from overdrive.index.records import encode_rows
from overdrive.index.replication import ReplicationConfig
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import TestNetwork
from tests.mesh_proofs import prove_over

GOOD = FileInfo(name="ok.txt", size=1, content_hash="ab" * 32, mtime_ns=1)


@pytest.fixture
def master(network: TestNetwork) -> Iterator[Master]:
    m = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0), heartbeat=0.2))
    m.start()
    yield m
    m.stop()


def dealer(bus: Bus, master: Master) -> zmq.Socket:  # type: ignore[type-arg]
    assert master.endpoint is not None
    sock = bus.client(zmq.DEALER)
    bus.connect(sock, master.endpoint)
    return sock


def ask(sock: zmq.Socket, frames: list[object]) -> Ack | None:  # type: ignore[type-arg]
    sock.send_multipart(frames)
    if not sock.poll(3000):
        return None
    reply, _ = CODEC.decode(sock.recv_multipart())
    assert isinstance(reply, Ack)
    return reply


def test_malformed_and_forged_messages_are_dropped_counted_and_change_nothing(
    network: TestNetwork, master: Master
) -> None:
    bus = network.bus()
    with IndexClient(bus, [master.endpoint]) as client:  # type: ignore[list-item]
        client.register([GOOD], "127.0.0.1:7772")
        before = client.status()
    sock = dealer(bus, master)
    row = ("../escape", 1, "ab" * 32, bus.node_id, "127.0.0.1:1", 1, "a" * 16, 1, 1, False)
    bad_rows = encode_rows([row])  # type: ignore[list-item]
    other = network.bus().node_id
    junk: list[list[object]] = [
        [b"\xff\x00garbage"],
        [msgspec.msgpack.encode([PROTOCOL_VERSION + 7, {"t": "nbeat", "ref": 1}])],
        [msgspec.msgpack.encode([PROTOCOL_VERSION, {"t": "no-such-message"}])],
        [msgspec.msgpack.encode([PROTOCOL_VERSION, {"t": "announce", "ref": 1, "holder": bus.node_id}])],
        CODEC.encode(Updates(origin="a" * 16), bad_rows),
        CODEC.encode(Updates(origin="a" * 16), b"\x93not rows"),
        CODEC.encode(SyncBatch(ref=1), bad_rows),
        CODEC.encode(SyncBatch(ref=1, page=True), encode_page([row])),  # type: ignore[list-item]
        CODEC.encode(SyncBatch(ref=1, page=True), b"not a snapshot page"),
        CODEC.encode(SyncDone(ref=424242, vector={"a" * 16: 10**6}, batches=0)),  # a sync nobody asked for
        [*CODEC.encode(Updates(origin="a" * 16), bad_rows), b"extra frame"],
        CODEC.encode(Ack(ref=1)),
    ]
    for frames in junk:
        sock.send_multipart(frames)  # type: ignore[arg-type]
    assert sock.poll(10_000), "no answer to the message of another protocol"
    told, _ = CODEC.decode(sock.recv_multipart())  # the one message of another protocol is answered, once
    assert told == WrongService(kind="master")
    forged = Announce(ref=99, holder=other, address="127.0.0.1:7772", files=[GOOD])
    reply = ask(sock, CODEC.encode(forged))  # type: ignore[arg-type]
    assert reply is not None and not reply.ok and "holder" in reply.error
    sock.close(linger=0)
    with IndexClient(bus, [master.endpoint]) as client:  # type: ignore[list-item]
        after = client.status()
        assert client.lookup("*") == client.lookup("ok.txt")  # nothing for `other`, nothing escaped
    assert after.dropped == before.dropped + len(junk) + 1
    assert (after.entries, after.digest, after.vector) == (before.entries, before.digest, before.vector)
    assert master.stats.refused == 1


def test_a_node_cannot_register_for_another_node_id(network: TestNetwork, master: Master) -> None:
    victim, mallory = network.bus(), network.bus()
    with IndexClient(victim, [master.endpoint]) as client:  # type: ignore[list-item]
        client.register([GOOD], "10.0.0.1:7772")
    sock = dealer(mallory, master)
    tomb = Announce(ref=1, holder=victim.node_id, address="10.6.6.6:7772", removed=["ok.txt"])
    reply = ask(sock, CODEC.encode(tomb))  # type: ignore[arg-type]
    assert reply is not None and not reply.ok
    sock.close(linger=0)
    with IndexClient(mallory, [master.endpoint]) as client:  # type: ignore[list-item]
        entries = client.lookup("ok.txt")
    assert [(e.holder, e.address) for e in entries] == [(victim.node_id, "10.0.0.1:7772")]


def test_wrong_password_is_refused(network: TestNetwork, master: Master) -> None:
    with (
        IndexClient(network.bus(password="wrong"), [master.endpoint], timeout=3.0) as client,  # type: ignore[list-item]
        pytest.raises(AuthError),
    ):
        client.lookup("*")
    assert master.store.count() == 0


def test_long_names_and_pre_1970_files_travel_in_size_bounded_batches(network: TestNetwork, master: Master) -> None:
    bus = network.bus()
    long_dir = "/".join(["ü" * 60] * 16)  # about 2 KiB of UTF-8 per name
    infos = [
        FileInfo(name=f"{long_dir}/{i:04d}.txt", size=i, content_hash="cd" * 32, mtime_ns=-1_000_000 * i)
        for i in range(1200)
    ]
    with IndexClient(bus, [master.endpoint]) as client:  # type: ignore[list-item]
        assert client.register(infos, "127.0.0.1:7772") == 1200
        found = client.lookup("*")
    assert len(found) == 1200 and found[5].mtime_ns == -5_000_000
    assert master.stats.dropped == 0


def test_a_sync_whose_receiver_never_acks_is_dropped(network: TestNetwork) -> None:
    """A peer master that asks for snapshots and never acks them (dead, or hostile) cannot make the master keep
    them."""
    config = MasterConfig(
        bind=Endpoint("127.0.0.1", 0),
        heartbeat=0.2,
        sync_idle=5.0,
        replication=ReplicationConfig(batch=1),
        mesh_key=network.mesh_key,
    )
    master = Master(network.bus(), MemoryStore(), config)
    master.start()
    try:
        bus = network.bus()
        with IndexClient(bus, [master.endpoint]) as client:  # type: ignore[list-item]
            client.register([GOOD, FileInfo(name="two.txt", size=2, content_hash="cd" * 32, mtime_ns=1)], "h:1")
        sock = dealer(bus, master)
        assert prove_over(sock, bus.node_id, "peermasteraaaaaa", network.mesh_key)
        for ref in range(1, 4):  # three requests from one peer: each replaces the one before
            sock.send_multipart(CODEC.encode(SyncRequest(ref=ref, vector={}, window=1)))  # type: ignore[arg-type]
        batches = []
        while sock.poll(500):
            message, _ = CODEC.decode(sock.recv_multipart())
            batches.append(message)
        assert [type(m).__name__ for m in batches].count("SyncBatch") >= 1  # served, then stuck on credit
        assert master.stats.abandoned_syncs == 2, "a new request from the same peer replaces its old sync"
        deadline = time.monotonic() + 10
        while master.stats.abandoned_syncs < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert master.stats.abandoned_syncs == 3, "two replaced syncs and one that timed out"
        sock.close(linger=0)
    finally:
        master.stop()


def test_served_syncs_are_bounded_and_one_peer_cannot_push_out_another(network: TestNetwork) -> None:
    config = MasterConfig(
        bind=Endpoint("127.0.0.1", 0), heartbeat=0.2, replication=ReplicationConfig(batch=1), mesh_key=network.mesh_key
    )
    master = Master(network.bus(), MemoryStore(), config)
    master.start()
    socks: list[zmq.Socket] = []  # type: ignore[type-arg]
    try:
        bus = network.bus()
        with IndexClient(bus, [master.endpoint]) as client:  # type: ignore[list-item]
            client.register([GOOD, FileInfo(name="two.txt", size=2, content_hash="cd" * 32, mtime_ns=1)], "h:1")
        for ref in range(1, MAX_SERVING + 3):  # each DEALER is its own peer; every sync stalls on credit
            sock = dealer(bus, master)
            socks.append(sock)
            assert prove_over(sock, bus.node_id, f"peermaster{ref:06d}", network.mesh_key)
            sock.send_multipart(CODEC.encode(SyncRequest(ref=ref, vector={}, window=1)))  # type: ignore[arg-type]
        served = [sock.poll(3000) for sock in socks]
        assert served == [True] * MAX_SERVING + [False, False], "the first 16 served, later peers refused"
        assert master.stats.abandoned_syncs == 2
    finally:
        for sock in socks:
            sock.close(linger=0)
        master.stop()
