"""Several Mesh cores in memory: gossip, catch-up under credit, live updates and anti-entropy converge whatever the
network does (loss, reordering, duplication) and whoever crashes and restarts. Time is simulated."""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import Message
from overdrive.bus.credit import Window
from overdrive.bus.signing import MeshKey
from overdrive.files.model import FileInfo
from overdrive.index.hlc import wall_ms
from overdrive.index.membership import MAX_CANDIDATES, MAX_MASTERS
from overdrive.index.mesh import Action, Dial, Hangup, MasterConfig, Mesh, Peer, Send
from overdrive.index.node import NodeConfig, NodeSession
from overdrive.index.protocol import CODEC, Announce, MasterBeat, SyncAck, SyncBatch, SyncDone, SyncRequest, Updates
from overdrive.index.records import RecordRow, encode_rows
from overdrive.index.replication import MAX_ORIGINS, ReplicationConfig
from overdrive.index.stores.memory import MemoryStore
from tests.mesh_proofs import KEY, prove_to

NODES = ["node" + c * 12 for c in "abc"]
CONFIG = {"heartbeat": 0.5, "master_timeout": 2.0, "node_timeout": 2.0, "anti_entropy": 2.0, "sync_idle": 6.0}


def _fake(i: int) -> str:
    """The i-th made-up origin."""
    return f"fake{i:012d}".translate(str.maketrans("0123456789", "abcdefghij"))


def master_node(i: int) -> str:
    """The node id of the i-th master's process (its identity outlives restarts)."""
    return f"master{i:010d}".translate(str.maketrans("0123456789", "abcdefghij"))


def _info(name: str, version: int) -> FileInfo:
    return FileInfo(name=name, size=version, content_hash=f"{version:064x}", mtime_ns=version)


@dataclass
class _Master:
    """One simulated master process: its store survives a crash, its Mesh (and incarnation) does not."""

    index: int
    store: MemoryStore
    mesh: Mesh | None = None
    incarnation: int = 0
    links: set[str] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"10.0.0.{self.index + 1}:7771"


