"""The mesh core in memory (time passed in) and the master shell over real sockets in one process."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import Message
from overdrive.bus.credit import Window
from overdrive.errors import StoreError, UnreachableError
from overdrive.files.model import FileInfo
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig, transmit
from overdrive.index.mesh import Dial, Mesh, Peer, Send
from overdrive.index.protocol import (
    Digest,
    MasterBeat,
    MeshProof,
    StatusQuery,
    SyncAck,
    SyncBatch,
    SyncDone,
    SyncRequest,
    Updates,
)
from overdrive.index.records import RecordRow, encode_rows
from overdrive.index.stores import BUCKETS, open_store
from overdrive.index.stores.memory import MemoryStore
from overdrive.index.stores.sqlite import SqliteStore
from tests.conftest import TestNetwork
from tests.mesh_proofs import KEY, answer_link, prove_to


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def test_digest_anti_entropy_repairs_a_silent_divergence(network: TestNetwork, tmp_path: Path) -> None:
    config = {"heartbeat": 0.2, "master_timeout": 1.5, "anti_entropy": 0.5}
    first = Master(
        network.bus(),
        open_store(f"sqlite://{tmp_path / 'a.db'}"),
        MasterConfig(bind=Endpoint("127.0.0.1", 0), mesh_key=network.mesh_key, **config),
    )  # type: ignore[arg-type]
    first.start()
    assert first.endpoint is not None
    second = Master(
        network.bus(),
        open_store(f"sqlite://{tmp_path / 'b.db'}"),
        MasterConfig(bind=Endpoint("127.0.0.1", 0), peers=(first.endpoint,), mesh_key=network.mesh_key, **config),
    )  # type: ignore[arg-type]
    second.start()
    assert second.endpoint is not None
    try:
        wait_until(
            lambda: len(first.status().masters_online) == 1 == len(second.status().masters_online),
            20,
            "the two masters to meet",
        )
        # a row that reached the second master's database without passing through replication (restored
        # backup, a bug, a lost tombstone...): the version vectors agree, only the digests can tell
        stray = (
            "restored/from backup.txt",
            7,
            "ef" * 32,
            "holderzzzzzzzzzz",
            "10.0.0.7:7772",
            1,
            "originzzzzzzzzzz",
            1,
            1_790_000_000_000 << 16,
            False,
        )
        with open_store(f"sqlite://{tmp_path / 'b.db'}") as side_door:
            side_door.apply([stray])
        with IndexClient(network.bus(), [first.endpoint]) as client:
            wait_until(lambda: len(client.lookup("restored/from backup.txt")) == 1, 20, "anti-entropy to repair it")
        assert first.stats.repairs + second.stats.repairs >= 1
        wait_until(lambda: first.status().digest == second.status().digest, 20, "equal digests")
    finally:
        second.stop()
        first.stop()
        first.store.close()
        second.store.close()


class _Clock:
    """The duration clock of a mesh: only what a full scan costs moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _SlowStore(MemoryStore):
    """A memory store whose checksum scan takes ``scan`` seconds on ``clock`` and is logged."""

    def __init__(self, clock: _Clock, scan: float = 0.0) -> None:
        super().__init__()
        self.clock, self.scan = clock, scan
        self.scans: list[float] = []

    def checksums(self) -> list[int]:
        self.scans.append(self.clock.now)
        self.clock.now += self.scan
        return super().checksums()


PEER = "peeraaaaaaaaaaaa"
PEER_AT = "10.0.0.2:7771"
LINK = Peer.link(PEER_AT)


def _mesh(store: MemoryStore | None = None, clock: _Clock | None = None, **config: float) -> Mesh:
    """A mesh at t=1000 listening at 10.0.0.1 with one configured peer, its opening actions taken."""
    clock = clock or _Clock()
    settings = MasterConfig(peers=(Endpoint("10.0.0.2", 7771),), master_timeout=100.0, mesh_key=KEY, **config)  # type: ignore[arg-type]
    mesh = Mesh(store or MemoryStore(), settings, now=clock.now, clock=clock, node_id="selfaaaaaaaaaaaa")
    mesh.start("10.0.0.1:7771", clock.now)
    mesh.tick(clock.now)
    opening = answer_link(mesh, mesh.outbox(clock.now), PEER_AT, PEER, clock.now)  # the peer proves the mesh key
    assert opening[0] == Dial(PEER_AT)
    assert [type(a.message) for a in opening[1:] if isinstance(a, Send)] == [MeshProof, SyncRequest]
    return mesh


