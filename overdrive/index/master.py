"""A master: one replica of the index, serving nodes and clients and replicating with the other masters.

It binds one ROUTER (nodes, clients and peer masters all connect there) and connects one DEALER to every other
master it knows. It learns masters from its peers' heartbeats (gossip), so ``--peers`` needs one live master.
Replication decisions are made by :class:`~overdrive.index.replication.Replica`; this module is the socket shell:
receive, validate, attribute (``bus.peer_id``), hand to the replica, send what it says.

Nodes may only write records whose holder is their own authenticated node id. Peer masters are trusted once
they hold the network key (see SECURITY in the README): a password holder can run a master.
Anything malformed is dropped and counted in :attr:`Master.dropped`; it never changes state.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import zmq

from overdrive.bus.address import DEFAULT_MASTER_PORT, Endpoint, parse_endpoint
from overdrive.bus.codec import Message
from overdrive.bus.heartbeat import Liveness, Ticker
from overdrive.bus.service import ZmqService
from overdrive.bus.sockets import Bus
from overdrive.errors import BusError, ConfigError, ProtocolError, StoreError
from overdrive.index.addresses import advertised
from overdrive.index.protocol import (
    BATCH_BYTES,
    BATCH_ITEMS,
    CODEC,
    Ack,
    Announce,
    BucketRequest,
    Digest,
    Entry,
    Found,
    Lookup,
    MasterBeat,
    NodeBeat,
    Status,
    StatusQuery,
    SyncAck,
    SyncBatch,
    SyncDone,
    SyncRequest,
    Updates,
)
from overdrive.index.records import RecordRow, decode_rows, encode_rows, wire_size
from overdrive.index.replication import Replica, ReplicationConfig
from overdrive.index.stores.base import Store

log = logging.getLogger(__name__)

_DRAIN = 512
_DRAIN_SECONDS = 0.05
_LIVE_BATCH = 5000


def _nonzero(vector: dict[str, int]) -> dict[str, int]:
    return {origin: seq for origin, seq in vector.items() if seq}


@dataclass(frozen=True, slots=True, kw_only=True)
class MasterConfig:
    """How a master runs."""

    bind: Endpoint = field(default_factory=lambda: Endpoint("0.0.0.0", DEFAULT_MASTER_PORT))
    peers: tuple[Endpoint, ...] = ()
    advertise: str | None = None
    """Host (or host:port) other masters should connect to; default: the bind host, or a guess if 0.0.0.0."""
    heartbeat: float = 0.5
    master_timeout: float = 3.0
    node_timeout: float = 3.0
    anti_entropy: float = 5.0
    """Seconds between digest comparisons with a peer whose version vector equals ours."""
    purge_interval: float = 600.0
    sync_idle: float = 120.0
    """A snapshot being served is dropped when its receiver has acked nothing for this long (it died, or never
    meant to ack), so nothing of a dead sync is kept. Generous: a receiver on a slow store (Firestore at ~1k
    writes/s) takes up to ~25 s per page."""
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)

    def __post_init__(self) -> None:
        for name in ("heartbeat", "master_timeout", "node_timeout", "anti_entropy", "purge_interval", "sync_idle"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.master_timeout <= self.heartbeat or self.node_timeout <= self.heartbeat:
            raise ConfigError("timeouts must be longer than the heartbeat interval")


@dataclass
class _Link:
    """Our DEALER to one other master."""

    address: str
    sock: zmq.Socket  # type: ignore[type-arg]
    origin: str = ""


@dataclass
class _Serving:
    """A sync or repair being streamed to a peer, a batch per loop turn."""

    sock: zmq.Socket  # type: ignore[type-arg]
    identity: bytes | None
    ref: int
    batches: Iterator[list[RecordRow] | bytes]
    vector: dict[str, int] | None
    waiting: list[object] | None = None
    sent: int = 0
    window: int = 0
    """Batches allowed ahead of the receiver's acks (0: no flow control, for small repairs)."""
    acked: int = 0
    progress: float = field(default_factory=time.monotonic)
    """When the receiver last acked (or the sync began); without a window, when a batch last went out."""
    blocked: bool = False
    """The last send found the queue full: wait for the next loop turn's poll instead of retrying at once."""


