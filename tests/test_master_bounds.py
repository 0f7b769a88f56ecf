"""A master facing a password holder that asks and never reads: what it queues for that peer is bounded, honest
clients keep getting answers, and the memory goes once the peer leaves. Real sockets on loopback, a real master."""

from __future__ import annotations

import fnmatch
import re
import time

import psutil
import zmq

from overdrive.files.model import FileInfo
from overdrive.index.answers import ANSWER_IDLE, MAX_ANSWERS, MAX_ANSWERS_PER_PEER
from overdrive.index.client import IndexClient
from overdrive.index.mesh import Mesh, Peer, Send
from overdrive.index.patterns import PATTERN_CACHE, matcher
from overdrive.index.protocol import BATCH_ITEMS, CODEC, Announce, Found, Lookup
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import Children, TestNetwork

FILES = 2_000
LOOKUPS = 1_000
GROWTH = 150 << 20
"""Generous bound on what 1,000 unread list-everything lookups may add to the master (unbounded: ~600 MB here)."""


NODE = "a" * 16
NOW = 1000.0


def filled_mesh(batches: int) -> Mesh:
    """A mesh whose index answers a list-everything lookup in ``batches`` Found messages."""
    mesh = Mesh(MemoryStore(), now=NOW)
    mesh.start("127.0.0.1:7771", NOW)
    node = Peer.routed(b"\x00node", NODE)
    names = [f"{i:06d}.bin" for i in range(BATCH_ITEMS * (batches - 1) + 1)]
    for start in range(0, len(names), 5000):
        files = [FileInfo(name=n, size=1, content_hash="ab" * 32, mtime_ns=1) for n in names[start : start + 5000]]
        mesh.step(node, Announce(ref=start + 1, holder=NODE, address="127.0.0.1:7772", files=files), [], NOW)
    mesh.outbox(NOW, serve=False)
    return mesh


def answers(mesh: Mesh, now: float, *, serve: bool = True) -> list[Send]:
    return [a for a in mesh.outbox(now, serve=serve) if isinstance(a, Send) and isinstance(a.message, Found)]


def test_a_lookup_is_answered_a_batch_at_a_time_and_waits_for_a_full_queue() -> None:
    mesh = filled_mesh(3)
    client = Peer.routed(b"\x00client", "c" * 16)
    mesh.step(client, Lookup(ref=7, name=""), [], NOW)
    first = answers(mesh, NOW, serve=False)  # the shell's flush right after the step
    assert len(first) == 1 and not first[0].message.done  # type: ignore[attr-defined]
    second = answers(mesh, NOW)
    assert len(second) == 1
    mesh.report_blocked(second[0])  # the peer's queue is full: the batch is kept, not lost
    assert not mesh.busy
    again = answers(mesh, NOW)
    assert [a.message for a in again] == [second[0].message]
    last = answers(mesh, NOW)
    assert len(last) == 1 and last[0].message.done  # type: ignore[attr-defined]
    assert answers(mesh, NOW) == [] and mesh.answers.under_way == []
    assert mesh.stats.unsent == 0 and mesh.stats.dropped_answers == 0


def test_lookups_in_flight_are_bounded_per_peer_and_in_total_and_idle_ones_expire() -> None:
    mesh = filled_mesh(3)
    reader = Peer.routed(b"\x00reader", "r" * 16)
    for ref in range(1, 101):  # one peer: only its newest lookups are kept
        mesh.step(reader, Lookup(ref=ref, name=""), [], NOW)
    assert len(mesh.answers.under_way) == MAX_ANSWERS_PER_PEER
    assert mesh.stats.dropped_answers == 100 - MAX_ANSWERS_PER_PEER
    for i in range(MAX_ANSWERS):  # many connections: the total is bounded too
        mesh.step(Peer.routed(b"\x01%d" % i, "x" * 16), Lookup(ref=1, name=""), [], NOW)
    assert len(mesh.answers.under_way) == MAX_ANSWERS
    for answer in mesh.outbox(NOW):
        if isinstance(answer, Send) and isinstance(answer.message, Found):
            mesh.report_blocked(answer)  # nobody reads
    mesh.outbox(NOW + ANSWER_IDLE / 2)
    assert len(mesh.answers.under_way) == MAX_ANSWERS
    mesh.outbox(NOW + ANSWER_IDLE + 1)
    assert mesh.answers.under_way == [], "answers to peers that stopped reading are dropped"


def test_compiled_glob_patterns_are_bounded() -> None:
    """Lookups with ever new patterns (each compiled to a regex of tens of KB when 4 KiB long) fill no cache."""
    mesh = filled_mesh(1)
    client = Peer.routed(b"\x00client", "c" * 16)
    fnmatch._compile_pattern.cache_clear()  # type: ignore[attr-defined]
    for ref in range(1, 1_001):
        mesh.step(client, Lookup(ref=ref, name=f"{ref:06d}*" + "[ab]" * 500, glob=True), [], NOW)
        mesh.outbox(NOW)
    assert fnmatch._compile_pattern.cache_info().currsize == 0  # type: ignore[attr-defined]
    assert matcher.cache_info().currsize == PATTERN_CACHE
    assert len(re._cache) <= re._MAXCACHE  # type: ignore[attr-defined]
    mesh.step(client, Lookup(ref=2_000, name="0000*.bin", glob=True), [], NOW)
    found = [a.message for a in mesh.outbox(NOW) if isinstance(a, Send) and isinstance(a.message, Found)]
    assert len(found) == 1 and [e.name for e in found[0].entries] == ["000000.bin"]


def rss(proc: psutil.Process) -> int:
    return int(proc.memory_info().rss)


def test_a_peer_that_never_reads_cannot_grow_a_master(network: TestNetwork, children: Children) -> None:
    proc, ready = children.spawn("master", "master", "--bind", "tcp://127.0.0.1:0", "--stats", "0")
    master = psutil.Process(proc.pid)
    files = [FileInfo(name=f"{i:05d}-" + "n" * 150, size=i, content_hash="ab" * 32, mtime_ns=1) for i in range(FILES)]
    with IndexClient(network.bus(), [ready.endpoint], timeout=10) as client:
        client.register(files, "127.0.0.1:7772")
        assert len(client.lookup("")) == FILES
        baseline = rss(master)

        attacker = network.bus()  # a password holder
        sock = attacker.client(zmq.DEALER, hwm=1)
        sock.rcvbuf = 4096
        attacker.connect(sock, ready.endpoint)
        for ref in range(1, LOOKUPS + 1):
            sock.send_multipart(CODEC.encode(Lookup(ref=ref, name="")))
        peak = baseline
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            peak = max(peak, rss(master))
            assert len(client.lookup("")) == FILES, "an honest client is answered in full meanwhile"
        assert peak - baseline < GROWTH, f"master grew by {(peak - baseline) >> 20} MB"
        sock.close(linger=0)

        deadline = time.monotonic() + 10
        while rss(master) - baseline > GROWTH // 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rss(master) - baseline <= GROWTH // 3, "what was queued for the peer is freed once it leaves"
        assert len(client.lookup("")) == FILES
    assert proc.poll() is None
