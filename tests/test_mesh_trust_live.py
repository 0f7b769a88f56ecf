"""On loopback: two honest masters holding the mesh key, and a student's master with only the password (and a mesh
key of its own making) that dials them and that one of them dials. The student also talks to the honest masters
by hand: a heartbeat under an honest master's origin, rows for another node, an Announce for another holder. The
listing never shows what it injected; the honest records replicate; the student is never a known master."""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.signing import MeshKey
from overdrive.files.model import FileInfo
from overdrive.index.client import IndexClient
from overdrive.index.master import Master, MasterConfig
from overdrive.index.protocol import CODEC, Announce, MasterBeat, Updates
from overdrive.index.records import encode_rows
from overdrive.index.stores.memory import MemoryStore
from tests.conftest import TestNetwork
from tests.mesh_proofs import prove_over

HONEST_FILE = FileInfo(name="lecture.pdf", size=3, content_hash="ab" * 32, mtime_ns=1)
EVIL_FILE = FileInfo(name="evil.exe", size=6, content_hash="ef" * 32, mtime_ns=1)


def _wait(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_a_student_master_with_the_password_cannot_join_or_inject(network: TestNetwork) -> None:
    def master(key: MeshKey, *peers: Master) -> Master:
        endpoints = tuple(p.endpoint for p in peers if p.endpoint is not None)
        config = MasterConfig(bind=Endpoint("127.0.0.1", 0), heartbeat=0.2, peers=endpoints, mesh_key=key)
        started = Master(network.bus(), MemoryStore(), config)
        started.start()
        return started

    first = master(network.mesh_key)
    student = master(MeshKey.generate(network.name), first)  # dials the first
    second = master(network.mesh_key, first, student)  # dials both
    victim, mallory = network.bus(), network.bus()
    sock = mallory.client(zmq.DEALER)
    try:
        assert first.endpoint is not None and student.endpoint is not None
        with IndexClient(mallory, [student.endpoint]) as client:  # its own node's files, at its own master
            client.register([EVIL_FILE], "10.6.6.6:7772")
        with IndexClient(victim, [first.endpoint]) as client:
            client.register([HONEST_FILE], "10.0.0.5:7772")
        mallory.connect(sock, first.endpoint)
        assert not prove_over(sock, mallory.node_id, student.origin, MeshKey.generate(network.name), timeout=3.0)
        beat = MasterBeat(origin=second.origin, address=student.address, vector={}, masters={}, nodes=[])
        rows = [("evil.exe", 6, "ef" * 32, victim.node_id, "10.6.6.6:7772", 1, second.origin, 1, 1 << 50, False)]
        forged = Announce(ref=1, holder=victim.node_id, address="10.6.6.6:7772", files=[EVIL_FILE])
        for _ in range(10):
            sock.send_multipart(CODEC.encode(beat))
            sock.send_multipart(CODEC.encode(Updates(origin=second.origin), encode_rows(rows)))  # type: ignore[arg-type]
            sock.send_multipart(CODEC.encode(forged))
            time.sleep(0.05)
        with IndexClient(network.bus(), [second.endpoint]) as client:  # type: ignore[list-item]
            _wait(lambda: [e.name for e in client.lookup("*")] == ["lecture.pdf"], "the honest record replicates")
        time.sleep(1.0)  # several heartbeats: time for anything the student could make stick
        for honest in (first, second):
            assert set(honest.masters) == {first.origin, second.origin}, "the student is never a known master"
            assert honest.snapshot.masters_online == tuple(sorted({first.origin, second.origin} - {honest.origin}))
            assert student.origin not in honest.replica.vector
            with IndexClient(network.bus(), [honest.endpoint]) as client:  # type: ignore[list-item]
                listed = [(e.name, e.holder) for e in client.lookup("*")]
            assert listed == [("lecture.pdf", victim.node_id)], "nothing the student injected is listed"
        assert first.stats.unproven > 0 and second.stats.unproven > 0 and student.stats.unproven > 0
        assert first.stats.refused == 10, "each Announce for another holder was refused"
        assert set(student.masters) == {student.origin}, "nor is any honest master known to the student"
    finally:
        sock.close(linger=0)
        for started in (second, student, first):
            started.stop()
