"""A master: one replica of the index, serving nodes and clients and replicating with the other masters.

It binds one ROUTER (nodes, clients and peer masters all connect there) and connects one DEALER to every other
master it knows. It hears of masters from its peers' heartbeats (gossip), so ``--peers`` needs one live master; one
heard of is dialled at a bounded rate and known only once it answers on that link (see :mod:`.membership`).
Every decision is made by the sans-IO :class:`~overdrive.index.mesh.Mesh`; this module is the socket shell: receive,
decode, attribute (``bus.peer_id``), step the mesh, perform what its outbox says, and report failed sends back.

Nodes may only write records whose holder is their own authenticated node id. Masters are masters to each other only
once they prove the mesh key (:mod:`.mesh_trust`); what even those send is bounded (docs/security.md, "The mesh"):
known masters, candidates, origins.
Anything malformed is dropped and counted in ``stats.dropped``; it never changes state.

The store is used by the loop's thread only. Other threads read :attr:`Master.snapshot`, a frozen copy swapped
once per loop turn; :meth:`Master.status` with a digest asks the loop for one and waits.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

import zmq

from overdrive.bus.address import DEFAULT_MASTER_PORT, Endpoint, parse_endpoint
from overdrive.bus.kind import MASTER, WrongService
from overdrive.bus.service import ZmqService
from overdrive.bus.sockets import Bus
from overdrive.errors import BusError, ConfigError, ForeignMessageError, ProtocolError, StoreError
from overdrive.index.addresses import advertised
from overdrive.index.mesh import (
    MAX_SERVING,
    Action,
    Dial,
    Hangup,
    MasterConfig,
    MasterStats,
    Mesh,
    MeshSnapshot,
    Peer,
    Send,
)
from overdrive.index.protocol import CODEC, Status
from overdrive.index.replication import Replica
from overdrive.index.stores.base import Store

__all__ = ["MAX_SERVING", "Master", "MasterConfig", "MasterStats", "transmit"]

log = logging.getLogger(__name__)

_DRAIN = 512
REPLY_HWM = 16
"""Messages queued per connection to the ROUTER (ZMQ_SNDHWM, per peer): at most 16 replies or batches of at most
``BATCH_BYTES`` (512 KiB) each wait for a peer that does not read; a send beyond is refused (EAGAIN) and the mesh
keeps a lookup answer's or sync's next batch for later, or drops a one-off reply and counts it (``stats.unsent``)."""
REQUEST_HWM = 1_000
"""Messages queued per connection from the ROUTER's peers (ZMQ_RCVHWM, per peer): as many as a node queues on its
own side (index/node.py). A full queue is not a loss: libzmq stops reading that connection until the loop has taken
some (TCP backpressure on that peer alone). It bounds messages, not bytes: each may be as big as the bus allows
(64 MiB, as rows from a node's announce need)."""
_DRAIN_SECONDS = 0.05
_DIGEST_WAIT = 10.0


def transmit(sock: zmq.Socket, send: Send, mesh: Mesh) -> None:  # type: ignore[type-arg]
    """Send without blocking; a failure goes back to the mesh: EAGAIN (the queue is full) as blocked,
    EHOSTUNREACH (the peer behind a ROUTER identity is gone) as unreachable."""
    frames = CODEC.encode(send.message, *send.payload)
    if send.peer.identity is not None:
        frames = [send.peer.identity, *frames]
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)  # copy: zero-copy sends start pyzmq's gc thread
    except zmq.ZMQError as exc:
        if exc.errno == zmq.EAGAIN:
            mesh.report_blocked(send)
        elif exc.errno == zmq.EHOSTUNREACH:
            mesh.report_unreachable(send)
        else:
            raise


def _say_kind(sock: zmq.Socket, identity: bytes) -> None:  # type: ignore[type-arg]
    """Tell the client behind ROUTER ``identity`` that this is a master; dropped when its queue is full or it is
    gone (its queue, :data:`REPLY_HWM`, bounds what a peer sending such messages can make us hold)."""
    try:
        sock.send_multipart([identity, *CODEC.encode(WrongService(kind=MASTER))], zmq.NOBLOCK)
    except zmq.ZMQError as exc:
        if exc.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
            raise


