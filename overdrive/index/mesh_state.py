"""Every transition of the master mesh in one table: message type -> what it does to a :class:`~.mesh.Mesh`.

The one rule that spans transitions lives here too (:func:`settle`): rows received live (``Updates``) wait in a
buffer so that thousands of them are committed in one transaction, and anything that reads the store, writes other
rows to it or changes the vector must see them first. A transition says so with ``settles=True``; the table applies
it, so no handler has to remember.

Handlers raise ``ProtocolError`` for peer input that makes no sense (the mesh counts it dropped); anything else they
raise is a bug and propagates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from overdrive.bus.codec import Message
from overdrive.bus.credit import Window
from overdrive.errors import ProtocolError
from overdrive.index import membership, mesh_trust
from overdrive.index.protocol import (
    BATCH_BYTES,
    BATCH_ITEMS,
    Ack,
    Announce,
    BucketRequest,
    Digest,
    Entry,
    Found,
    Lookup,
    MasterBeat,
    MeshHello,
    MeshProof,
    NodeBeat,
    StatusQuery,
    SyncAck,
    SyncBatch,
    SyncDone,
    SyncRequest,
    Updates,
)
from overdrive.index.records import RecordRow, decode_rows, encode_rows, wire_size

if TYPE_CHECKING:
    from overdrive.index.mesh import Mesh, Peer

log = logging.getLogger(__name__)

LIVE_BATCH = 5000
"""Live rows buffered before a commit, and rows per forwarded ``Updates``."""


def settle(mesh: Mesh) -> None:
    """Commit the buffered live rows and forward them: relayed rows go only to peers not connected to their
    origin."""
    rows = mesh.live_rows
    if not rows:
        return
    mesh.live_rows = []
    mesh.replica.commit(rows)
    forward(mesh, rows, own=False)


def forward(mesh: Mesh, rows: list[RecordRow], *, own: bool) -> None:
    """Send new rows to every link: ours to every peer; relayed ones only where their origin is not heard."""
    for address, origin in mesh.links.items():
        if own:
            batch = rows
        else:
            knows = mesh.peer_masters.get(origin, set())
            batch = [r for r in rows if r[6] not in knows and r[6] != origin]
        for start in range(0, len(batch), LIVE_BATCH):
            chunk = batch[start : start + LIVE_BATCH]
            mesh.send_link(address, Updates(origin=mesh.origin), encode_rows(chunk))


# -- the transitions -------------------------------------------------------------------------------------------


def _updates(mesh: Mesh, peer: Peer, message: Updates, payload: list[memoryview], now: float) -> None:
    rows = decode_rows(payload[0])
    ours = [r for r in rows if membership.may_originate(mesh, r[6])]
    if len(ours) < len(rows):  # made-up origins would fill the version vector: dropped, counted
        mesh.stats.foreign_rows += len(rows) - len(ours)
        mesh.reject(f"{len(rows) - len(ours)} row(s) from origins that are not known masters")
    mesh.live_rows.extend(mesh.replica.accept(ours))
    if len(mesh.live_rows) >= LIVE_BATCH:
        settle(mesh)


def _announce(mesh: Mesh, peer: Peer, message: Announce, payload: list[memoryview], now: float) -> None:
    sender = peer.node
    if message.holder != sender:
        mesh.stats.refused += 1
        mesh.stats.dropped += 1
        log.warning("master %s: node %s tried to register files for %s", mesh.origin, sender, message.holder)
        mesh.send(peer, Ack(ref=message.ref, ok=False, error="holder is not your node id"))
        return
    mesh.node_live.seen(sender, now)
    hlc = mesh.replica.node_stamp(message.clock) if message.clock else 0
    if hlc is None:  # held up in this master while the node moved on, or a node behind our clock: it tries again
        mesh.stats.refused += 1
        error = "report stamped over a minute behind the master's clock"
        mesh.send(peer, Ack(ref=message.ref, ok=False, error=error, clock=mesh.replica.clock.now()))
        return
    keep: set[str] | None = None
    if message.full:  # a full round lists every file of the node: after its final batch, the rest is tombstoned
        pending = mesh.full_syncs.setdefault(sender, (message.sync, set()))
        if pending[0] != message.sync:
            pending = mesh.full_syncs[sender] = (message.sync, set())
        pending[1].update(f.name for f in message.files)
        if message.final:
            keep = pending[1]
            del mesh.full_syncs[sender]
    rows = mesh.replica.stamp(sender, message.address, message.files, message.removed, keep, hlc)
    if rows:
        mesh.replica.commit(rows)
        forward(mesh, rows, own=True)
    mesh.send(peer, Ack(ref=message.ref, applied=len(rows), clock=mesh.replica.clock.now()))


def _node_beat(mesh: Mesh, peer: Peer, message: NodeBeat, payload: list[memoryview], now: float) -> None:
    mesh.node_live.seen(peer.node, now)
    mesh.send(peer, Ack(ref=message.ref, clock=mesh.replica.clock.now()))


def _master_beat(mesh: Mesh, peer: Peer, beat: MasterBeat, payload: list[memoryview], now: float) -> None:
    if beat.origin == mesh.origin:
        if beat.address != mesh.address and not mesh.clash_warned:
            mesh.clash_warned = True
            log.error(
                "master at %s uses the same store (origin %s) as this one: give each master its own --db",
                beat.address,
                mesh.origin,
            )
        return
    if peer.identity is not None:  # on our ROUTER: the sender may claim any origin and address
        if mesh.origin not in beat.hears:  # the handshake: answer on the connection it opened
            mesh.send(peer, mesh.beat(now))
        if mesh.masters.get(beat.origin) != beat.address:
            membership.propose(mesh, beat.address, "@" + peer.node, now)  # a candidate until it answers our own link
            return
    elif beat.address != peer.address:  # the master we dialled says it listens elsewhere: try that address
        membership.propose(mesh, beat.address, beat.origin, now)
        return
    elif not membership.confirm(mesh, beat.origin, beat.address, now):
        return
    mesh.heard.seen(beat.origin, now)
    if mesh.master_live.seen(beat.origin, now):
        log.info("master %s: peer %s (%s) is online", mesh.origin, beat.origin, beat.address)
    for stale in [a for a, o in mesh.links.items() if o == beat.origin and a != beat.address]:
        mesh.unlink(stale)  # the master restarted elsewhere
    mesh.vectors[beat.origin] = dict(beat.vector)
    mesh.remote_nodes[beat.origin] = set(beat.nodes)
    mesh.peer_masters[beat.origin] = set(beat.hears)
    for origin, address in beat.masters.items():  # gossip: masters it knows are candidates to us
        if origin != mesh.origin and mesh.masters.get(origin) != address:
            membership.propose(mesh, address, beat.origin, now)
    for origin in list(mesh.masters):
        if origin != mesh.origin:
            mesh.link_for(origin)
    if mesh.links.get(beat.address) == "":
        mesh.links[beat.address] = beat.origin
    if mesh.replica.behind(mesh.replica.admitted(beat.vector, mesh.masters)) and not mesh.sync_active(now):
        link = mesh.link_for(beat.origin)
        if link is not None:
            mesh.start_sync(link, beat.origin, now)


def _lookup(mesh: Mesh, peer: Peer, query: Lookup, payload: list[memoryview], now: float) -> None:
    mesh.answer(peer, _found(mesh, query, now), now)


def _found(mesh: Mesh, query: Lookup, now: float) -> Iterator[Found]:
    """The answer to ``query`` in size-bounded batches, the last one ``done``; read from the store as it goes."""
    entries: list[Entry] = []
    size = 0
    online = mesh.online_nodes(now)
    found = mesh.store.find(
        query.name, glob=query.glob, content_hash=query.content_hash, include_deleted=query.include_deleted
    )
    for record in found:
        cost = wire_size(record.name)
        if entries and (len(entries) >= BATCH_ITEMS or size + cost > BATCH_BYTES):
            yield Found(ref=query.ref, entries=entries, done=False)
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
    yield Found(ref=query.ref, entries=entries, done=True)


def _status_query(mesh: Mesh, peer: Peer, message: StatusQuery, payload: list[memoryview], now: float) -> None:
    mesh.send(peer, mesh.snapshot(now, digest=message.digest).status(message.ref))


def _sync_request(mesh: Mesh, peer: Peer, message: SyncRequest, payload: list[memoryview], now: float) -> None:
    batches: Iterator[list[RecordRow] | bytes]
    if message.pages:
        batches = mesh.replica.serve_sync_pages(message.vector)
    else:
        batches = mesh.replica.serve_sync(message.vector)
    vector = mesh.replica.wire_vector(mesh.masters)
    mesh.serve(peer, message.ref, batches, vector, Window(message.window), now)
    mesh.stats.served_syncs += 1


def _sync_batch(mesh: Mesh, peer: Peer, message: SyncBatch, payload: list[memoryview], now: float) -> None:
    began = mesh.clock()
    if message.page:
        mesh.replica.merge_page(payload[0])
    else:
        mesh.replica.merge(decode_rows(payload[0]))
    for catchup in mesh.catchups.values():
        if catchup.ref == message.ref:  # alive, however long the whole catch-up takes: credit for one more
            catchup.batches += 1
            catchup.heard = now + (mesh.clock() - began)  # once merged: a slow merge is not silence
            mesh.send(peer, SyncAck(ref=message.ref, received=catchup.batches))
            return


def _sync_ack(mesh: Mesh, peer: Peer, message: SyncAck, payload: list[memoryview], now: float) -> None:
    for serving in mesh.serving:
        if serving.ref == message.ref and serving.peer == peer and serving.window.free_to(message.received):
            serving.progress = now


def _sync_done(mesh: Mesh, peer: Peer, done: SyncDone, payload: list[memoryview], now: float) -> None:
    mine = [key for key, c in mesh.catchups.items() if c.ref == done.ref and c.address == peer.address]
    if not mine:
        raise ProtocolError(f"SyncDone for unknown sync {done.ref}")
    received = mesh.catchups[mine[0]].batches
    for key in mine:
        del mesh.catchups[key]
    if received != done.batches:
        log.warning(
            "master %s: sync %d incomplete (%d of %d batches); will retry",
            mesh.origin,
            done.ref,
            received,
            done.batches,
        )
        return
    mesh.replica.finish_sync(mesh.replica.admitted(done.vector, mesh.masters))
    mesh.stats.received_syncs += 1
    mesh.entropy.defer(now)  # just caught up: a digest now would only re-read the whole index


def _digest(mesh: Mesh, peer: Peer, digest: Digest, payload: list[memoryview], now: float) -> None:
    if now < mesh.digest_quiet_until:  # each answer is a full scan: peers (or a flood) get one per half interval
        mesh.stats.skipped_digests += 1
        return
    began = mesh.clock()
    differ = mesh.replica.differing(mesh.replica.checksums(), digest.buckets)
    mesh.digest_quiet_until = now + (mesh.clock() - began) + mesh.entropy.interval / 2
    if not differ:
        return
    mesh.stats.repairs += 1
    log.info("master %s: %d bucket(s) differ from %s; repairing", mesh.origin, len(differ), digest.origin)
    mesh.serve(peer, 0, mesh.replica.bucket_rows(differ), None, Window(), now)
    mesh.send(peer, BucketRequest(ref=0, buckets=differ))


def _bucket_request(mesh: Mesh, peer: Peer, message: BucketRequest, payload: list[memoryview], now: float) -> None:
    mesh.serve(peer, 0, mesh.replica.bucket_rows(message.buckets), None, Window(), now)


@dataclass(frozen=True, slots=True)
class Transition:
    """What a message does, and whether buffered live rows must reach the store first."""

    handle: Callable[[Mesh, Peer, Any, list[memoryview], float], None]
    settles: bool


TABLE: dict[type[Message], Transition] = {
    Updates: Transition(_updates, settles=False),
    Announce: Transition(_announce, settles=True),
    NodeBeat: Transition(_node_beat, settles=False),
    MasterBeat: Transition(_master_beat, settles=False),
    Lookup: Transition(_lookup, settles=False),
    StatusQuery: Transition(_status_query, settles=False),  # a digest settles when it scans (Mesh._digests)
    SyncRequest: Transition(_sync_request, settles=True),
    SyncBatch: Transition(_sync_batch, settles=True),
    SyncAck: Transition(_sync_ack, settles=False),
    SyncDone: Transition(_sync_done, settles=True),
    Digest: Transition(_digest, settles=True),
    BucketRequest: Transition(_bucket_request, settles=True),
    MeshHello: Transition(mesh_trust.hello_received, settles=False),
    MeshProof: Transition(mesh_trust.proof_received, settles=False),
}
"""Ack, Found and Status are replies meant for clients: a master receiving one drops it."""


def step(mesh: Mesh, peer: Peer, message: Message, payload: list[memoryview], now: float) -> None:
    transition = TABLE.get(type(message))
    if transition is None:
        raise ProtocolError(f"unexpected {type(message).__name__}")
    if not mesh_trust.admit(mesh, peer, message, now):
        return
    if transition.settles:
        settle(mesh)
    transition.handle(mesh, peer, message, payload, now)
