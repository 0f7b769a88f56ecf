"""A student with the password and the code but not the mesh key, against Mesh cores in memory: never a known
master, its heartbeats, updates, syncs and claimed origins ignored, a proof it relays between two honest masters
refused, and the honest masters still converge. Time is simulated."""

from __future__ import annotations

import random

import pytest

from overdrive.bus.address import Endpoint
from overdrive.bus.signing import MeshKey
from overdrive.errors import ConfigError
from overdrive.files.model import FileInfo
from overdrive.index.mesh import MasterConfig, Mesh, Peer, Send
from overdrive.index.protocol import (
    Announce,
    Digest,
    MasterBeat,
    MeshHello,
    MeshProof,
    SyncRequest,
    Updates,
)
from overdrive.index.records import encode_rows
from overdrive.index.stores.memory import MemoryStore
from tests.mesh_proofs import KEY, prove_to
from tests.test_mesh_sim import NODES, MeshSim

HONEST = "honestoriginaaaa"
HONEST_NODE = "honestnodeaaaaaa"
STUDENT = "studentoriginaaa"
STUDENT_NODE = "studentnodeaaaaa"
STUDENT_AT = "10.0.0.66:7771"
VICTIM = NODES[0]


def _mesh(key: MeshKey | None = KEY, node_id: str = "meshnodeaaaaaaaa", address: str = "10.0.0.1:7771") -> Mesh:
    mesh = Mesh(MemoryStore(), MasterConfig(mesh_key=key), now=0.0, node_id=node_id)
    mesh.start(address, 0.0)
    return mesh


def _sent(mesh: Mesh, now: float) -> list[Send]:
    return [a for a in mesh.outbox(now, serve=False) if isinstance(a, Send)]


def _injection() -> tuple[MasterBeat, Updates, bytes]:
    """A student's heartbeat claiming a known master's origin, and rows it made up for a victim node."""
    beat = MasterBeat(origin=HONEST, address=STUDENT_AT, vector={HONEST: 9}, masters={HONEST: STUDENT_AT}, nodes=[])
    rows = [("evil.exe", 1, "ab" * 32, VICTIM, "10.6.6.6:7772", 1, HONEST, 1, 1 << 50, False)]
    return beat, Updates(origin=HONEST), encode_rows(rows)  # type: ignore[arg-type]


@pytest.mark.parametrize("key", [None, MeshKey.generate("overdrive")], ids=["no key", "its own key"])
def test_a_student_master_is_never_known_and_its_messages_change_nothing(key: MeshKey | None) -> None:
    mesh = _mesh()
    student = Peer.routed(b"student-connection", STUDENT_NODE)
    if key is not None:
        prove_to(mesh, student, STUDENT, 1.0, key)  # a proof by the wrong key
    beat, updates, rows = _injection()
    mesh.step(student, beat, [], 1.0)
    mesh.step(student, updates, [memoryview(rows)], 1.0)
    mesh.step(student, SyncRequest(ref=1, vector={}), [], 1.0)
    mesh.step(student, Digest(origin=HONEST, buckets=[0] * 256), [], 1.0)
    mesh.tick(1.1)
    assert mesh.masters == {mesh.origin: "10.0.0.1:7771"} and mesh.links == {}
    assert mesh.replica.vector.get(HONEST, 0) == 0 and mesh.store.count() == 0
    assert mesh.snapshot(1.1).masters_online == () and mesh.serving == []
    assert mesh.stats.unproven == 4 + (key is not None)
    replies = _sent(mesh, 1.1)
    assert [type(s.message) for s in replies] == [MeshHello], "only 'prove it' (to the heartbeat)"


def test_a_proven_master_only_beats_under_the_origin_it_proved() -> None:
    mesh = _mesh()
    peer = Peer.routed(b"peer-connection", HONEST_NODE)
    prove_to(mesh, peer, HONEST, 1.0)
    beat = MasterBeat(origin="otheroriginaaaaa", address="10.0.0.2:7771", vector={}, masters={}, nodes=[])
    mesh.step(peer, beat, [], 1.0)
    assert mesh.stats.unproven == 1 and mesh.candidates.table == {}
    mesh.step(peer, MasterBeat(origin=HONEST, address="10.0.0.2:7771", vector={}, masters={}, nodes=[]), [], 1.0)
    assert list(mesh.candidates.table) == ["10.0.0.2:7771"], "its own origin: a candidate to dial and prove"