MAX_SERVING = 16
"""Syncs and repairs served at once. Beyond that a peer's request replaces its own oldest, or is refused: one peer
can neither pile them up nor push out another's."""


@dataclass(slots=True)
class MasterStats:
    """What ``overdrive master`` prints."""

    dropped: int = 0
    refused: int = 0
    served_syncs: int = 0
    received_syncs: int = 0
    repairs: int = 0
    unsent: int = 0
    abandoned_syncs: int = 0
    store_errors: int = 0
    skipped_digests: int = 0
    rate: float = 0.0


class Master(ZmqService):
    """One index master in a background thread (``start``/``stop``)."""

    name = "overdrive-master"

    def __init__(self, bus: Bus, store: Store, config: MasterConfig | None = None) -> None:
        super().__init__(bus)
        self.config = config or MasterConfig()
        self.store = store
        self.replica = Replica(store, self.config.replication)
        self.stats = MasterStats()
        self.endpoint: Endpoint | None = None
        self.address = ""
        self.masters: dict[str, str] = {}
        self.vectors: dict[str, dict[str, int]] = {}
        self.remote_nodes: dict[str, set[str]] = {}
        self.peer_masters: dict[str, set[str]] = {}
        self.master_live: Liveness[str] = Liveness(self.config.master_timeout)
        self.node_live: Liveness[str] = Liveness(self.config.node_timeout)
        self._links: dict[str, _Link] = {}
        self._poller = zmq.Poller()
        self._router: zmq.Socket | None = None  # type: ignore[type-arg]
        self._serving: list[_Serving] = []
        self._syncing: dict[str, tuple[int, float]] = {}
        self._full_syncs: dict[str, tuple[int, set[str]]] = {}
        self._batches: dict[int, int] = {}
        self._clash_warned = False
        self._summary_cache: tuple[tuple[int, int, int], float, float, int, str] | None = None
        self.entries = 0
        self._refs = itertools.count(1)
        self._live_rows: list[RecordRow] = []
        self._relay: list[RecordRow] = []
        self._rate_mark = (time.monotonic(), 0)
        self._digest_turn = 0
        self._entropy = Ticker(self.config.anti_entropy, time.monotonic() + self.config.anti_entropy)
        self._store_quiet_until = 0.0
        self._digest_quiet_until = 0.0
        # the loop's thread uses the store from now on: an idle connection left in this one would keep a first sync
        # from loading with its journal in memory (see SqliteStore._load_unsynced)
        store.release()

    @property
    def origin(self) -> str:
        return self.replica.origin

    @property
    def dropped(self) -> int:
        return self.stats.dropped

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def setup(self) -> None:
        router = self.bus.server(zmq.ROUTER, hwm=100_000)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._router = router
        self.endpoint = self.bus.bind(router, self.config.bind)
        self.address = advertised(self.endpoint, self.config.advertise)
        self.masters[self.origin] = self.address
        for peer in self.config.peers:
            self._link(peer.display)
        if self._links:  # the Clone pattern: catch up from the first peer without waiting for its heartbeat
            first = next(iter(self._links.values()))
            self._start_sync(first, "@" + first.address, time.monotonic())
        log.info("master %s on %s (advertised %s)", self.origin, self.endpoint.display, self.address)

    def teardown(self) -> None:
        for link in self._links.values():
            link.sock.close(linger=0)
        self._links.clear()
        if self._router is not None:
            self._router.close(linger=0)
            self._router = None
        self._serving.clear()

    def _link(self, address: str) -> _Link | None:
        if address == self.address or address in self._links:
            return self._links.get(address)
        try:
            endpoint = parse_endpoint(address, DEFAULT_MASTER_PORT)
        except ConfigError:
            return None
        sock = self.bus.client(zmq.DEALER, hwm=10_000)
        self.bus.connect(sock, endpoint, verify=False)
        self._poller.register(sock, zmq.POLLIN)
        link = _Link(address, sock)
        self._links[address] = link
        log.info("master %s: connecting to peer %s", self.origin, address)
        return link

    def _unlink(self, link: _Link) -> None:
        log.info("master %s: dropping link to %s (%s moved)", self.origin, link.address, link.origin)
        self._poller.unregister(link.sock)
        link.sock.close(linger=0)
        del self._links[link.address]
        syncing = self._syncing.pop(link.origin, None)
        if syncing is not None:
            self._batches.pop(syncing[0], None)
        self._serving = [s for s in self._serving if s.sock is not link.sock]

    def _link_for(self, origin: str) -> _Link | None:
        for link in self._links.values():
            if link.origin == origin:
                return link
        address = self.masters.get(origin)
        return self._link(address) if address else None

    # -- the loop ----------------------------------------------------------------------------------------------

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        assert self._router is not None
        beat = Ticker(self.config.heartbeat)
        purge = Ticker(self.config.purge_interval, time.monotonic() + min(60.0, self.config.purge_interval))
        poller = self._poller
        poller.register(control, zmq.POLLIN)
        poller.register(self._router, zmq.POLLIN)
        counted = Ticker(2.0)
        while True:
            busy = any(not sv.blocked and (not sv.window or sv.sent - sv.acked < sv.window) for sv in self._serving)
            events = dict(poller.poll(0 if busy else int(self.config.heartbeat * 500)))
            if control in events:
                return
            now = time.monotonic()
            if self._router in events:
                self._drain(self._router, routed=True)
            for link in list(self._links.values()):
                if link.sock in events:
                    self._drain(link.sock, routed=False)
            try:
                self._flush_live()
                self._pump_serving()
                if beat.due(now):
                    self._heartbeat(now)
                if self._entropy.due(now):
                    self._anti_entropy()
                if purge.due(now):
                    self.replica.purge()
                if counted.due(now) and not (busy or self._sync_active(now)):  # a full scan: not amid a snapshot
                    began = time.monotonic()
                    self.entries = self.store.count()
                    counted.interval = max(2.0, 10 * (time.monotonic() - began))
            except StoreError as exc:
                self._store_failed(exc)
            self._update_rate(now)

    def _drain(self, sock: zmq.Socket, *, routed: bool) -> None:  # type: ignore[type-arg]
        budget = time.monotonic() + _DRAIN_SECONDS  # a big sync must not starve heartbeats and clients
        for _ in range(_DRAIN):
            if time.monotonic() > budget:
                return
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity: bytes | None = None
            if routed:
                if len(frames) < 2:
                    self.stats.dropped += 1
                    continue
                identity = frames[0].bytes
                frames = frames[1:]
            try:
                message, payload = CODEC.decode(frames)
                sender = self.bus.peer_id(frames[0]) if routed else ""
                self._handle(sock, identity, sender, message, payload)
            except (ProtocolError, BusError, ValueError) as exc:
                self.stats.dropped += 1
                log.debug("master %s: dropped a message: %s", self.origin, exc)
            except StoreError as exc:
                self._store_failed(exc)
                if isinstance(message, Announce):  # the node hears why, and its files stay its own to send again
                    error = f"the master's database failed: {exc}"
                    self._send(sock, identity, Ack(ref=message.ref, ok=False, error=error))

    def _store_failed(self, exc: StoreError) -> None:
        """A write or read of the store failed (a full disk, say): keep serving, from what the store holds.

        Nothing half-done stays in memory: rows waiting to be written are dropped and the replica reloads its
        vector from the store, so what was lost is asked for again by catch-up and anti-entropy."""
        self.stats.store_errors += 1
        self._live_rows = []
        self._relay = []
        try:
            self.replica.reload()
        except StoreError as again:
            exc = again
        now = time.monotonic()
        if now >= self._store_quiet_until:  # a full disk fails every write: say so every 10 s, not every time
            self._store_quiet_until = now + 10.0
            log.error("master %s: %s (%d store errors so far)", self.origin, exc, self.stats.store_errors)

    def _send(self, sock: zmq.Socket, identity: bytes | None, message: Message, *payload: object) -> bool:  # type: ignore[type-arg]
        return not self._deliver(sock, identity, message, *payload)

    def _deliver(self, sock: zmq.Socket, identity: bytes | None, message: Message, *payload: object) -> int:  # type: ignore[type-arg]
        """Send without blocking: 0 if sent, else why not (counted as unsent): EAGAIN, the queue is full;
        EHOSTUNREACH, the peer behind ``identity`` is gone (its next connection has another identity)."""
        frames = CODEC.encode(message, *payload)
        if identity is not None:
            frames = [identity, *frames]
        try:
            sock.send_multipart(frames, zmq.NOBLOCK)  # copy: zero-copy sends start pyzmq's gc thread
        except zmq.ZMQError as exc:
            if exc.errno not in (zmq.EAGAIN, zmq.EHOSTUNREACH):
                raise
            self.stats.unsent += 1
            return int(exc.errno)
        return 0

    # -- message handlers --------------------------------------------------------------------------------------

    def _handle(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        identity: bytes | None,
        sender: str,
        message: Message,
        payload: list[memoryview],
    ) -> None:
        now = time.monotonic()
        if isinstance(message, Updates):
            rows = decode_rows(payload[0])
            self._live_rows.extend(self.replica.accept(rows))
            if len(self._live_rows) >= _LIVE_BATCH:
                self._flush_live()
        elif isinstance(message, Announce):
            self._announce(sock, identity, sender, message, now)
        elif isinstance(message, NodeBeat):
            self.node_live.seen(sender, now)
            self._send(sock, identity, Ack(ref=message.ref))
        elif isinstance(message, MasterBeat):
            self._master_beat(message, now)
        elif isinstance(message, Lookup):
            self._lookup(sock, identity, message, now)
        elif isinstance(message, StatusQuery):
            self._send(sock, identity, self.status(message.ref, digest=message.digest))
        elif isinstance(message, SyncRequest):
            self._flush_live()
            batches: Iterator[list[RecordRow] | bytes]
            if message.pages:
                batches = self.replica.serve_sync_pages(message.vector)
            else:
                batches = self.replica.serve_sync(message.vector)
            serving = _Serving(sock, identity, message.ref, batches, dict(self.replica.vector), window=message.window)
            self._start_serving(serving)
            self.stats.served_syncs += 1
        elif isinstance(message, SyncBatch):
            self._flush_live()
            if message.page:
                self.replica.merge_page(payload[0])
            else:
                self.replica.merge(decode_rows(payload[0]))
            if message.ref in self._batches:
                self._batches[message.ref] += 1
                self._sync_progress(message.ref)
                self._send(sock, identity, SyncAck(ref=message.ref, received=self._batches[message.ref]))
        elif isinstance(message, SyncAck):
            for serving in self._serving:
                mine = serving.ref == message.ref and serving.identity == identity and serving.sock is sock
                if mine and message.received > serving.acked:
                    serving.acked = message.received
                    serving.progress = time.monotonic()
        elif isinstance(message, SyncDone):
            self._sync_done(message)
        elif isinstance(message, Digest):
            self._digest(sock, identity, message)
        elif isinstance(message, BucketRequest):
            self._flush_live()
            self._start_serving(_Serving(sock, identity, 0, self.replica.bucket_rows(message.buckets), None))
        else:  # Ack, Found, Status: replies meant for clients
            raise ValueError(f"unexpected {type(message).__name__}")

    def _announce(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        identity: bytes | None,
        sender: str,
        message: Announce,
        now: float,
    ) -> None:
        if message.holder != sender:
            self.stats.refused += 1
            self.stats.dropped += 1
            log.warning("master %s: node %s tried to register files for %s", self.origin, sender, message.holder)
            self._send(sock, identity, Ack(ref=message.ref, ok=False, error="holder is not your node id"))
            return
        self.node_live.seen(sender, now)
        self._flush_live()
        if message.full:
            pending = self._full_syncs.setdefault(sender, (message.sync, set()))
            if pending[0] != message.sync:
                pending = self._full_syncs[sender] = (message.sync, set())
            pending[1].update(f.name for f in message.files)
            keep = pending[1] if message.final else None
            if message.final:
                del self._full_syncs[sender]
        else:
            keep = None
        rows = self.replica.stamp(sender, message.address, message.files, message.removed, keep)
        if rows:
            self.replica.commit(rows)
            self._forward(rows, own=True)
        self._send(sock, identity, Ack(ref=message.ref, applied=len(rows)))

    def _flush_live(self) -> None:
        rows = self._live_rows
        if not rows:
            return
        self._live_rows = []
        self.replica.commit(rows)
        self._forward(rows, own=False)

    def _forward(self, rows: Sequence[RecordRow], *, own: bool) -> None:
        """Send new rows to peers: ours to every peer; relayed ones only to peers not connected to their origin."""
        for link in self._links.values():
            if own:
                batch = list(rows)
            else:
                knows = self.peer_masters.get(link.origin, set())
                batch = [r for r in rows if r[6] not in knows and r[6] != link.origin]
            for start in range(0, len(batch), _LIVE_BATCH):
                chunk = batch[start : start + _LIVE_BATCH]
                self._send(link.sock, None, Updates(origin=self.origin), encode_rows(chunk))

    def _master_beat(self, beat: MasterBeat, now: float) -> None:
        if beat.origin == self.origin:
            if beat.address != self.address and not self._clash_warned:
                self._clash_warned = True
                log.error(
                    "master at %s uses the same store (origin %s) as this one: give each master its own --db",
                    beat.address,
                    self.origin,
                )
            return
        fresh = self.master_live.seen(beat.origin, now)
        if fresh:
            log.info("master %s: peer %s (%s) is online", self.origin, beat.origin, beat.address)
        for stale in [lk for lk in self._links.values() if lk.origin == beat.origin and lk.address != beat.address]:
            self._unlink(stale)  # the master restarted elsewhere
        self.masters[beat.origin] = beat.address
        self.vectors[beat.origin] = dict(beat.vector)
        self.remote_nodes[beat.origin] = set(beat.nodes)
        self.peer_masters[beat.origin] = set(beat.hears)
        for origin, address in beat.masters.items():
            if origin != self.origin and origin not in self.masters:
                self.masters[origin] = address
        for origin, address in self.masters.items():
            if origin != self.origin and self._link_for(origin) is None:
                self._link(address)
        link = self._links.get(beat.address)
        if link is not None and not link.origin:
            link.origin = beat.origin
        if self.replica.behind(beat.vector) and not self._sync_active(now):
            link = self._link_for(beat.origin)
            if link is not None:
                self._start_sync(link, beat.origin, now)

    def _sync_active(self, now: float) -> bool:
        """One catch-up at a time; one with no batch for 30 s is presumed lost (a long one that keeps delivering
        batches is not restarted)."""
        return any(now - started < 30.0 for _ref, started in self._syncing.values())

    def _sync_progress(self, ref: int) -> None:
        """A batch of sync ``ref`` arrived: it is alive, however long the whole catch-up takes."""
        now = time.monotonic()
        for key, (syncing_ref, _started) in self._syncing.items():
            if syncing_ref == ref:
                self._syncing[key] = (ref, now)
                return

    def _sync_done(self, done: SyncDone) -> None:
        received = self._batches.pop(done.ref, None)
        for origin, (ref, _started) in list(self._syncing.items()):
            if ref == done.ref:
                del self._syncing[origin]
        if received is None:
            raise ValueError(f"SyncDone for unknown sync {done.ref}")
        if received != done.batches:
            log.warning(
                "master %s: sync %d incomplete (%d of %d batches); will retry",
                self.origin,
                done.ref,
                received,
                done.batches,
            )
            return
        self._flush_live()
        self.replica.finish_sync(done.vector)
        self.stats.received_syncs += 1
        self._entropy.defer(time.monotonic())  # just caught up: a digest now would only re-read the whole index

    def _start_sync(self, link: _Link, key: str, now: float) -> None:
        """Ask the master behind ``link`` for everything after our vector (``key``: its origin, or its address)."""
        ref = next(self._refs)
        if self._send(link.sock, None, SyncRequest(ref=ref, vector=dict(self.replica.vector), pages=True)):
            previous = self._syncing.get(key)
            if previous is not None:
                self._batches.pop(previous[0], None)
            self._syncing[key] = (ref, now)
            self._batches[ref] = 0

    def _lookup(self, sock: zmq.Socket, identity: bytes | None, query: Lookup, now: float) -> None:  # type: ignore[type-arg]
        entries: list[Entry] = []
        size = 0
        online = self.online_nodes(now)
        found = self.store.find(
            query.name, glob=query.glob, content_hash=query.content_hash, include_deleted=query.include_deleted
        )
        for record in found:
            cost = wire_size(record.name)
            if entries and (len(entries) >= BATCH_ITEMS or size + cost > BATCH_BYTES):
                self._send(sock, identity, Found(ref=query.ref, entries=entries, done=False))
                entries, size = [], 0
            size += cost
            entries.append(
                Entry(
                    name=record.name,
                    size=record.size,
                    content_hash=record.content_hash,
                    holder=record.holder,
                    address=record.address,
                    mtime_ns=record.mtime_ns,
                    online=record.holder in online and not record.deleted,
                    deleted=record.deleted,
                )
            )
        self._send(sock, identity, Found(ref=query.ref, entries=entries, done=True))

    def _digest(self, sock: zmq.Socket, identity: bytes | None, digest: Digest) -> None:  # type: ignore[type-arg]
        now = time.monotonic()
        if now < self._digest_quiet_until:  # each answer is a full scan: peers (or a flood) get one per half interval
            self.stats.skipped_digests += 1
            return
        self._flush_live()
        differ = self.replica.differing(self.replica.checksums(), digest.buckets)
        self._digest_quiet_until = time.monotonic() + self._entropy.interval / 2
        if not differ:
            return
        self.stats.repairs += 1
        log.info("master %s: %d bucket(s) differ from %s; repairing", self.origin, len(differ), digest.origin)
        self._start_serving(_Serving(sock, identity, 0, self.replica.bucket_rows(differ), None))
        self._send(sock, identity, BucketRequest(ref=0, buckets=differ))

    # -- periodic work -----------------------------------------------------------------------------------------

    def _start_serving(self, serving: _Serving) -> None:
        """Serve a sync or repair; a new sync from the same peer replaces its old one, and the total is bounded."""
        if serving.vector is not None:
            for old in [s for s in self._serving if s.vector is not None and s.identity == serving.identity]:
                if old.sock is serving.sock:
                    self._serving.remove(old)
                    self.stats.abandoned_syncs += 1
        if len(self._serving) >= MAX_SERVING:
            own = [s for s in self._serving if s.identity == serving.identity and s.sock is serving.sock]
            if not own:  # full with other peers' work: this request waits for the requester's retry
                self.stats.abandoned_syncs += 1
                return
            self._serving.remove(own[0])  # a peer may only push out its own oldest
            self.stats.abandoned_syncs += 1
        self._serving.append(serving)

    def _pump_serving(self) -> None:
        now = time.monotonic()
        for serving in list(self._serving):
            if now - serving.progress > self.config.sync_idle:
                log.info("master %s: dropping sync %d, its receiver stopped taking it", self.origin, serving.ref)
                self._serving.remove(serving)
                self.stats.abandoned_syncs += 1
                continue
            for _ in range(2):
                if serving.window and serving.sent - serving.acked >= serving.window:
                    break  # wait for credit
                if serving.waiting is None:
                    batch: list[RecordRow] | bytes | None
                    try:
                        batch = next(serving.batches)
                    except StopIteration:
                        batch = None
                    except StoreError:  # its reader is gone: the requester retries (a SyncDone would say complete)
                        self._serving.remove(serving)
                        self.stats.abandoned_syncs += 1
                        raise
                    if batch is None:
                        self._serving.remove(serving)
                        if serving.vector is not None:
                            done = SyncDone(ref=serving.ref, vector=serving.vector, batches=serving.sent)
                            self._send(serving.sock, serving.identity, done)
                        break
                    if isinstance(batch, bytes):
                        serving.waiting = [SyncBatch(ref=serving.ref, page=True), batch]
                    else:
                        serving.waiting = [SyncBatch(ref=serving.ref), encode_rows(batch)]
                message, data = serving.waiting
                failed = self._deliver(serving.sock, serving.identity, message, data)  # type: ignore[arg-type]
                serving.blocked = bool(failed)
                if failed == zmq.EHOSTUNREACH:  # its requester left: retrying would spin this loop for ever
                    log.info("master %s: dropping sync %d, its receiver is gone", self.origin, serving.ref)
                    self._serving.remove(serving)
                    self.stats.abandoned_syncs += 1
                    break
                if failed:
                    self.stats.unsent -= 1  # not lost: retried next turn
                    break
                serving.waiting = None
                serving.sent += 1
                if not serving.window:
                    serving.progress = time.monotonic()

    def _heartbeat(self, now: float) -> None:
        for origin in self.master_live.expired(now):
            log.info("master %s: peer %s is offline", self.origin, origin)
            self.remote_nodes.pop(origin, None)
            self.peer_masters.pop(origin, None)
            syncing = self._syncing.pop(origin, None)
            if syncing is not None:
                self._batches.pop(syncing[0], None)
        self.node_live.expired(now)
        beat = MasterBeat(
            origin=self.origin,
            address=self.address,
            vector=dict(self.replica.vector),
            masters=dict(self.masters),
            nodes=self.node_live.peers(),
            hears=[o for o in self.master_live.peers() if self.master_live.alive(o, now)],
        )
        for link in self._links.values():
            self._send(link.sock, None, beat)

    def _anti_entropy(self) -> None:
        calm = [
            link
            for link in self._links.values()
            if link.origin
            and self.master_live.alive(link.origin, time.monotonic())
            and _nonzero(self.vectors.get(link.origin, {})) == _nonzero(self.replica.vector)
        ]
        if not calm or self._serving or self._syncing:
            return
        self._digest_turn = (self._digest_turn + 1) % len(calm)
        link = calm[self._digest_turn]
        began = time.monotonic()
        buckets = self.replica.checksums()  # a full scan (~0.7 s at 1,000,000 entries) that holds up the loop:
        self._entropy.interval = max(self.config.anti_entropy, 10 * (time.monotonic() - began))  # at most 10 %
        self._send(link.sock, None, Digest(origin=self.origin, buckets=buckets))

    def _update_rate(self, now: float) -> None:
        mark, count = self._rate_mark
        if now - mark >= 1.0:
            total = self.replica.stats.accepted + self.replica.stats.stamped
            self.stats.rate = (total - count) / (now - mark)
            self._rate_mark = (now, total)

    # -- views -------------------------------------------------------------------------------------------------

    def online_nodes(self, now: float | None = None) -> set[str]:
        """Nodes heard from recently by this master or by any live peer master."""
        now = time.monotonic() if now is None else now
        online = {n for n in self.node_live.peers() if self.node_live.alive(n, now)}
        for origin, nodes in self.remote_nodes.items():
            if self.master_live.alive(origin, now):
                online |= nodes
        return online

    def _summary(self, now: float) -> tuple[int, str]:
        """(entries, digest), recomputed at most every 0.5 s (a full scan on some backends)."""
        version = (self.replica.stats.accepted, self.replica.stats.stamped, self.replica.stats.merged)
        cached = self._summary_cache
        stale = cached is None or cached[0] != version or now - cached[2] > 5.0  # 5 s: writes from outside
        if cached is None or (stale and now >= cached[1]):
            self._flush_live()
            began = time.monotonic()
            entries, digest = self.store.count(), self.store.digest()
            cost = time.monotonic() - began  # a full scan on big indexes: never more than ~20% of our time
            cached = self._summary_cache = (version, now + max(0.5, 5 * cost), now, entries, digest)
        return cached[3], cached[4]

    def status(self, ref: int = 0, *, digest: bool = True) -> Status:
        now = time.monotonic()
        entries, summary = self._summary(now) if digest else (self.entries, "")
        return Status(
            ref=ref,
            origin=self.origin,
            entries=entries,
            digest=summary,
            masters=dict(self.masters),
            masters_online=sorted(o for o in self.masters if o != self.origin and self.master_live.alive(o, now)),
            nodes_online=sorted(self.online_nodes(now)),
            nodes_local=sorted(n for n in self.node_live.peers() if self.node_live.alive(n, now)),
            vector=dict(self.replica.vector),
            applied=self.replica.stats.accepted + self.replica.stats.stamped,
            dropped=self.stats.dropped,
            updates_per_s=self.stats.rate,
        )