@dataclass
class MeshSim:
    """Masters exchanging messages through a pool that may lose, duplicate and reorder them."""

    n: int
    rng: random.Random
    hostile: int = 0
    """Hostile masters after the ``n`` honest ones (see :meth:`_poison`): they hold the mesh key (a master's stolen
    laptop), so they are masters; the bounds still hold."""
    students: int = 0
    """Student masters after those: the password and the code, and a mesh key of their own making."""
    loss: float = 0.0
    dup: float = 0.0
    reorder: bool = False
    now: float = 1000.0
    masters: list[_Master] = field(default_factory=list)
    pool: list[tuple[int, Peer, Message, tuple[bytes | memoryview, ...]]] = field(default_factory=list)
    files: dict[str, dict[str, int]] = field(default_factory=dict)
    """What each node shares now: name -> version."""
    frozen: set[int] = field(default_factory=set)
    """Stopped masters (SIGSTOP): they neither run nor handle messages; what is sent to them waits."""
    to_nodes: list[Message] = field(default_factory=list)
    """Replies the masters sent to nodes."""

    def __post_init__(self) -> None:
        batch = ReplicationConfig(batch=3)  # many small batches: credit matters
        for i in range(self.n + self.hostile + self.students):
            self.masters.append(_Master(i, MemoryStore(f"m{i}")))
        for master in self.masters:
            peers = () if master.index == 0 else (Endpoint("10.0.0.1", 7771),)  # everyone learns the rest by gossip
            key = KEY if master.index < self.n + self.hostile else MeshKey.generate("overdrive")
            config = MasterConfig(peers=peers, replication=batch, mesh_key=key, **CONFIG)  # type: ignore[arg-type]
            master.mesh = Mesh(master.store, config, now=self.now, node_id=master_node(master.index))
            master.mesh.start(master.address, self.now)
        self.files = {node: {} for node in NODES}

    @property
    def honest(self) -> list[_Master]:
        return self.masters[: self.n]

    def by_address(self, address: str) -> _Master | None:
        return next((m for m in self.masters if m.address == address), None)

    def crash(self, i: int) -> None:
        master = self.masters[i]
        master.mesh = None
        master.links.clear()
        self.pool = [p for p in self.pool if p[0] != i]  # what was in flight to it dies with its sockets

    def restart(self, i: int) -> None:
        master = self.masters[i]
        assert master.mesh is None
        master.incarnation += 1
        config = MasterConfig(
            peers=(Endpoint("10.0.0.1", 7771),) if i else (Endpoint("10.0.0.2", 7771),),
            replication=ReplicationConfig(batch=3),
            mesh_key=KEY,
            **CONFIG,  # type: ignore[arg-type]
        )
        master.mesh = Mesh(master.store, config, now=self.now, node_id=master_node(i))
        master.mesh.start(master.address, self.now)

    def announce(self, node: str, at: int, *, full: bool = False) -> None:
        """``node`` changes a file (or, ``full``, lists all of them) at master ``at``, if it is up."""
        mesh = self.masters[at].mesh
        if mesh is None:
            return
        shared = self.files[node]
        removed: list[str] = []
        if full:
            files = [_info(name, v) for name, v in shared.items()]
        else:
            name = self.rng.choice(["a.txt", "d/b.txt", "d/e/c.txt", "z.bin"])
            if name in shared and self.rng.random() < 0.3:
                del shared[name]
                removed, files = [name], []
            else:
                shared[name] = self.rng.randint(1, 10_000)
                files = [_info(name, shared[name])]
        message = Announce(ref=1, holder=node, address="10.9.9.9:7772", files=files, removed=removed, full=full, sync=1)
        mesh.step(Peer.routed(b"node-" + node.encode(), node), message, [], self.now)

    # -- the network ---------------------------------------------------------------------------------------

    def collect(self) -> None:
        """Perform every master's outbox: dials and hang-ups at once, messages into the pool."""
        for master in self.masters:
            if master.mesh is None or master.index in self.frozen:
                continue
            actions = master.mesh.outbox(self.now)
            if master.index >= self.n:  # hostile masters and students alike
                actions = self._poison(master, actions)
            for action in actions:
                if isinstance(action, Dial):
                    master.links.add(action.address)
                elif isinstance(action, Hangup):
                    master.links.discard(action.address)
                else:
                    self._route(master, action)
            for serving in master.mesh.serving:  # the credit window holds, whatever the receiver does
                assert not serving.window.capacity or len(serving.window) <= serving.window.capacity

    def _route(self, master: _Master, send: Send) -> None:
        assert master.mesh is not None
        if send.peer.identity is None:  # over our link: the other master's ROUTER sees this link's identity
            assert send.peer.address in master.links
            target = self.by_address(send.peer.address)
            if target is None or target.mesh is None:
                return  # nobody listening: lost
            identity = f"{master.index}#{master.incarnation}>{target.index}#{target.incarnation}".encode()
            self.pool.append(
                (target.index, Peer.routed(identity, master_node(master.index)), send.message, send.payload)
            )
            return
        if send.peer.identity.startswith(b"node-"):
            self.to_nodes.append(send.message)
            return
        src, dst = send.peer.identity.decode().split(">")
        index, incarnation = (int(x) for x in src.split("#"))
        asker = self.masters[index]
        if asker.incarnation != incarnation or asker.mesh is None or int(dst.split("#")[1]) != master.incarnation:
            master.mesh.report_unreachable(send)  # that connection is gone
            return
        if master.address in asker.links:
            self.pool.append((index, Peer.link(master.address), send.message, send.payload))

    def _poison(self, master: _Master, actions: list[Action]) -> list[Action]:
        """A hostile master: a real Mesh (it answers handshakes and serves syncs) whose heartbeats gossip
        made-up masters and vectors with made-up origins, whose catch-ups end with such vectors, and which sends
        live rows from made-up origins to every master it links to."""
        fakes = {_fake(i): 1 for i in self.rng.sample(range(20_000), 300)}
        made_up = {_fake(i): f"10.66.{i // 250}.{i % 250}:7771" for i in range(500)}
        out: list[Action] = []
        for action in actions:
            message = action.message if isinstance(action, Send) else None
            if isinstance(action, Send) and isinstance(message, MasterBeat):
                masters = {**message.masters, **made_up}
                message = msgspec.structs.replace(message, masters=masters, vector={**message.vector, **fakes})
                out.append(dataclasses.replace(action, message=message))
            elif isinstance(action, Send) and isinstance(message, SyncDone):
                message = msgspec.structs.replace(message, vector={**message.vector, **fakes})
                out.append(dataclasses.replace(action, message=message))
            else:
                out.append(action)
        assert master.mesh is not None
        rows = [("x", 1, "ab" * 32, NODES[0], "10.9.9.9:7772", 1, origin, 1, 1 << 50, False) for origin in fakes]
        for address in master.links:
            out.append(Send(Peer.link(address), Updates(origin=master.mesh.origin), (encode_rows(rows),)))
        return out

    def deliver(self, faults: bool) -> None:
        pool, self.pool = self.pool, []
        if faults and self.reorder:
            self.rng.shuffle(pool)
        for target, peer, message, payload in pool:
            if target in self.frozen:
                self.pool.append((target, peer, message, payload))
                continue
            mesh = self.masters[target].mesh
            if mesh is None or (faults and self.rng.random() < self.loss):
                continue
            copies = 2 if faults and self.rng.random() < self.dup else 1
            for _ in range(copies):
                mesh.step(peer, message, [memoryview(p) for p in payload], self.now)

    def turn(self, faults: bool, dt: float = 0.1) -> None:
        self.now += dt
        for master in self.masters:
            if master.mesh is not None and master.index not in self.frozen:
                master.mesh.tick(self.now)
        self.collect()
        self.deliver(faults)

    def heal(self) -> None:
        """Run a faultless network until every store holds the same rows (at most 120 simulated seconds)."""
        for turn in range(1200):
            self.turn(faults=False)
            if turn % 10 == 0 and self.converged():
                return
        pytest.fail("masters did not converge")

    # -- checks ------------------------------------------------------------------------------------------------

    def converged(self) -> bool:
        first = self.masters[0].store.data
        return all(m.store.data == first for m in self.honest[1:])

    def live_files(self, master: _Master) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {node: {} for node in NODES}
        row: RecordRow
        for row in master.store.data.values():
            if not row[9]:
                out[row[3]][row[0]] = row[1]
        return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32),
    loss=st.sampled_from([0.0, 0.1, 0.3]),
    dup=st.sampled_from([0.0, 0.2]),
    reorder=st.booleans(),
    crashes=st.lists(st.tuples(st.integers(0, 3), st.integers(1, 80), st.integers(5, 60)), max_size=3),
)
def test_masters_converge_through_loss_reordering_duplication_and_crashes(
    seed: int, loss: float, dup: float, reorder: bool, crashes: list[tuple[int, int, int]]
) -> None:
    rng = random.Random(seed)
    sim = MeshSim(4, rng, loss=loss, dup=dup, reorder=reorder)
    down: dict[int, int] = {}  # master -> turn it comes back
    for turn in range(100):  # 10 simulated seconds of chaos
        for master, at, length in crashes:
            if at == turn and master not in down and sim.masters[master].mesh is not None:
                sim.crash(master)
                down[master] = turn + length
        for master, back in list(down.items()):
            if back == turn:
                sim.restart(master)
                del down[master]
        if rng.random() < 0.3:
            sim.announce(rng.choice(NODES), rng.randrange(4))
        sim.turn(faults=True)
    for master in down:
        sim.restart(master)
    # a row that reached one store without replication (a restored backup), and a row lost from another store
    # whose vector still covers it (a lost write): only anti-entropy can repair those
    stray = ("restored.txt", 7, "ef" * 32, NODES[0], "10.9.9.9:7772", 1, "originzzzzzzzzzz", 1, 1 << 50, False)
    sim.masters[3].store.apply([stray])
    sim.files[NODES[0]]["restored.txt"] = 7
    second = sim.masters[2]
    assert second.mesh is not None
    covered = [k for k, r in second.store.data.items() if r[7] <= second.mesh.replica.vector.get(r[6], 0)]
    lost = second.store.data.pop(min(covered)) if covered else None
    sim.heal()
    if lost is not None and second.store.data.get((lost[3], lost[0])) == lost:
        assert sum(m.mesh.stats.repairs for m in sim.masters if m.mesh) >= 1
    for i, node in enumerate(NODES):  # every node re-registers in full (as after a failover)
        sim.announce(node, i % 4, full=True)
    sim.heal()
    for master in sim.masters:
        assert master.mesh is not None
        assert sim.live_files(master) == sim.files
        snapshot = master.mesh.snapshot(sim.now)
        assert len(snapshot.masters) == 4, "gossip: every master knows every other"
        assert len(snapshot.masters_online) == 3