def test_a_master_without_a_mesh_key_runs_solo() -> None:
    with pytest.raises(ConfigError, match=r"keygen --mesh FILE.*--mesh-key FILE"):
        MasterConfig(peers=(Endpoint("10.0.0.2", 7771),))
    solo = _mesh(key=None)
    peer = Peer.routed(b"peer-connection", HONEST_NODE)
    solo.step(peer, MeshHello(origin=HONEST, nonce=b"d" * 32), [], 1.0)
    assert _sent(solo, 1.0) == [] and solo.stats.unproven == 1, "it proves nothing to anyone"


def _relay(dialer: Mesh, server: Mesh, now: float) -> list[type]:
    """A student relays between ``dialer`` (which dialled the student's address) and ``server`` (which the
    student dialled with its own identity): each honest master's handshake message goes to the other as is."""
    dialer.link(STUDENT_AT)
    dialer.tick(now)
    relayed: list[type] = []
    to_server = [s.message for s in _sent(dialer, now) if s.peer.address == STUDENT_AT]
    for _ in range(3):
        to_dialer: list[MeshHello | MeshProof] = []
        for message in to_server:
            relayed.append(type(message))
            server.step(Peer.routed(b"student-connection", STUDENT_NODE), message, [], now)
            to_dialer += [s.message for s in _sent(server, now) if isinstance(s.message, MeshHello | MeshProof)]
        to_server = []
        for message in to_dialer:
            relayed.append(type(message))
            dialer.step(Peer.link(STUDENT_AT), message, [], now)
            to_server += [s.message for s in _sent(dialer, now) if s.peer.address == STUDENT_AT]
    return relayed


def test_a_proof_relayed_between_two_honest_masters_is_refused() -> None:
    dialer, server = _mesh(node_id="dialernodeaaaaaa"), _mesh(node_id="servernodeaaaaaa", address="10.0.0.2:7771")
    relayed = _relay(dialer, server, 1.0)
    assert relayed == [MeshHello, MeshProof], "the server's proof names the student's node id: the dialer stops"
    assert dialer.trust.link_origin(STUDENT_AT) == "" and dialer.stats.unproven == 1
    assert server.trust.proven == {}
    beat = MasterBeat(origin=dialer.origin, address=STUDENT_AT, vector={}, masters={}, nodes=[])
    server.step(Peer.routed(b"student-connection", STUDENT_NODE), beat, [], 1.0)
    dialer.step(Peer.link(STUDENT_AT), server.beat(1.0), [], 1.0)
    assert set(dialer.masters) == {dialer.origin} and set(server.masters) == {server.origin}


def test_honest_masters_converge_and_never_know_a_student_master() -> None:
    rng = random.Random(7)
    sim = MeshSim(3, rng, students=1, loss=0.1, reorder=True)
    student = sim.masters[3]
    assert student.mesh is not None
    own = FileInfo(name="student.txt", size=1, content_hash="cd" * 32, mtime_ns=1)
    node = "studentsnodeaaaa"
    student.mesh.step(
        Peer.routed(b"node-student", node), Announce(ref=1, holder=node, address="10.6.6.6:1", files=[own]), [], sim.now
    )
    for _ in range(150):
        if rng.random() < 0.3:
            sim.announce(rng.choice(NODES), rng.randrange(3))
        sim.turn(faults=True)
    sim.heal()
    for i, node_id in enumerate(NODES):
        sim.announce(node_id, i % 3, full=True)
    sim.heal()
    for master in sim.honest:
        mesh = master.mesh
        assert mesh is not None
        assert sim.live_files(master) == sim.files, "no row the student made up or registered"
        assert student.mesh.origin not in mesh.masters and student.mesh.origin not in mesh.replica.vector
        snapshot = mesh.snapshot(sim.now)
        assert len(snapshot.masters) == 3 and len(snapshot.masters_online) == 2
        assert mesh.stats.unproven > 0
