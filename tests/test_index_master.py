"""Master behaviour over real sockets in one process: anti-entropy repairs what replication never carried."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace

import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.heartbeat import Ticker
from overdrive.errors import StoreError, UnreachableError
from overdrive.files.model import FileInfo
from overdrive.index import master as master_module
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.protocol import Digest, SyncDone
from overdrive.index.records import RecordRow
from overdrive.index.stores import BUCKETS, open_store
from overdrive.index.stores.memory import MemoryStore
from overdrive.index.stores.sqlite import SqliteStore
from tests.conftest import TestNetwork


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
        MasterConfig(bind=Endpoint("127.0.0.1", 0), **config),
    )  # type: ignore[arg-type]
    first.start()
    assert first.endpoint is not None
    second = Master(
        network.bus(),
        open_store(f"sqlite://{tmp_path / 'b.db'}"),
        MasterConfig(bind=Endpoint("127.0.0.1", 0), peers=(first.endpoint,), **config),
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


def test_a_long_catch_up_that_keeps_delivering_is_not_presumed_lost(network: TestNetwork) -> None:
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master._syncing["peer"] = (5, time.monotonic() - 40)  # began 40 s ago: silent that long means lost
    assert not master._sync_active(time.monotonic())
    master._sync_progress(5)  # but a batch of it just arrived
    assert master._sync_active(time.monotonic())


def test_no_digest_right_after_a_catch_up_and_digests_cost_at_most_a_tenth_of_the_loop(
    network: TestNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A digest re-reads the whole index (~0.7 s at 1,000,000 entries, the loop held meanwhile): none just after a
    sync, which has just made the two indexes equal, and never more than 10 % of the time."""
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0), anti_entropy=5.0))
    master._entropy = Ticker(5.0)  # due now
    master._batches[7] = 2
    master._sync_done(SyncDone(ref=7, vector={"peeraaaaaaaaaaaa": 3}, batches=2))
    assert not master._entropy.due(time.monotonic())

    clock = [1000.0]
    monkeypatch.setattr(master_module.time, "monotonic", lambda: clock[0])
    master._links = {"peer": SimpleNamespace(origin="peeraaaaaaaaaaaa", sock=None)}  # type: ignore[dict-item]
    master.master_live.seen("peeraaaaaaaaaaaa", clock[0])
    master.vectors["peeraaaaaaaaaaaa"] = dict(master.replica.vector)
    sent: list[object] = []
    monkeypatch.setattr(master, "_send", lambda sock, identity, message, *payload: sent.append(message) or True)

    def slow_checksums() -> list[int]:
        clock[0] += 2.0  # a big index
        return [0] * BUCKETS

    monkeypatch.setattr(master.replica, "checksums", slow_checksums)
    master._anti_entropy()
    assert [type(m) for m in sent] == [Digest]
    assert master._entropy.interval == 20.0


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


def test_catch_ups_more_often_than_the_interval_never_stop_anti_entropy(
    network: TestNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anti-entropy is the only repair of what no vector shows: a finished catch-up may put a digest off, but one
    every few seconds (three masters and a steady trickle of updates) must not put it off for ever."""
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0), anti_entropy=5.0))
    clock = [1000.0]
    monkeypatch.setattr(master_module.time, "monotonic", lambda: clock[0])
    master._entropy = Ticker(5.0, clock[0] + 5.0)
    fired = []
    for second in range(1, 61):  # a minute; a catch-up finishes every 4 s
        clock[0] += 1.0
        if second % 4 == 0:
            master._batches[second] = 0
            master._sync_done(SyncDone(ref=second, vector={}, batches=0))
        if master._entropy.due(clock[0]):
            fired.append(second)
    assert len(fired) >= 5, fired


def test_digests_are_answered_at_most_once_per_half_interval(
    network: TestNetwork, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Answering a digest is a full checksum scan: a peer (or anyone with the password) sending digests in a loop
    must not hold the master's loop."""
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0), anti_entropy=5.0))
    clock = [1000.0]
    monkeypatch.setattr(master_module.time, "monotonic", lambda: clock[0])
    scans: list[float] = []
    monkeypatch.setattr(master.replica, "checksums", lambda: scans.append(clock[0]) or [0] * BUCKETS)
    digest = Digest(origin="peeraaaaaaaaaaaa", buckets=[0] * BUCKETS)
    for _ in range(100):
        master._digest(None, None, digest)  # type: ignore[arg-type]
    clock[0] += 2.6
    master._digest(None, None, digest)  # type: ignore[arg-type]
    assert scans == [1000.0, 1002.6]
    assert master.stats.skipped_digests == 99


def _repair_rows() -> list[RecordRow]:
    return [("a.txt", 1, "0" * 64, "holderaaaaaaaaaa", "1.2.3.4:5", 1, "originaaaaaaaaaa", 1, 1, False)]


def test_a_repair_whose_receiver_left_is_dropped_not_retried_for_ever(network: TestNetwork) -> None:
    # A repair (no credit window) to a peer that has disconnected: the ROUTER refuses every send to its identity
    # (EHOSTUNREACH, and its next connection has another identity). The master retried it at every loop turn with
    # a zero poll timeout: a master whose peer was killed mid-repair spun a core for as long as it ran.
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    master.setup()  # the router, without the loop's thread
    try:
        serving = master_module._Serving(master._router, b"\x00gone", 0, iter([_repair_rows()]), None)  # type: ignore[arg-type]
        master._start_serving(serving)
        master._pump_serving()
        assert master._serving == []
        assert master.stats.abandoned_syncs == 1
    finally:
        master.teardown()


def test_a_repair_that_cannot_be_sent_waits_and_is_dropped_when_idle(network: TestNetwork) -> None:
    # A full queue (EAGAIN) may drain: the repair is kept but marked blocked, so the loop waits for its poll
    # instead of retrying at once; one that sends nothing for sync_idle is dropped (only windowed syncs were).
    master = Master(network.bus(), MemoryStore(), MasterConfig(bind=Endpoint("127.0.0.1", 0)))
    nowhere = master.bus.client(zmq.DEALER)  # connected to nothing: every send finds no room
    try:
        serving = master_module._Serving(nowhere, None, 0, iter([_repair_rows()]), None)
        master._start_serving(serving)
        master._pump_serving()
        assert master._serving == [serving] and serving.blocked and serving.sent == 0
        serving.progress -= master.config.sync_idle + 1  # as if nothing had gone out for longer than that
        master._pump_serving()
        assert master._serving == []
        assert master.stats.abandoned_syncs == 1
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