def _exchange(sim: MeshSim, session: NodeSession, files: list[FileInfo], held: list[Message]) -> None:
    """Run the node against its current master until it is idle; what it sends a frozen master is ``held``."""
    for _ in range(100):
        message = session.next_message(sim.now, files)
        if message is None:
            return
        target = session.master_index
        mesh = sim.masters[target].mesh
        assert mesh is not None
        if target in sim.frozen:
            held.append(message)
            return
        mesh.step(Peer.routed(b"node-" + session.node_id.encode(), session.node_id), message, [], sim.now)
        sim.collect()
        for reply in sim.to_nodes:
            session.on_reply(reply, sim.now)
        sim.to_nodes.clear()
        if session.idle:
            return
    pytest.fail("the node did not settle")


@pytest.mark.parametrize("deleted_before_failover", [True, False])
def test_a_listing_a_stopped_master_handles_late_loses_to_the_removal_sent_meanwhile(
    deleted_before_failover: bool,
) -> None:
    """A node lists a file at master A, which is stopped before it handles that; the node fails over to B, where
    the file is removed (in its full registration, or by a removal after it). When A runs again and handles the
    old listing, it must lose everywhere: the index must not keep listing a file the node no longer has."""
    sim = MeshSim(2, random.Random(7))
    base = wall_ms()
    for master in sim.masters:  # the masters' clocks follow simulated time (near real time: tombstones stay young)
        assert master.mesh is not None
        master.mesh.replica.clock.wall = lambda: base + int(sim.now * 1000)
    for _ in range(30):
        sim.turn(faults=False)
    node = NODES[0]
    masters = (Endpoint("10.0.0.1", 7771), Endpoint("10.0.0.2", 7771))
    session = NodeSession(node, NodeConfig(masters=masters, address="10.9.9.9:7772"))
    keep, ghost = _info("keep.txt", 1), _info("ghost.txt", 2)
    held: list[Message] = []
    session.connected(sim.now)
    _exchange(sim, session, [keep], held)
    session.files_changed([ghost], [])
    sim.frozen.add(0)
    _exchange(sim, session, [keep, ghost], held)
    assert held, "the listing waits in the stopped master"
    shared = [keep, ghost]
    for _ in range(20):
        sim.turn(faults=False)
        if deleted_before_failover and shared == [keep, ghost]:
            session.files_changed([], ["ghost.txt"])
            shared = [keep]
        if session.failed(sim.now):
            break
    assert session.master_index == 1
    _exchange(sim, session, shared, held)
    if not deleted_before_failover:
        session.files_changed([], ["ghost.txt"])
        shared = [keep]
        _exchange(sim, session, shared, held)
    for _ in range(30):  # A stays stopped a while (its peers give up on it)
        sim.turn(faults=False)
    sim.frozen.clear()
    a = sim.masters[0].mesh
    assert a is not None
    for message in held:  # A handles what waited for it before anything else
        a.step(Peer.routed(b"node-" + node.encode(), node), message, [], sim.now)
    sim.to_nodes.clear()
    sim.heal()
    for master in sim.masters:
        assert sim.live_files(master)[node] == {"keep.txt": 1}


