"""The index protocol: every message nodes, clients and masters exchange, and its one codec.

Node or client -> master (replies go back on the same connection):

* :class:`Announce` -- a node's files (batched). ``full=True`` batches of one ``sync`` round together list every
  file the node shares; after the ``final`` batch the master tombstones that node's other entries. The master
  answers :class:`Ack`. ``holder`` must equal the sender's authenticated node id, or the batch is refused.
* :class:`NodeBeat` -- "I am alive"; answered by :class:`Ack` (nodes use it to detect a dead master).
* :class:`Lookup` -- entries whose name matches (exactly, or a glob) and/or a content hash; answered by one or more
  :class:`Found` (``done`` on the last).
* :class:`StatusQuery` -- answered by :class:`Status` (entries, digest, peers, nodes, rates).

Master <-> master (each master connects a DEALER to every other master's ROUTER):

* :class:`MasterBeat` -- heartbeat with the sender's version vector, the masters it knows (gossip membership) and
  the nodes connected to it (so any master can say who is online).
* :class:`Updates` -- newly stamped records (live replication); payload frame = msgpack array of record rows.
* :class:`SyncRequest` / :class:`SyncBatch` / :class:`SyncDone` -- Clone-style catch-up: "send me everything
  after my version vector"; batches carry rows in one payload frame (``pages``: a SQLite page image each, which
  SQLite stores fill and load without Python objects per row), ``SyncDone`` carries the vector to merge.
  :class:`SyncAck` gives credit: the server keeps at most ``window`` batches unacknowledged, so a slow
  receiver never has a whole snapshot queued in memory.
* :class:`Digest` / :class:`BucketRequest` / :class:`SyncBatch` -- anti-entropy over hash buckets: a peer whose
  bucket digests differ sends its records of those buckets and asks for ours.
* :class:`~overdrive.bus.kind.WrongService` -- a master's answer to a message of another overdrive protocol (a
  fetcher's Open): "I am a master".
* :class:`MeshHello` / :class:`MeshProof` -- before any of the above, both ends of a link prove they hold the mesh
  key (:mod:`overdrive.index.mesh_trust`); a master that gets master traffic from an unproven connection answers
  ``MeshHello`` ("prove it again").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, ClassVar, TypeVar

import msgspec

from overdrive.bus.codec import Codec, Message
from overdrive.bus.kind import WrongService
from overdrive.files.model import ContentHash, FileInfo, Mtime, Name, NonNegative
from overdrive.index.records import Address, NodeId, wire_size

MAX_ROWS_PAYLOAD = 48 << 20
BATCH_BYTES = 512 << 10
"""Target header size for batched messages (Announce, Found): half the codec's 1 MiB header limit."""
BATCH_ITEMS = 2000
"""Largest payload frame of record rows (a snapshot batch)."""

Ref = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Pattern = Annotated[str, msgspec.Meta(max_length=4096)]
Text = Annotated[str, msgspec.Meta(max_length=300)]
BEAT_NODES = 10_000
"""Nodes a master's heartbeat lists at most (~20 bytes each: well inside the codec's 1 MiB header, where the
100,000 a MasterBeat may list to be decoded would not be)."""
BucketList = Annotated[list[Annotated[int, msgspec.Meta(ge=0, le=255)]], msgspec.Meta(max_length=256)]
VECTOR_LIMIT = 10_000
"""Origins a version vector on the wire may hold; a master sends at most this many (see ``Replica.wire_vector``)."""
VersionVector = Annotated[dict[NodeId, NonNegative], msgspec.Meta(max_length=VECTOR_LIMIT)]


T = TypeVar("T")


def size_batches(items: Sequence[T], name: Callable[[T], str], *, limit: int = BATCH_BYTES) -> list[list[T]]:
    """Split ``items`` into batches of at most BATCH_ITEMS and about ``limit`` bytes (names can be 4 KiB)."""
    batches: list[list[T]] = []
    current: list[T] = []
    size = 0
    for item in items:
        cost = wire_size(name(item))
        if current and (len(current) >= BATCH_ITEMS or size + cost > limit):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += cost
    if current:
        batches.append(current)
    return batches


class Announce(Message, tag="announce", frozen=True):
    """A node's files; ``full`` rounds (``sync`` id) replace everything the node had."""

    ref: Ref
    holder: NodeId
    address: Address
    files: Annotated[list[FileInfo], msgspec.Meta(max_length=5000)] = msgspec.field(default_factory=list)
    removed: Annotated[list[Name], msgspec.Meta(max_length=5000)] = msgspec.field(default_factory=list)
    full: bool = False
    sync: Ref = 0
    final: bool = True
    clock: NonNegative = 0
    """The node's stamp for this report (its clock follows the masters' from their Acks): a holder's rows are
    ordered by the holder's own clock, so a report a stalled master handles late loses to newer ones sent through
    another master. 0: the master stamps with its own clock."""


class NodeBeat(Message, tag="nbeat", frozen=True):
    """A node's heartbeat."""

    ref: Ref


class Ack(Message, tag="ack", frozen=True):
    """Reply to Announce/NodeBeat: ``ok`` false with ``error`` when refused; ``applied`` new versions stamped."""

    ref: Ref
    ok: bool = True
    applied: NonNegative = 0
    error: Text = ""
    clock: NonNegative = 0
    """The master's clock, which the node's clock follows (0: not given)."""