class Master(ZmqService):
    """One index master in a background thread (``start``/``stop``)."""

    name = "overdrive-master"

    def __init__(self, bus: Bus, store: Store, config: MasterConfig | None = None) -> None:
        super().__init__(bus)
        self.config = config or MasterConfig()
        self.store = store
        key, network = self.config.mesh_key, bus.security.key.network if bus.security.key else None
        if key is not None and network is not None and key.network != network:
            raise ConfigError(f"the mesh key is for network {key.network!r}, not {network!r}")
        self.mesh = Mesh(store, self.config, now=time.monotonic(), node_id=bus.node_id)
        self.endpoint: Endpoint | None = None
        self.address = ""
        self._links: dict[str, zmq.Socket] = {}  # type: ignore[type-arg]
        self._poller = zmq.Poller()
        self._router: zmq.Socket | None = None  # type: ignore[type-arg]
        self._snapshot = self.mesh.snapshot(time.monotonic())
        self._stats = self._snapshot.stats
        self._digested: tuple[int, MeshSnapshot | StoreError | None] = (0, None)
        self._published = threading.Condition()
        self._digest_asked = threading.Event()
        # the loop's thread uses the store from now on: an idle connection left in this one would keep a first sync
        # from loading with its journal in memory (see BulkLoad._load_unsynced in stores/sqlite_load.py)
        store.release()

    # -- what other threads may read ---------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        return self.mesh.origin

    @property
    def replica(self) -> Replica:
        return self.mesh.replica

    @property
    def snapshot(self) -> MeshSnapshot:
        """The state as of the loop's last turn (frozen; safe from any thread)."""
        return self._snapshot

    @property
    def stats(self) -> MasterStats:
        """The counters as of the last message handled (a copy)."""
        return self._stats

    @property
    def dropped(self) -> int:
        return self._stats.dropped

    @property
    def masters(self) -> dict[str, str]:
        return self._snapshot.masters

    @property
    def entries(self) -> int:
        return self._snapshot.entries

    def status(self, ref: int = 0, *, digest: bool = True) -> Status:
        """This master's status; with ``digest``, the loop computes one (a full scan) and this waits for it."""
        if not digest:
            return self._snapshot.status(ref)
        if not self.running:  # no loop uses the store: read it here (and leave no connection open in this thread)
            try:
                return self.mesh.snapshot(time.monotonic(), digest=True).status(ref)
            finally:
                self.store.release()
        with self._published:
            asked = self._digested[0]
            self._digest_asked.set()
            self._published.wait_for(lambda: self._digested[0] > asked, _DIGEST_WAIT)
            snapshot = self._digested[1] or self._snapshot
        if isinstance(snapshot, StoreError):  # the caller hears it; the master keeps serving
            raise snapshot
        return snapshot.status(ref)

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def setup(self) -> None:
        router = self.bus.server(zmq.ROUTER, hwm=REQUEST_HWM)
        router.sndhwm = REPLY_HWM  # before bind: every peer's pipe gets it
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router = router
        self.endpoint = self.bus.bind(router, self.config.bind)
        self.address = advertised(self.endpoint, self.config.advertise)
        now = time.monotonic()
        self.mesh.start(self.address, now)
        self.flush(now, serve=False)
        self._publish(now)
        log.info("master %s on %s (advertised %s)", self.origin, self.endpoint.display, self.address)

    def teardown(self) -> None:
        for sock in self._links.values():
            sock.close(linger=0)
        self._links.clear()
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None

    def _dial(self, address: str) -> None:
        sock = self.bus.client(zmq.DEALER, hwm=10_000)
        self.bus.connect(sock, parse_endpoint(address, DEFAULT_MASTER_PORT), verify=False)
        self._poller.register(sock, zmq.POLLIN)
        self._links[address] = sock

    def _hangup(self, address: str) -> None:
        sock = self._links.pop(address)
        self._poller.unregister(sock)
        sock.close(linger=0)

    # -- the loop ----------------------------------------------------------------------------------------------

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        assert self._router is not None
        poller = self._poller
        poller.register(control, zmq.POLLIN)
        poller.register(self._router, zmq.POLLIN)
        while True:
            events = dict(poller.poll(0 if self.mesh.busy else int(self.config.heartbeat * 500)))
            if control in events:
                return
            if self._router in events:
                self._drain(self._router, None)
            for address, sock in list(self._links.items()):
                if sock in events:
                    self._drain(sock, address)
            now = time.monotonic()
            self.mesh.tick(now)
            self._publish(now)  # before the replies go out: whoever hears one sees its effects in the snapshot
            for _ in range(2):
                self.flush(now)

    def _drain(self, sock: zmq.Socket, address: str | None) -> None:  # type: ignore[type-arg]
        budget = time.monotonic() + _DRAIN_SECONDS  # a big sync must not starve heartbeats and clients
        for _ in range(_DRAIN):
            if time.monotonic() > budget:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                if address is not None:
                    peer = Peer.link(address)
                elif len(frames) < 2:
                    raise ProtocolError("a message without its identity frame")
                else:
                    peer = Peer.routed(frames[0].bytes, self.bus.peer_id(frames[1]))
                    frames = frames[1:]
                message, payload = CODEC.decode(frames)
            except ForeignMessageError as exc:  # a fetcher pointed here: say what this is, once per message
                self.mesh.reject(exc)
                if peer.identity is not None:
                    _say_kind(sock, peer.identity)
                continue
            except (ProtocolError, BusError) as exc:
                self.mesh.reject(exc)
                continue
            now = time.monotonic()
            self.mesh.step(peer, message, payload, now)
            self._stats = dataclasses.replace(self.mesh.stats)  # before the reply: who hears it sees its count
            self.flush(now, serve=False)

    def flush(self, now: float, *, serve: bool = True) -> None:
        """Perform what the mesh says now (``serve``: with a batch of every served sync that has credit)."""
        for action in self.mesh.outbox(now, serve=serve):
            self._perform(action)

    def _perform(self, action: Action) -> None:
        if isinstance(action, Dial):
            self._dial(action.address)
        elif isinstance(action, Hangup):
            self._hangup(action.address)
        else:
            sock = self._router if action.peer.identity is not None else self._links.get(action.peer.address)
            if sock is None:
                self.mesh.report_unreachable(action)
            else:
                transmit(sock, action, self.mesh)

    def _publish(self, now: float) -> None:
        """Swap in this turn's snapshot (and a digested one if a caller asked)."""
        self._snapshot = self.mesh.snapshot(now)
        self._stats = self._snapshot.stats
        if self._digest_asked.is_set():
            self._digest_asked.clear()
            digested: MeshSnapshot | StoreError
            try:
                digested = self.mesh.snapshot(now, digest=True)
            except StoreError as exc:
                self.mesh.store_failed(exc, now)
                digested = exc
            with self._published:
                self._digested = (self._digested[0] + 1, digested)
                self._published.notify_all()