def _beat(vector: dict[str, int]) -> MasterBeat:
    return MasterBeat(origin=PEER, address=PEER_AT, vector=vector, masters={}, nodes=[])


def _sent(mesh: Mesh, now: float) -> list[Message]:
    return [a.message for a in mesh.outbox(now) if isinstance(a, Send)]


def test_a_long_catch_up_that_keeps_delivering_is_not_presumed_lost() -> None:
    silent = _mesh()  # asked the peer for a catch-up at 1000 and heard nothing since: lost after 30 s
    silent.step(LINK, _beat({PEER: 5}), [], 1040.0)
    assert [type(m) for m in _sent(silent, 1040.0)] == [SyncRequest]

    delivering = _mesh()  # the same, but a batch of it arrived at 1035
    delivering.step(LINK, SyncBatch(ref=1), [memoryview(encode_rows(_repair_rows()))], 1035.0)
    assert _sent(delivering, 1035.0) == [SyncAck(ref=1, received=1)]
    delivering.step(LINK, _beat({PEER: 5}), [], 1040.0)
    assert _sent(delivering, 1040.0) == [], "a catch-up still delivering was asked for again"


class _SlowMergeStore(MemoryStore):
    """A memory store whose writes take ``write`` seconds on ``clock`` (a slow backend taking a big page)."""

    def __init__(self, clock: _Clock, write: float) -> None:
        super().__init__()
        self.clock, self.write = clock, write

    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        self.clock.now += self.write
        return super().apply(rows, vector)


def test_a_catch_up_is_alive_from_when_its_last_batch_was_merged() -> None:
    # A batch that takes longer than CATCHUP_SILENCE to merge (a slow store, a big page) shows life when the merge
    # ends: counting the silence from its arrival restarted such a catch-up after every batch, for ever.
    clock = _Clock()
    mesh = _mesh(_SlowMergeStore(clock, write=31.0), clock)
    mesh.step(LINK, SyncBatch(ref=1), [memoryview(encode_rows(_repair_rows()))], 1000.0)
    assert clock.now == 1031.0
    assert _sent(mesh, 1031.0) == [SyncAck(ref=1, received=1)]
    mesh.tick(1031.5)
    mesh.step(LINK, _beat({PEER: 5}), [], 1031.5)
    assert not [m for m in _sent(mesh, 1031.5) if isinstance(m, SyncRequest)], "the catch-up was asked for again"


class _CommitCountingStore(MemoryStore):
    """A memory store that counts its write transactions."""

    commits = 0

    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        self.commits += 1
        return super().apply(rows, vector)


def test_a_status_without_digest_leaves_live_rows_to_the_turn_s_one_commit() -> None:
    # Live rows are committed once per loop turn, thousands in one transaction; a status without a digest reads
    # no stored row, so clients polling it (the benchmark does, in a loop) must not split that transaction.
    store = _CommitCountingStore()
    mesh = _mesh(store)
    mesh.masters["originaaaaaaaaaa"] = "10.0.0.3:7771"  # only known masters originate live rows
    mesh.step(LINK, Updates(origin=PEER), [memoryview(encode_rows(_repair_rows()))], 1000.0)
    mesh.step(Peer.routed(b"\x00client", ""), StatusQuery(ref=1, digest=False), [], 1000.0)
    assert store.commits == 0
    mesh.tick(1000.1)
    assert store.commits == 1


def _digests(mesh: Mesh, now: float) -> int:
    mesh.tick(now)
    return sum(isinstance(m, Digest) for m in _sent(mesh, now))


def test_no_digest_right_after_a_catch_up_and_digests_cost_at_most_a_tenth_of_the_loop() -> None:
    """A digest re-reads the whole index (~0.7 s at 1,000,000 entries, the loop held meanwhile): none just after a
    sync, which has just made the two indexes equal, and never more than 10 % of the time."""
    clock = _Clock()
    store = _SlowStore(clock, scan=2.0)  # a big index
    mesh = _mesh(store, clock, anti_entropy=5.0)  # a digest is due at 1005
    mesh.step(LINK, _beat({}), [], 1000.0)  # the peer is alive, with our vector: a calm link
    mesh.step(LINK, SyncDone(ref=1, vector={}, batches=0), [], 1004.0)
    assert mesh.snapshot(1004.0).stats.received_syncs == 1
    assert [_digests(mesh, t) for t in (1005.0, 1006.0, 1008.0)] == [0, 0, 0]
    clock.now = 1009.0
    assert _digests(mesh, 1009.0) == 1
    assert store.scans == [1009.0]
    assert mesh.entropy.interval == 20.0  # a 2 s scan: one per 20 s from the next one on
    assert [_digests(mesh, t) for t in (1012.0, 1020.0, 1030.0, 1039.0, 1040.5)] == [0, 1, 0, 0, 1]