def _serving_mesh(rows: int) -> tuple[Mesh, Peer]:
    store = MemoryStore()
    mesh = Mesh(store, MasterConfig(replication=ReplicationConfig(batch=1), mesh_key=KEY), now=0.0)
    node = NODES[0]
    files = [_info(f"f{i}", i + 1) for i in range(rows)]
    mesh.step(Peer.routed(b"node", node), Announce(ref=1, holder=node, address="10.9.9.9:7772", files=files), [], 0.0)
    mesh.outbox(0.0)
    peer = Peer.routed(b"peer", master_node(1))
    prove_to(mesh, peer, "peermasteraaaaaa", 0.0)
    mesh.step(peer, SyncRequest(ref=9, vector={}, window=4), [], 0.0)
    return mesh, peer


def _batches(mesh: Mesh, now: float) -> list[Message]:
    return [a.message for a in mesh.outbox(now) if isinstance(a, Send)]


def test_a_served_sync_keeps_at_most_its_window_unacknowledged() -> None:
    mesh, peer = _serving_mesh(10)
    sent = [m for t in range(10) for m in _batches(mesh, float(t))]
    assert sent == [SyncBatch(ref=9)] * 4, "four batches, then it waits for credit"
    assert not mesh.busy
    mesh.step(peer, SyncAck(ref=9, received=2), [], 10.0)
    mesh.step(peer, SyncAck(ref=9, received=1), [], 10.0)  # late, reordered: frees nothing more
    sent = [m for t in range(10) for m in _batches(mesh, 11.0 + t)]
    assert sent == [SyncBatch(ref=9)] * 2
    other = Peer.routed(b"other", master_node(2))
    prove_to(mesh, other, "othermasteraaaaa", 30.0)
    mesh.step(other, SyncAck(ref=9, received=10), [], 30.0)  # not its receiver: no credit
    assert _batches(mesh, 31.0) == []
    mesh.step(peer, SyncAck(ref=9, received=6), [], 40.0)
    sent = [m for t in range(10) for m in _batches(mesh, 41.0 + t)]
    assert sent == [SyncBatch(ref=9)] * 4
    mesh.step(peer, SyncAck(ref=9, received=10), [], 60.0)
    assert _batches(mesh, 61.0) == [SyncDone(ref=9, vector=mesh.replica.vector, batches=10)]
    assert mesh.serving == []


