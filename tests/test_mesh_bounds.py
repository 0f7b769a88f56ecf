"""A hostile master (one holding the mesh key: a master's stolen laptop) against one Mesh core, in memory: made-up
masters in its gossip, rows and catch-ups from made-up origins. What it can make the honest master hold stays
bounded, and every heartbeat and status the honest master sends still decodes. Time is simulated."""

from __future__ import annotations

from overdrive.bus.codec import Message
from overdrive.index.membership import MAX_CANDIDATES_PER_PEER
from overdrive.index.mesh import Dial, Hangup, MasterConfig, Mesh, Peer
from overdrive.index.protocol import (
    BEAT_NODES,
    CODEC,
    VECTOR_LIMIT,
    MasterBeat,
    MeshHello,
    NodeBeat,
    SyncDone,
    SyncRequest,
    Updates,
)
from overdrive.index.records import RecordRow, encode_rows
from overdrive.index.replication import BASE32, MAX_ORIGINS
from overdrive.index.stores.base import encode_vector
from overdrive.index.stores.memory import MemoryStore
from tests.mesh_proofs import KEY, prove_to, server_proof

US = "10.0.0.1:7771"
HOSTILE = "hostilehostileaa"
HOSTILE_AT = "10.0.0.9:7771"
ROUTED = Peer.routed(b"hostile-connection", "hostilenodeidaaa")
CONFIG = MasterConfig(
    heartbeat=0.5, master_timeout=2.0, node_timeout=2.0, answer_timeout=3.0, forget=10.0, mesh_key=KEY
)


def made_up(i: int, prefix: str = "f") -> str:
    """The i-th made-up origin (16 base32 characters)."""
    digits = ""
    while True:
        i, rest = divmod(i, 32)
        digits = BASE32[rest] + digits
        if not i:
            return (prefix + "a" * 16)[: 16 - len(digits)] + digits


def round_trips(message: Message, *payload: bytes | memoryview) -> bool:
    decoded, _ = CODEC.decode(CODEC.encode(message, *payload))
    return decoded == message


class Duel:
    """One honest Mesh and a hostile master that answers the link the honest one opens to it."""

    def __init__(self, mesh: Mesh | None = None) -> None:
        self.mesh = mesh or Mesh(MemoryStore(), CONFIG, now=0.0, node_id="honestnodeaaaaaa")
        self.mesh.start(US, 0.0)
        prove_to(self.mesh, ROUTED, HOSTILE, 0.0)
        self.now = 0.0
        self.links: set[str] = set()
        self.dials = 0
        self.most_links = 0
        self.sent: list[tuple[Peer, Message]] = []
        self.silent = False
        self.gossip: dict[str, str] = {}
        self.vector: dict[str, int] = {HOSTILE: 0}

    def beat(self) -> MasterBeat:
        masters = {HOSTILE: HOSTILE_AT, **self.gossip}
        return MasterBeat(origin=HOSTILE, address=HOSTILE_AT, vector=self.vector, masters=masters, nodes=[])

    def turn(self, dt: float = 0.1) -> None:
        self.now += dt
        mesh = self.mesh
        if not self.silent and round(self.now * 10) % 5 == 0:  # its own heartbeat, to our ROUTER
            mesh.step(ROUTED, self.beat(), [], self.now)
        mesh.tick(self.now)
        for action in mesh.outbox(self.now):
            if isinstance(action, Dial):
                self.dials += 1
                self.links.add(action.address)
            elif isinstance(action, Hangup):
                self.links.discard(action.address)
            else:
                self.sent.append((action.peer, action.message))
                assert round_trips(action.message, *action.payload), "everything the honest master sends decodes"
                ours = action.peer.address == HOSTILE_AT and not self.silent
                if ours and isinstance(action.message, MeshHello):  # it proves the key on our link
                    proof = server_proof(action.message, mesh.trust.node_id, HOSTILE)
                    mesh.step(Peer.link(HOSTILE_AT), proof, [], self.now)
                if ours and isinstance(action.message, MasterBeat):
                    mesh.step(Peer.link(HOSTILE_AT), self.beat(), [], self.now)  # it answers on our link
        self.most_links = max(self.most_links, len(self.links))

    def run(self, seconds: float) -> None:
        for _ in range(round(seconds * 10)):
            self.turn()


def test_made_up_masters_in_gossip_are_dialled_at_a_bounded_rate_never_passed_on_and_forgotten() -> None:
    duel = Duel()
    duel.gossip = {made_up(i): f"10.66.{i // 250}.{i % 250}:7771" for i in range(1000)}
    duel.run(1.0)
    assert HOSTILE in duel.mesh.masters, "the hostile master answered our link: it is known"
    duel.run(20.0)
    assert duel.most_links <= 1 + MAX_CANDIDATES_PER_PEER, "made-up masters are dialled a few at a time"
    assert duel.dials <= 1 + 20.0 / CONFIG.answer_timeout * MAX_CANDIDATES_PER_PEER + MAX_CANDIDATES_PER_PEER
    assert set(duel.mesh.masters) == {duel.mesh.origin, HOSTILE}, "only masters that answered are known"
    assert set(duel.mesh.beat(duel.now).masters) == {duel.mesh.origin, HOSTILE}, "gossip passes on known ones only"
    assert len(duel.mesh.snapshot(duel.now).masters) == 2
    duel.silent = True  # it leaves: its candidates expire, then it is forgotten, and every link is hung up
    duel.run(CONFIG.forget + CONFIG.answer_timeout + 1.0)
    assert duel.links == set()
    assert duel.mesh.masters == {duel.mesh.origin: US}


