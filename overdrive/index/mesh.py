"""The master mesh without sockets (sans-IO, after etcd raft's ``RawNode``).

One :class:`Mesh` is one master's view of the mesh: gossip membership, catch-up syncs, the snapshots and repairs it
serves under a credit window, anti-entropy scheduling, lookups and full-sync tombstoning, over one
:class:`~overdrive.index.replication.Replica`. The socket shell (:mod:`overdrive.index.master`) feeds it:

* :meth:`Mesh.step` -- a decoded message from a :class:`Peer` (what each message does is in
  :mod:`overdrive.index.mesh_state`);
* :meth:`Mesh.tick` -- once per loop turn: heartbeats, liveness, anti-entropy, purges, counts;
* :meth:`Mesh.outbox` -- what to do now: :class:`Dial` / :class:`Hangup` a link, :class:`Send` a message;
* :meth:`Mesh.report_unreachable` / :meth:`Mesh.report_blocked` -- a send that failed, and why;
* :meth:`Mesh.snapshot` -- a frozen :class:`MeshSnapshot` for other threads and ``Status`` replies.

Time is passed in; the store is the only I/O.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from overdrive.bus.address import DEFAULT_MASTER_PORT, Endpoint, parse_endpoint
from overdrive.bus.codec import Message
from overdrive.bus.credit import Window
from overdrive.bus.heartbeat import Liveness, Ticker
from overdrive.bus.signing import MeshKey
from overdrive.errors import ConfigError, ProtocolError, StoreError
from overdrive.index import membership, mesh_state, mesh_trust, protocol
from overdrive.index.answers import Answers
from overdrive.index.protocol import Ack, Announce, Digest, Found, MasterBeat, Status, SyncBatch, SyncDone, SyncRequest
from overdrive.index.records import RecordRow, encode_rows
from overdrive.index.replication import Replica, ReplicationConfig
from overdrive.index.stores.base import Store

log = logging.getLogger(__name__)

MAX_SERVING = 16
"""Syncs and repairs served at once. Beyond that a peer's request replaces its own oldest, or is refused: one peer
can neither pile them up nor push out another's."""
CATCHUP_SILENCE = 30.0
"""A catch-up with no batch for this long is presumed lost (one that keeps delivering is never restarted)."""


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
    answer_timeout: float = 10.0
    """Seconds a master heard of by gossip has to answer the link we open to it; then it is hung up."""
    forget: float = 60.0
    """Seconds after which a silent known master is forgotten and its link hung up (a configured peer's link
    stays); it is learned again when it answers. At least twice ``master_timeout``."""
    sync_idle: float = 120.0
    """A snapshot being served is dropped when its receiver has acked nothing for this long (it died, or never
    meant to ack), so nothing of a dead sync is kept. Generous: a receiver on a slow store (Firestore at ~1k
    writes/s) takes up to ~25 s per page."""
    replication: ReplicationConfig = field(default_factory=ReplicationConfig)
    mesh_key: MeshKey | None = None
    """The masters' credential (:mod:`.mesh_trust`); without one a master runs solo."""

    def __post_init__(self) -> None:
        if self.peers and self.mesh_key is None:
            raise ConfigError(mesh_trust.NO_MESH_KEY)
        timings = ("heartbeat", "master_timeout", "node_timeout", "anti_entropy", "purge_interval", "sync_idle")
        for name in (*timings, "answer_timeout", "forget"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        if self.master_timeout <= self.heartbeat or self.node_timeout <= self.heartbeat:
            raise ConfigError("timeouts must be longer than the heartbeat interval")


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
    dropped_answers: int = 0
    """Lookups not answered in full (see :mod:`overdrive.index.answers`)."""
    store_errors: int = 0
    skipped_digests: int = 0
    foreign_rows: int = 0
    """Live rows dropped because their origin is not a master we know (only masters originate updates)."""
    unproven: int = 0
    """Of ``dropped``: master messages and proofs from senders that have not proven the mesh key (see mesh_trust)."""
    rate: float = 0.0


@dataclass(frozen=True, slots=True)
class Peer:
    """The other end of a message: our link to a master (``address``), or a connection to our ROUTER
    (``identity``, with ``node`` its authenticated id)."""

    address: str = ""
    identity: bytes | None = None
    node: str = ""

    @classmethod
    def link(cls, address: str) -> Peer:
        return cls(address=address)

    @classmethod
    def routed(cls, identity: bytes, node: str) -> Peer:
        return cls(identity=identity, node=node)


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` (and payload frames) to ``peer``; ``stream`` names the served sync a batch belongs to."""

    peer: Peer
    message: Message
    payload: tuple[bytes | memoryview, ...] = ()
    stream: int = 0


@dataclass(frozen=True, slots=True)
class Dial:
    """Open a link (a DEALER) to the master at ``address``."""

    address: str


@dataclass(frozen=True, slots=True)
class Hangup:
    """Close the link to ``address`` (that master moved)."""

    address: str


Action = Send | Dial | Hangup


@dataclass(slots=True)
class Serving:
    """A sync (``vector`` set) or a repair being streamed to ``peer``, a batch per :meth:`Mesh.outbox`."""

    peer: Peer
    ref: int
    batches: Iterator[list[RecordRow] | bytes]
    vector: dict[str, int] | None
    window: Window
    progress: float
    """When the receiver last acked (or the sync began); without a window, when a batch last went out."""
    stream: int = 0
    waiting: tuple[Message, bytes | memoryview] | None = None
    sent: int = 0
    blocked: bool = False
    """The last send found the queue full: the shell may wait for its poll instead of retrying at once."""
    before: float = 0.0


@dataclass(slots=True)
class Catchup:
    """A sync we asked for: its ref, when it last showed life, and the batches received so far."""

    ref: int
    heard: float
    address: str
    """The link it was asked on: only that link may end it."""
    batches: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class MeshSnapshot:
    """One master's state at one instant, safe to read from any thread (nothing in it is shared)."""

    origin: str
    address: str
    entries: int
    digest: str
    masters: dict[str, str]
    masters_online: tuple[str, ...]
    nodes_online: tuple[str, ...]
    nodes_local: tuple[str, ...]
    vector: dict[str, int]
    applied: int
    stats: MasterStats

    def status(self, ref: int = 0) -> Status:
        return Status(
            ref=ref,
            origin=self.origin,
            entries=self.entries,
            digest=self.digest,
            masters=dict(self.masters),
            masters_online=list(self.masters_online),
            nodes_online=list(self.nodes_online),
            nodes_local=list(self.nodes_local),
            vector=dict(self.vector),
            applied=self.applied,
            dropped=self.stats.dropped,
            updates_per_s=self.stats.rate,
        )


class Mesh:
    """One master's replication and membership state; every decision, no sockets.

    ``clock`` only measures how long a full scan took (to keep such scans to a share of the loop's time)."""

    def __init__(
        self,
        store: Store,
        config: MasterConfig | None = None,
        *,
        now: float,
        clock: Callable[[], float] = time.monotonic,
        node_id: str = "",
    ) -> None:
        """``node_id``: this master's own (its links' ZAP User-Id), bound into its mesh proofs."""
        self.config = config or MasterConfig()
        self.trust = mesh_trust.MeshTrust(self.config.mesh_key, node_id)
        self.store = store
        self.replica = Replica(store, self.config.replication)
        self.clock = clock
        self.stats = MasterStats()
        self.address = ""
        self.masters: dict[str, str] = {}
        """Known masters (origin -> address), ourselves included: each answered on a link we opened."""
        self.candidates = membership.Candidates(self.config.answer_timeout)
        self.heard: Liveness[str] = Liveness(max(self.config.forget, 2 * self.config.master_timeout))
        """Known masters by when we last heard them: silent for ``forget``, they are forgotten."""
        self.vectors: dict[str, dict[str, int]] = {}
        self.remote_nodes: dict[str, set[str]] = {}
        self.peer_masters: dict[str, set[str]] = {}
        self.master_live: Liveness[str] = Liveness(self.config.master_timeout)
        self.node_live: Liveness[str] = Liveness(self.config.node_timeout)
        self.links: dict[str, str] = {}
        """Our links: address -> origin of the master there ("" until its heartbeat says)."""
        self.serving: list[Serving] = []
        self.answers: Answers[Peer] = Answers()
        self.catchups: dict[str, Catchup] = {}
        """Syncs we asked for, by the origin (or "@address") of the master asked."""
        self.full_syncs: dict[str, tuple[int, set[str]]] = {}
        """Per node, the names of the full announce round under way (everything else it had is tombstoned)."""
        self.live_rows: list[RecordRow] = []
        self.entries = 0
        self.clash_warned = False
        self.digest_quiet_until = 0.0
        self.entropy = Ticker(self.config.anti_entropy, now + self.config.anti_entropy)
        self._beat = Ticker(self.config.heartbeat)
        self._purge = Ticker(self.config.purge_interval, now + min(60.0, self.config.purge_interval))
        self._count = Ticker(2.0)
        self._queue: list[Action] = []
        self._refs = itertools.count(1)
        self._streams = itertools.count(1)
        self._digest_turn = 0
        self._rate_mark = (now, 0)
        self._store_quiet_until = 0.0
        self._summary: tuple[tuple[int, int, int], float, float, int, str] | None = None

    @property
    def origin(self) -> str:
        return self.replica.origin

    # -- inputs ------------------------------------------------------------------------------------------------

    def start(self, address: str, now: float) -> None:
        """We listen at ``address``: dial the configured peers and catch up from the first (the Clone pattern:
        without waiting for its heartbeat)."""
        self.address = address
        self.masters[self.origin] = address
        for peer in self.config.peers:
            self.link(peer.display)

    def step(self, peer: Peer, message: Message, payload: list[memoryview], now: float) -> None:
        """Handle one message from ``peer``; malformed input (ProtocolError) is counted in ``stats.dropped`` and
        changes nothing. Any other exception is a bug of ours and propagates."""
        try:
            mesh_state.step(self, peer, message, payload, now)
        except ProtocolError as exc:
            self.reject(exc)
        except StoreError as exc:
            self.store_failed(exc, now)
            if isinstance(message, Announce):  # the node hears why, and its files stay its own to send again
                error = f"the master's database failed: {exc}"
                self.send(peer, Ack(ref=message.ref, ok=False, error=error))

    def reject(self, reason: object) -> None:
        """A message was dropped (undecodable, unattributable or invalid)."""
        self.stats.dropped += 1
        log.debug("master %s: dropped a message: %s", self.origin, reason)

    def tick(self, now: float) -> None:
        """Periodic work, once per loop turn."""
        for key in [k for k, c in self.catchups.items() if now - c.heard >= CATCHUP_SILENCE]:
            del self.catchups[key]  # presumed lost (its SyncDone never came): it must not hold off anti-entropy
        membership.tend(self, now)
        mesh_trust.tend(self, now)
        try:
            mesh_state.settle(self)
            if self._beat.due(now):
                self._heartbeat(now)
            if self.entropy.due(now):
                self._anti_entropy(now)
            if self._purge.due(now):
                self.replica.purge()
            if self._count.due(now) and not (self.busy or self.sync_active(now)):  # a full scan: not amid a sync
                began = self.clock()
                self.entries = self.store.count()
                self._count.interval = max(2.0, 10 * (self.clock() - began))
        except StoreError as exc:
            self.store_failed(exc, now)
        mark, count = self._rate_mark
        if now - mark >= 1.0:
            total = self.replica.stats.accepted + self.replica.stats.stamped
            self.stats.rate = (total - count) / (now - mark)
            self._rate_mark = (now, total)

    def report_unreachable(self, send: Send) -> None:
        """``send`` failed: its peer is gone (a ROUTER identity that left; its next connection has another)."""
        self.stats.unsent += 1
        if send.stream:  # retrying would spin the loop for ever
            self.answers.drop(send.stream)
            self.stats.dropped_answers = self.answers.dropped
            for serving in [s for s in self.serving if s.stream == send.stream]:
                log.info("master %s: dropping sync %d, its receiver is gone", self.origin, serving.ref)
                self._drop(serving)
        self._unsent(send)

    def report_blocked(self, send: Send) -> None:
        """``send`` failed: the peer's queue is full. A served batch is kept and sent again later; anything else
        is lost (its peer asks again)."""
        if send.stream and isinstance(send.message, Found) and self.answers.refused(send.stream, send.message):
            return
        for serving in self.serving:
            if send.stream and serving.stream == send.stream:
                serving.waiting = (send.message, send.payload[0])
                serving.sent -= 1
                serving.window.free(serving.sent + 1)
                serving.progress = serving.before
                serving.blocked = True
                return
        self.stats.unsent += 1
        self._unsent(send)

    def _unsent(self, send: Send) -> None:
        if isinstance(send.message, SyncRequest):  # never asked: a later heartbeat may ask again at once
            for key in [k for k, c in self.catchups.items() if c.ref == send.message.ref]:
                del self.catchups[key]

    # -- outputs -----------------------------------------------------------------------------------------------

    def send(self, peer: Peer, message: Message, *payload: bytes | memoryview) -> None:
        self._queue.append(Send(peer, message, payload))

    def send_link(self, address: str, message: Message, *payload: bytes | memoryview) -> None:
        self._queue.append(Send(Peer.link(address), message, payload))

    def outbox(self, now: float, *, serve: bool = True) -> list[Action]:
        """What to do now, in order: queued actions, then (``serve``) one batch of every served sync that has
        credit. Replies go out between messages with ``serve=False``; batches once or twice per loop turn."""
        if serve:
            try:
                for answer, batch in self.answers.pump(now):
                    self._queue.append(Send(answer.peer, batch, (), answer.stream))
                self._pump(now)
            except StoreError as exc:
                self.store_failed(exc, now)
        self.stats.dropped_answers = self.answers.dropped
        out, self._queue = self._queue, []
        return [a for a in out if not isinstance(a, Send) or self.trust.may_send(a)]

    @property
    def busy(self) -> bool:
        """A served sync or a lookup answer could send now: the shell should not wait for input."""
        return self.answers.busy or any(not s.blocked and not s.window.full for s in self.serving)

    def snapshot(self, now: float, *, digest: bool = False) -> MeshSnapshot:
        """The state now; ``digest`` adds the entries and digest of the whole index (a full scan, cached)."""
        entries, summary = self._digests(now) if digest else (self.entries, "")
        online = self.online_nodes(now)
        return MeshSnapshot(
            origin=self.origin,
            address=self.address,
            entries=entries,
            digest=summary,
            masters=dict(self.masters),
            masters_online=tuple(
                sorted(o for o in self.masters if o != self.origin and self.master_live.alive(o, now))
            ),
            nodes_online=tuple(sorted(online)),
            nodes_local=tuple(sorted(n for n in self.node_live.peers() if self.node_live.alive(n, now))),
            vector=self.replica.wire_vector(self.masters),
            applied=self.replica.stats.accepted + self.replica.stats.stamped,
            stats=dataclasses.replace(self.stats),
        )

    def online_nodes(self, now: float) -> set[str]:
        """Nodes heard from recently by this master or by any live peer master."""
        online = {n for n in self.node_live.peers() if self.node_live.alive(n, now)}
        for origin, nodes in self.remote_nodes.items():
            if self.master_live.alive(origin, now):
                online |= nodes
        return online

    def _digests(self, now: float) -> tuple[int, str]:
        """(entries, digest), recomputed at most every 0.5 s and at most ~20 % of the time (a full scan)."""
        version = (self.replica.stats.accepted, self.replica.stats.stamped, self.replica.stats.merged)
        cached = self._summary
        stale = cached is None or cached[0] != version or now - cached[2] > 5.0  # 5 s: writes from outside
        if cached is None or (stale and now >= cached[1]):
            mesh_state.settle(self)
            began = self.clock()
            entries, digest = self.store.count(), self.store.digest()
            cost = self.clock() - began
            cached = self._summary = (version, now + max(0.5, 5 * cost), now, entries, digest)
        return cached[3], cached[4]

    # -- links and syncs ---------------------------------------------------------------------------------------

    def link(self, address: str) -> None:
        """Make sure we have a link to ``address`` (not to ourselves; a malformed address is ignored)."""
        if address == self.address or address in self.links:
            return
        try:
            parse_endpoint(address, DEFAULT_MASTER_PORT)
        except ConfigError:
            return
        self.links[address] = ""
        self._queue.append(Dial(address))
        log.info("master %s: connecting to peer %s", self.origin, address)

    def unlink(self, address: str) -> None:
        origin = self.links.pop(address)
        log.info("master %s: dropping link to %s (%s)", self.origin, address, origin or "never answered")
        self._queue.append(Hangup(address))
        self.trust.forget_link(address)
        self.catchups.pop(origin, None)
        self.serving = [s for s in self.serving if s.peer.address != address]

    def link_for(self, origin: str) -> str | None:
        """The address of our link to ``origin``, dialling it if we know where it is."""
        for address, linked in self.links.items():
            if linked == origin:
                return address
        known = self.masters.get(origin)
        if known:
            self.link(known)
            if known in self.links:
                return known
        return None

    def start_sync(self, address: str, key: str, now: float) -> None:
        """Ask the master at ``address`` for everything after our vector (``key``: its origin, or "@address")."""
        ref = next(self._refs)
        vector = self.replica.wire_vector(self.masters)
        self.send(Peer.link(address), SyncRequest(ref=ref, vector=vector, pages=True))
        self.catchups[key] = Catchup(ref, now, address)

    def sync_active(self, now: float) -> bool:
        """One catch-up at a time; one silent for CATCHUP_SILENCE is presumed lost."""
        return any(now - c.heard < CATCHUP_SILENCE for c in self.catchups.values())

    def serve(
        self,
        peer: Peer,
        ref: int,
        batches: Iterator[list[RecordRow] | bytes],
        vector: dict[str, int] | None,
        window: Window,
        now: float,
    ) -> None:
        """Serve a sync (``vector`` set) or repair; a new sync from the same peer replaces its old one, and the
        total is bounded."""
        serving = Serving(peer, ref, batches, vector, window, now, next(self._streams))
        if serving.vector is not None:
            for old in [s for s in self.serving if s.vector is not None and s.peer == serving.peer]:
                self._drop(old)
        if len(self.serving) >= MAX_SERVING:
            own = [s for s in self.serving if s.peer == serving.peer]
            if not own:  # full with other peers' work: this request waits for the requester's retry
                self.stats.abandoned_syncs += 1
                return
            self._drop(own[0])  # a peer may only push out its own oldest
        self.serving.append(serving)

    def answer(self, peer: Peer, batches: Iterator[Found], now: float) -> None:
        """Answer a lookup from ``peer``: the first batch now, the rest as the peer takes them."""
        stream = next(self._streams)
        first = self.answers.start(peer, batches, stream, now)
        self.stats.dropped_answers = self.answers.dropped
        if first is not None:
            self._queue.append(Send(peer, first, (), stream))

    def _drop(self, serving: Serving) -> None:
        self.serving.remove(serving)
        self.stats.abandoned_syncs += 1

    def _pump(self, now: float) -> None:
        for serving in list(self.serving):
            if now - serving.progress > self.config.sync_idle:
                log.info("master %s: dropping sync %d, its receiver stopped taking it", self.origin, serving.ref)
                self._drop(serving)
                continue
            if serving.window.full:
                continue  # wait for credit
            if serving.waiting is None:
                try:
                    batch = next(serving.batches, None)
                except StoreError:  # its reader is gone: the requester retries (a SyncDone would say complete)
                    self._drop(serving)
                    raise
                if batch is None:
                    self.serving.remove(serving)
                    if serving.vector is not None:
                        done = SyncDone(ref=serving.ref, vector=serving.vector, batches=serving.sent)
                        self.send(serving.peer, done)
                    continue
                if isinstance(batch, bytes):
                    serving.waiting = (SyncBatch(ref=serving.ref, page=True), batch)
                else:
                    serving.waiting = (SyncBatch(ref=serving.ref), encode_rows(batch))
            message, data = serving.waiting
            serving.waiting = None
            serving.sent += 1
            serving.blocked = False
            serving.before = serving.progress
            if serving.window.capacity:
                serving.window.add(serving.sent, now)
            else:
                serving.progress = now
            self._queue.append(Send(serving.peer, message, (data,), serving.stream))

    # -- periodic work -----------------------------------------------------------------------------------------

    def _heartbeat(self, now: float) -> None:
        for origin in self.master_live.expired(now):
            log.info("master %s: peer %s is offline", self.origin, origin)
            self.remote_nodes.pop(origin, None)
            self.peer_masters.pop(origin, None)
            self.catchups.pop(origin, None)
        self.node_live.expired(now)
        beat = self.beat(now)
        for address in self.links:
            self.send(Peer.link(address), beat)

    def beat(self, now: float) -> MasterBeat:
        """Our heartbeat: it gossips known masters only, and never more than a MasterBeat may carry."""
        return MasterBeat(
            origin=self.origin,
            address=self.address,
            vector=self.replica.wire_vector(self.masters),
            masters=dict(self.masters),
            nodes=self.node_live.peers()[-protocol.BEAT_NODES :],
            hears=[o for o in self.master_live.peers() if self.master_live.alive(o, now)],
        )

    def _anti_entropy(self, now: float) -> None:
        mine = membership.masters_part(self, self.replica.vector)
        calm = [
            address
            for address, origin in self.links.items()
            if origin
            and self.master_live.alive(origin, now)
            and membership.masters_part(self, self.vectors.get(origin, {})) == mine
        ]
        if not calm or self.serving or self.catchups:
            return
        self._digest_turn = (self._digest_turn + 1) % len(calm)
        began = self.clock()
        buckets = self.replica.checksums()  # a full scan (~0.7 s at 1,000,000 entries) that holds up the loop:
        self.entropy.interval = max(self.config.anti_entropy, 10 * (self.clock() - began))  # at most 10 %
        self.send(Peer.link(calm[self._digest_turn]), Digest(origin=self.origin, buckets=buckets))

    def store_failed(self, exc: StoreError, now: float) -> None:
        """A write or read of the store failed (a full disk, say): keep serving, from what the store holds.

        Nothing half-done stays in memory: rows waiting to be written are dropped and the replica reloads its
        vector from the store, so what was lost is asked for again by catch-up and anti-entropy."""
        self.stats.store_errors += 1
        self.live_rows = []
        try:
            self.replica.reload()
        except StoreError as again:
            exc = again
        if now >= self._store_quiet_until:  # a full disk fails every write: say so every 10 s, not every time
            self._store_quiet_until = now + 10.0
            log.error("master %s: %s (%d store errors so far)", self.origin, exc, self.stats.store_errors)