def test_catch_ups_more_often_than_the_interval_never_stop_anti_entropy() -> None:
    """Anti-entropy is the only repair of what no vector shows: a finished catch-up may put a digest off, but one
    every few seconds (three masters and a steady trickle of updates) must not put it off for ever."""
    mesh = _mesh(anti_entropy=5.0)
    mesh.step(LINK, SyncDone(ref=1, vector={}, batches=0), [], 1000.0)
    fired = []
    for second in range(1, 61):  # a minute; a catch-up finishes every 4 s
        now = 1000.0 + second
        mesh.step(LINK, _beat({PEER: second - second % 4}), [], now)  # ahead of us every 4 s
        if second % 4 == 0:
            (request,) = [m for m in _sent(mesh, now) if isinstance(m, SyncRequest)]
            mesh.step(LINK, SyncDone(ref=request.ref, vector={PEER: second}, batches=0), [], now)
        if _digests(mesh, now):
            fired.append(second)
    assert mesh.snapshot(1060.0).stats.received_syncs == 16
    assert len(fired) >= 5, fired


def test_digests_are_answered_at_most_once_per_half_interval() -> None:
    """Answering a digest is a full checksum scan: a peer (or anyone with the password) sending digests in a loop
    must not hold the master's loop."""
    clock = _Clock()
    store = _SlowStore(clock)
    mesh = _mesh(store, clock, anti_entropy=5.0)
    peer = Peer.routed(b"\x00peer", "peernodeaaaaaaaa")
    prove_to(mesh, peer, PEER, 1000.0)
    digest = Digest(origin=PEER, buckets=[0] * BUCKETS)
    for _ in range(100):
        mesh.step(peer, digest, [], 1000.0)
    clock.now = 1002.6
    mesh.step(peer, digest, [], clock.now)
    assert store.scans == [1000.0, 1002.6]
    assert mesh.snapshot(1002.6).stats.skipped_digests == 99


class _FillableStore(SqliteStore):
    """A real SQLite store whose database can be made full: ``PRAGMA max_page_count`` at the current size makes
    SQLite itself fail the next write that needs a new page with SQLITE_FULL, as a full disk does."""

    full = False

    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        self.db.execute_sql(f"PRAGMA max_page_count = {1 if self.full else 1 << 30}")  # on the master's thread
        return super().apply(rows, vector)