def test_a_heartbeat_naming_masters_on_our_router_makes_nothing_known() -> None:
    duel = Duel()
    fakes = {made_up(i): f"10.66.0.{i}:7771" for i in range(200)}
    for i in range(50):  # many connections, each naming itself and others: they only propose candidates
        beat = MasterBeat(origin=made_up(i, "x"), address=f"10.77.0.{i}:7771", vector={}, masters=fakes, nodes=[])
        duel.mesh.step(Peer.routed(f"c{i}".encode(), "somenodeidaaaaaa"), beat, [], duel.now)
    duel.silent = True
    duel.run(5.0)
    assert duel.mesh.masters == {duel.mesh.origin: US}
    assert duel.most_links <= MAX_CANDIDATES_PER_PEER


def _rows(origins: list[str]) -> list[RecordRow]:
    return [
        (f"f{i}", 1, "ab" * 32, "nodeaaaaaaaaaaaa", "10.9.9.9:7772", 1, o, 1, 1 << 50, False)
        for i, o in enumerate(origins)
    ]


def test_live_rows_from_made_up_origins_are_dropped_and_status_and_heartbeats_still_decode() -> None:
    duel = Duel()
    duel.run(1.0)
    mesh = duel.mesh
    fakes = [made_up(i) for i in range(VECTOR_LIMIT + 1)]
    for start in range(0, len(fakes), 2000):
        payload = encode_rows(_rows(fakes[start : start + 2000]))
        mesh.step(ROUTED, Updates(origin=HOSTILE), [memoryview(payload)], duel.now)
    mesh.step(ROUTED, Updates(origin=HOSTILE), [memoryview(encode_rows(_rows([HOSTILE])))], duel.now)
    duel.run(1.0)
    assert set(mesh.replica.vector) == {mesh.origin, HOSTILE}, "only known masters originate updates"
    assert mesh.stats.foreign_rows == len(fakes)
    assert round_trips(mesh.snapshot(duel.now).status())
    assert round_trips(mesh.beat(duel.now))


def test_catch_ups_add_origins_only_on_the_link_asked_and_only_up_to_the_bound() -> None:
    duel = Duel()
    duel.run(1.0)
    mesh = duel.mesh
    for round_ in range(4):
        fakes = {made_up(i, "abcd"[round_]): 1 for i in range(VECTOR_LIMIT - 1)}
        duel.vector = {HOSTILE: round_ + 1, **fakes}
        duel.sent.clear()
        duel.run(1.0)  # its heartbeat says we are behind: we ask it for a catch-up on our link
        asked = [m for p, m in duel.sent if isinstance(m, SyncRequest) and p.address == HOSTILE_AT]
        if not asked:
            continue
        done = SyncDone(ref=asked[-1].ref, vector=duel.vector, batches=0)
        mesh.step(ROUTED, done, [], duel.now)  # on our ROUTER, with the right ref: not the link we asked
        assert mesh.replica.vector.get(HOSTILE, 0) < round_ + 1
        mesh.step(Peer.link(HOSTILE_AT), done, [], duel.now)
        assert mesh.replica.vector[HOSTILE] == round_ + 1
        duel.run(1.0)
    assert len(mesh.replica.vector) <= MAX_ORIGINS + len(mesh.masters), "made-up origins: a bounded few"
    assert round_trips(mesh.snapshot(duel.now).status())


def test_a_vector_already_past_the_wire_limit_still_goes_out_in_messages_that_decode() -> None:
    store = MemoryStore()
    store.set_meta("vector", encode_vector({made_up(i): i + 1 for i in range(VECTOR_LIMIT + 2000)}))
    duel = Duel(Mesh(store, CONFIG, now=0.0, node_id="honestnodeaaaaaa"))
    duel.run(2.0)  # every message it sends is checked
    mesh = duel.mesh
    assert len(mesh.replica.vector) > VECTOR_LIMIT
    assert round_trips(mesh.snapshot(duel.now).status())
    beat = mesh.beat(duel.now)
    assert round_trips(beat) and beat.vector[mesh.origin] == 0, "our own origin is always there"


def test_a_heartbeat_lists_a_bounded_number_of_nodes_and_still_decodes() -> None:
    duel = Duel()
    for i in range(70_000):  # identities are free to make: each one a node beating once
        node = made_up(i, "n")
        duel.mesh.step(Peer.routed(node.encode(), node), NodeBeat(ref=1), [], duel.now)
    duel.mesh.outbox(duel.now)
    beat = duel.mesh.beat(duel.now)
    assert len(beat.nodes) <= BEAT_NODES
    assert round_trips(beat)