class Lookup(Message, tag="lookup", frozen=True):
    """Find entries: ``name`` exact or (``glob``) an fnmatch pattern; empty name = all; optional hash filter."""

    ref: Ref
    name: Pattern = ""
    glob: bool = False
    content_hash: ContentHash | None = None
    include_deleted: bool = False


class Entry(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A lookup result: one holder's copy of one file, and whether that holder is online now."""

    name: Name
    size: NonNegative
    content_hash: ContentHash
    holder: NodeId
    address: Address
    mtime_ns: Mtime
    online: bool
    deleted: bool = False


class Found(Message, tag="found", frozen=True):
    """Some lookup results; ``done`` on the last reply of a lookup."""

    ref: Ref
    entries: Annotated[list[Entry], msgspec.Meta(max_length=5000)]
    done: bool = True


class StatusQuery(Message, tag="statusq", frozen=True):
    """Ask a master how it is doing; ``digest=False`` skips the full-index scan (``entries`` may lag then)."""

    ref: Ref
    digest: bool = True


class Status(Message, tag="status", frozen=True):
    """A master's state: entries, digest of its whole index, peers, nodes online, rates."""

    ref: Ref
    origin: NodeId
    entries: NonNegative
    digest: Text
    masters: dict[NodeId, Address]
    masters_online: list[NodeId]
    nodes_online: list[NodeId]
    nodes_local: list[NodeId]
    vector: VersionVector
    applied: NonNegative
    dropped: NonNegative
    updates_per_s: float


class MasterBeat(Message, tag="mbeat", frozen=True):
    """Master heartbeat: version vector, known masters (origin -> address), nodes connected to the sender."""

    origin: NodeId
    address: Address
    vector: VersionVector
    masters: Annotated[dict[NodeId, Address], msgspec.Meta(max_length=1000)]
    nodes: Annotated[list[NodeId], msgspec.Meta(max_length=100_000)]
    hears: Annotated[list[NodeId], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)
    """Masters the sender currently hears from: updates from them need no relaying to it."""


class Updates(Message, tag="updates", frozen=True):
    """Live replication: payload frame holds newly stamped record rows."""

    payload_frames: ClassVar[int] = 1
    max_payload: ClassVar[int] = MAX_ROWS_PAYLOAD

    origin: NodeId


class SyncRequest(Message, tag="syncreq", frozen=True):
    """Send me every record newer than this version vector, at most ``window`` batches ahead of my acks."""

    ref: Ref
    vector: VersionVector
    window: Annotated[int, msgspec.Meta(ge=1, le=64)] = 4
    pages: bool = False
    """Send the rows as snapshot pages (:mod:`overdrive.index.pages`) rather than msgpack rows."""


class SyncAck(Message, tag="syncack", frozen=True):
    """Credit for a sync: I have applied ``received`` batches of sync ``ref``."""

    ref: Ref
    received: NonNegative


class SyncBatch(Message, tag="syncbatch", frozen=True):
    """Rows for a sync or a bucket repair (payload frame); applied by LWW, never forwarded."""

    payload_frames: ClassVar[int] = 1
    max_payload: ClassVar[int] = MAX_ROWS_PAYLOAD

    ref: Ref
    page: bool = False
    """The payload is a snapshot page (:mod:`overdrive.index.pages`), else a msgpack array of rows."""


class SyncDone(Message, tag="syncdone", frozen=True):
    """End of a sync: the sender's version vector at the start, which the receiver now covers if it got all
    ``batches`` batches."""

    ref: Ref
    vector: VersionVector
    batches: NonNegative


class Digest(Message, tag="digest", frozen=True):
    """Anti-entropy: per-bucket checksums of the sender's index (256 entries)."""

    origin: NodeId
    buckets: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(min_length=256, max_length=256)]


class BucketRequest(Message, tag="bucketreq", frozen=True):
    """Anti-entropy: send me your records in these buckets."""

    ref: Ref
    buckets: BucketList


Nonce = Annotated[bytes, msgspec.Meta(min_length=32, max_length=32)]


class MeshHello(Message, tag="mhello", frozen=True):
    """A dialer's fresh nonce, starting the mesh-key handshake on its link (from the server: start again)."""

    origin: NodeId
    nonce: Nonce


class MeshProof(Message, tag="mproof", frozen=True):
    """An Ed25519 signature by the mesh key over the handshake transcript (see :mod:`.mesh_trust`); the server's
    also carries its fresh nonce."""

    origin: NodeId
    nonce: Nonce
    signature: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]


IndexMessage = (
    Announce
    | NodeBeat
    | Ack
    | Lookup
    | Found
    | StatusQuery
    | Status
    | MasterBeat
    | Updates
    | SyncRequest
    | SyncAck
    | SyncBatch
    | SyncDone
    | Digest
    | BucketRequest
    | MeshHello
    | MeshProof
    | WrongService
)

CODEC: Codec[Message] = Codec(
    Announce,
    NodeBeat,
    Ack,
    Lookup,
    Found,
    StatusQuery,
    Status,
    MasterBeat,
    Updates,
    SyncRequest,
    SyncAck,
    SyncBatch,
    SyncDone,
    Digest,
    BucketRequest,
    MeshHello,
    MeshProof,
    WrongService,
)