def test_a_blocked_batch_is_sent_again_in_order_and_gives_no_credit_away() -> None:
    mesh, _ = _serving_mesh(3)
    (first,) = mesh.outbox(1.0)
    assert isinstance(first, Send)
    mesh.report_blocked(first)
    (serving,) = mesh.serving
    assert serving.blocked and serving.sent == 0 and len(serving.window) == 0
    (again,) = mesh.outbox(2.0)
    assert again == first


def test_the_credit_window() -> None:
    window = Window(2)
    window.add(1, 0.0)
    window.add(2, 1.0)
    assert window.full and len(window) == 2 and 1 in window
    with pytest.raises(ValueError, match="full"):
        window.add(3, 2.0)
    assert window.free_to(1) == 1 and not window.full
    assert not window.free(1) and window.free(2)
    window.add(3, 5.0)
    assert window.sent_before(6.0) and not window.sent_before(5.0)
    assert window.clear() == [3] and len(window) == 0
    unbounded = Window()
    for key in range(100):
        unbounded.add(key, 0.0)
    assert not unbounded.full
    with pytest.raises(ValueError):
        Window(-1)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32), loss=st.sampled_from([0.0, 0.1]), reorder=st.booleans())
def test_honest_masters_stay_bounded_and_converge_beside_a_hostile_master(
    seed: int, loss: float, reorder: bool
) -> None:
    rng = random.Random(seed)
    sim = MeshSim(3, rng, hostile=1, loss=loss, reorder=reorder)

    def check_bounded() -> None:
        for master in sim.honest:
            assert master.mesh is not None
            mesh = master.mesh
            assert not any(origin.startswith("fake") for origin in mesh.masters), "only masters that answered"
            assert len(mesh.links) <= len(mesh.masters) + MAX_CANDIDATES
            assert len(mesh.replica.vector) <= MAX_ORIGINS + MAX_MASTERS
            status = mesh.snapshot(sim.now).status()
            assert CODEC.decode(CODEC.encode(status))[0] == status
            assert CODEC.decode(CODEC.encode(mesh.beat(sim.now)))[0] == mesh.beat(sim.now)

    for turn in range(150):
        if rng.random() < 0.3:
            sim.announce(rng.choice(NODES), rng.randrange(3))
        sim.turn(faults=True)
        if turn % 10 == 0:
            check_bounded()
    stray = ("restored.txt", 7, "ef" * 32, NODES[0], "10.9.9.9:7772", 1, "originzzzzzzzzzz", 1, 1 << 50, False)
    sim.masters[2].store.apply([stray])  # only anti-entropy repairs it: vouched-for origins must not stop it
    sim.files[NODES[0]]["restored.txt"] = 7
    sim.heal()
    for i, node in enumerate(NODES):
        sim.announce(node, i % 3, full=True)
    sim.heal()
    check_bounded()
    for master in sim.honest:
        assert master.mesh is not None
        assert sim.live_files(master) == sim.files
        assert master.mesh.stats.foreign_rows > 0, "the made-up rows reached it, and were dropped"
        snapshot = master.mesh.snapshot(sim.now)
        assert len(snapshot.masters) == 4, "the hostile master answers, so it is known; its made-up ones are not"
        assert len(snapshot.masters_online) == 3