def test_a_full_database_refuses_registrations_clearly_and_the_master_keeps_going(
    network: TestNetwork, tmp_path: Path
) -> None:
    store = _FillableStore(tmp_path / "index.db")
    master = Master(network.bus(), store, MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None

    def files(prefix: str, n: int) -> list[FileInfo]:
        return [FileInfo(name=f"{prefix}/{i}", size=i, content_hash=f"{i:064x}", mtime_ns=i) for i in range(n)]

    try:
        with IndexClient(network.bus(), [master.endpoint]) as client:
            client.register(files("first", 100), "127.0.0.1:7772")
            store.full = True
            with pytest.raises(StoreError, match="database or disk is full"):
                client.register(files("second", 3000), "127.0.0.1:7772")
            assert master.stats.store_errors >= 1
            assert len(client.lookup("first/7")) == 1  # still answering, from what the store holds
            assert client.lookup("second/7") == []
            store.full = False  # space again: the node sends the same files, and nothing was lost or skipped
            client.register(files("second", 3000), "127.0.0.1:7772")
            assert len(client.lookup("second/2999")) == 1
    finally:
        master.stop()
    seqs = sorted(row[7] for batch in store.since({}) for row in batch)
    assert seqs == list(range(1, 3101))  # the stamps of the refused batch were never sent: stamped again, no gap
    store.close()


def _repair_rows() -> list[RecordRow]:
    return [("a.txt", 1, "0" * 64, "holderaaaaaaaaaa", "1.2.3.4:5", 1, "originaaaaaaaaaa", 1, 1, False)]


def test_a_repair_whose_receiver_left_is_dropped_not_retried_for_ever(network: TestNetwork) -> None:
    # A repair (no credit window) to a peer that has disconnected: the ROUTER refuses every send to its identity
    # (EHOSTUNREACH, and its next connection has another identity). Retrying it at every loop turn with a zero
    # poll timeout would spin a core for as long as the master runs.
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.setup()  # the router, without the loop's thread
    try:
        now = time.monotonic()
        master.mesh.serve(Peer.routed(b"\x00gone", ""), 0, iter([_repair_rows()]), None, Window(), now)
        master.flush(now)
        assert master.mesh.serving == []
        assert master.mesh.stats.abandoned_syncs == 1
        assert not master.mesh.busy
    finally:
        master.teardown()


def test_a_repair_that_cannot_be_sent_waits_and_is_dropped_when_idle(network: TestNetwork) -> None:
    # A full queue (EAGAIN) may drain: the repair is kept but marked blocked, so the loop waits for its poll
    # instead of retrying at once, and the same batch goes out later; one that sends nothing for sync_idle is
    # dropped (not only windowed syncs).
    mesh = Mesh(MemoryStore(), MasterConfig(), now=0.0)
    nowhere = network.bus().client(zmq.DEALER)  # connected to nothing: every send finds no room
    try:
        mesh.serve(Peer.routed(b"\x00peer", PEER), 0, iter([_repair_rows()]), None, Window(), 0.0)  # a repair
        (send,) = mesh.outbox(1.0)
        assert isinstance(send, Send) and isinstance(send.message, SyncBatch)
        transmit(nowhere, send, mesh)
        (serving,) = mesh.serving
        assert serving.blocked and serving.sent == 0 and not mesh.busy
        assert mesh.stats.unsent == 0, "a batch sent again later is not lost"
        assert mesh.outbox(2.0) == [send], "the same batch, again"
        transmit(nowhere, send, mesh)
        assert mesh.outbox(mesh.config.sync_idle - 0.5) == [send]  # idle since 0.0, not since the retries
        transmit(nowhere, send, mesh)
        assert mesh.outbox(mesh.config.sync_idle + 0.5) == []
        assert mesh.serving == []
        assert mesh.stats.abandoned_syncs == 1
    finally:
        nowhere.close(linger=0)


def test_a_client_skips_a_master_that_refuses_the_connection_without_waiting_out_its_timeout(
    network: TestNetwork, tmp_path: Path
) -> None:
    # `ls --master dead,live` (and fetch's lookup, share's start-up probe) used to wait the whole handshake
    # timeout on the dead one, at every call, although a refused connection says at once that nobody is there.
    master = Master(
        network.bus(), open_store(f"sqlite://{tmp_path / 'index.db'}"), MasterConfig(bind=Endpoint("127.0.0.1", 0))
    )
    master.start()
    assert master.endpoint is not None
    refusing = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # bound, never listening: refused, port kept
    refusing.bind(("127.0.0.1", 0))
    dead = Endpoint("127.0.0.1", refusing.getsockname()[1])
    try:
        with IndexClient(network.bus(), [dead, master.endpoint], timeout=120) as client:
            began = time.monotonic()
            assert client.status(digest=False).entries == 0
            assert client.master == master.endpoint
            assert time.monotonic() - began < 60, "waited out the refusing master's timeout"
        with (
            IndexClient(network.bus(), [dead], timeout=120) as client,
            pytest.raises(UnreachableError, match="nothing is listening there"),
        ):
            client.status(digest=False)
    finally:
        refusing.close()
        master.stop()
        master.store.close()


class _DigestFailingStore(MemoryStore):
    """A memory store whose full-index digest fails, as a lost database connection makes it."""

    def digest(self) -> str:
        raise StoreError("the database went away")


def test_a_status_whose_digest_fails_leaves_the_master_running(network: TestNetwork) -> None:
    # Master.status() with a digest is answered by the loop's thread now; a store error there must reach the
    # caller (as it did when the caller read the store itself) and not end the master.
    master = Master(network.bus(), _DigestFailingStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.start()
    assert master.endpoint is not None
    try:
        with pytest.raises(StoreError, match="went away"):
            master.status()
        time.sleep(0.3)
        assert master.running, f"the master died: {master.error!r}"
        assert master.stats.store_errors == 1
        with IndexClient(network.bus(), [master.endpoint]) as client:
            assert client.status(digest=False).origin == master.origin
    finally:
        master.stop()


def test_status_of_a_master_not_running_reads_its_store(network: TestNetwork) -> None:
    # Without its loop's thread (not started yet, or stopped) nobody else uses the store: status() reads it
    # in the caller's thread, entries and digest included, as it always did.
    store = MemoryStore()
    store.apply(_repair_rows())
    master = Master(network.bus(), store, MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    status = master.status()
    assert status.entries == 1
    assert status.digest == store.digest() != ""
