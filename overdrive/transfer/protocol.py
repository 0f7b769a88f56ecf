"""The file transfer wire protocol: one fetcher (DEALER) talking to one holder's file server (ROUTER).

A fetch is ``Open`` → ``Opened`` (size, chunking, the whole file's BLAKE3 content hash, the holder's proof of
identity, and one 128-bit XXH3 checksum per chunk as a payload frame), then a window of ``Read`` requests, each
answered by one ``Chunk`` (the raw bytes as a payload frame, never copied into the header), then ``Close``; an Open
the fetcher stops waiting for is withdrawn with ``Cancel``. The fetcher only sends a new ``Read`` when a ``Chunk``
arrives, so the number of requests in flight is its credit (zguide chapter 7, "file transfer"): the
server never queues more than the fetcher asked for. Before building a big file's checksum table (a read of the
whole file, the first time it is opened) the server says ``Working``, so the fetcher knows the answer is coming.
The server may answer any request with ``Refused`` (could not open) or ``Failed`` (this transfer is over: changed
file, expired, read error); a fetcher treats those as the end of that source. A message of another overdrive
protocol (an index client's Lookup) is answered with :class:`~overdrive.bus.kind.WrongService` ("I am a share").

Holder proofs: the fetcher's ``Open`` carries a fresh random ``challenge`` and its own CURVE public key, which the
holder accepts only if it hashes to the node id of the connection it came on; ``Opened`` carries the holder's CURVE
public key and its answer to the challenge (:mod:`~overdrive.transfer.proof`). The fetcher uses a holder only if that
key hashes to a node id the index names for the copy and the answer checks, so a password holder cannot pose as
another node's holder (the network key lets anyone run a server the fetcher's handshake accepts). Both messages
carry a ``.v2`` tag: the fields changed.

Chunk ``i`` covers bytes ``[i * chunk_size, min(size, (i + 1) * chunk_size))``.

Why the per-chunk check is XXH3 and not BLAKE3: the chunk table comes from the holders themselves (one holder's,
or, with several, the table they all agree on), so it never protected against a lying holder on its own: a single
holder can make a table for any bytes it sends. What BLAKE3 per chunk would add with several holders, and XXH3 gives
up, is attribution: a holder with the password that serves crafted chunks matching the agreed table's XXH3 values
is no longer dropped mid-way; its bytes fail the whole-file check instead (nothing put in place), and the fetcher
drops the holders of that table and starts over from the holders of the next one (see
:mod:`~overdrive.transfer.fetcher`). A holder whose table differs from the one followed is caught the same way, at
the end; one that serves the followed table but other bytes is caught at its first chunk.
The authoritative check is the fetcher's single BLAKE3 pass over the whole file against the content hash it chose
before the transfer (index entry or ``--hash``), and nothing is put in place unless that matches. The per-chunk
checksum is for early detection and attribution of accidental damage or a file that changed on its holder, and for
re-verifying a partial file cheaply on resume; a 128-bit checksum misses a random error with probability 2^-128,
and costs ~0.04 s/GiB here against ~0.35-0.5 s/GiB for a second BLAKE3 pass (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import xxhash
from msgspec import Meta

from overdrive.bus.codec import Codec, Message
from overdrive.bus.kind import WrongService
from overdrive.files.names import MAX_NAME_BYTES

DIGEST_SIZE = 16
"""Bytes of one chunk checksum (XXH3-128, big-endian canonical form) in the ``Opened`` payload."""
MIN_CHUNK = 64 << 10
MAX_CHUNK = 16 << 20
DEFAULT_CHUNK = 1 << 20
"""Chunk size when the fetcher does not ask for one; chosen by scripts/bench_transfer.py (docs/benchmarks.md)."""
MAX_CHUNKS = 1 << 20
"""Most chunks a file may have; larger files get larger chunks (so the checksum table stays ≤ 16 MiB)."""

RefuseReason = Literal["not-found", "changed", "unsafe", "not-regular", "busy", "io-error", "bad-chunking", "wrong-key"]
"""``wrong-key``: the Open's ``fetcher_key`` is not the key of the connection it came on."""
FailReason = Literal["changed", "unknown-transfer", "bad-index", "io-error"]

RequestId = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
TransferId = Annotated[int, Meta(ge=0, le=(1 << 63) - 1)]
ChunkIndex = Annotated[int, Meta(ge=0, lt=MAX_CHUNKS)]
Size = Annotated[int, Meta(ge=0, lt=1 << 62)]
ChunkSize = Annotated[int, Meta(ge=0, le=MAX_CHUNK)]
ContentHash = Annotated[str, Meta(pattern="^[0-9a-f]{64}$")]
WantedHash = Annotated[str, Meta(pattern="^([0-9a-f]{64})?$")]
WireName = Annotated[str, Meta(min_length=1, max_length=MAX_NAME_BYTES)]
Detail = Annotated[str, Meta(max_length=512)]
CHALLENGE_SIZE = 32
PUBLIC_KEY_SIZE = 32
"""A raw (not Z85) CURVE public key, as the holder proofs carry it."""
PROOF_SIZE = 32
Challenge = Annotated[bytes, Meta(max_length=CHALLENGE_SIZE)]
PublicKey = Annotated[bytes, Meta(max_length=PUBLIC_KEY_SIZE)]
Proof = Annotated[bytes, Meta(max_length=PROOF_SIZE)]


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of ``chunk_size`` covering ``size`` bytes (an empty file has none)."""
    return -(-size // chunk_size)


def chunk_checksum(data: bytes | memoryview) -> bytes:
    """The per-chunk checksum both sides compute: XXH3-128 (not cryptographic; see the module docstring)."""
    return xxhash.xxh3_128_digest(data)


def valid_chunk_size(chunk_size: int) -> bool:
    """A chunk size both sides accept: a power of two between MIN_CHUNK and MAX_CHUNK."""
    return MIN_CHUNK <= chunk_size <= MAX_CHUNK and chunk_size & (chunk_size - 1) == 0


class Open(Message, tag="open.v2", frozen=True):
    """Ask to fetch ``name`` at version ``content_hash`` ("" = the version the server has now).

    ``chunk_size`` 0 lets the server choose; a resuming fetcher asks for the chunking of its partial file.
    ``challenge`` and ``fetcher_key`` (the fetcher's raw CURVE public key) ask the holder to prove its identity;
    without them (a tool, a test) the holder answers without a proof, which a fetcher never accepts.
    """

    rid: RequestId
    name: WireName
    content_hash: WantedHash
    chunk_size: ChunkSize = 0
    challenge: Challenge = b""
    fetcher_key: PublicKey = b""

    def __post_init__(self) -> None:
        if (len(self.challenge), len(self.fetcher_key)) not in ((0, 0), (CHALLENGE_SIZE, PUBLIC_KEY_SIZE)):
            raise ValueError("challenge and fetcher_key go together, 32 bytes each")
        if self.chunk_size and not valid_chunk_size(self.chunk_size):
            raise ValueError(f"chunk_size {self.chunk_size} is not a power of two in [{MIN_CHUNK}, {MAX_CHUNK}]")
        if len(self.name.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES:
            raise ValueError("name too long")


class Opened(Message, tag="opened.v2", frozen=True):
    """The file is open: its size, chunking, mtime and content hash; payload = concatenated chunk checksums.

    ``holder_key`` (the holder's raw CURVE public key) and ``proof`` answer the Open's challenge; empty when the
    Open asked for no proof.
    """

    payload_frames: ClassVar[int] = 1
    max_payload: ClassVar[int] = MAX_CHUNKS * DIGEST_SIZE

    rid: RequestId
    tid: TransferId
    size: Size
    chunk_size: ChunkSize
    mtime_ns: Annotated[int, Meta(ge=0)]
    content_hash: ContentHash
    holder_key: PublicKey = b""
    proof: Proof = b""

    def __post_init__(self) -> None:
        if (len(self.holder_key), len(self.proof)) not in ((0, 0), (PUBLIC_KEY_SIZE, PROOF_SIZE)):
            raise ValueError("holder_key and proof go together, 32 bytes each")
        if not valid_chunk_size(self.chunk_size):
            raise ValueError(f"bad chunk_size {self.chunk_size}")
        if chunk_count(self.size, self.chunk_size) > MAX_CHUNKS:
            raise ValueError("too many chunks")

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)


class Refused(Message, tag="refused", frozen=True):
    """The server will not open the file (see :data:`RefuseReason`)."""

    rid: RequestId
    reason: RefuseReason
    detail: Detail = ""


class Working(Message, tag="working", frozen=True):
    """The holder is building the chunk table of a ``size``-byte file for Open ``rid`` (a read of the whole file):
    the answer is coming. Sent at most once per Open, before a build that may take a while; a fetcher that gets it
    waits longer for that holder's answer (see :mod:`~overdrive.transfer.fetcher`). Older fetchers ignore it."""

    rid: RequestId
    size: Size


class Read(Message, tag="read", frozen=True):
    """Ask for chunk ``index`` of transfer ``tid``."""

    tid: TransferId
    index: ChunkIndex


class Chunk(Message, tag="chunk", frozen=True):
    """Chunk ``index`` of transfer ``tid``; payload = its bytes."""

    payload_frames: ClassVar[int] = 1
    max_payload: ClassVar[int] = MAX_CHUNK

    tid: TransferId
    index: ChunkIndex


class Failed(Message, tag="failed", frozen=True):
    """Transfer ``tid`` cannot go on (the file changed, the transfer expired, a read failed)."""

    tid: TransferId
    reason: FailReason
    index: Annotated[int, Meta(ge=-1, lt=MAX_CHUNKS)] = -1
    detail: Detail = ""


class Close(Message, tag="close", frozen=True):
    """The fetcher is done with transfer ``tid``; the server frees it."""

    tid: TransferId


class Cancel(Message, tag="cancel", frozen=True):
    """The fetcher no longer waits for its Open ``rid`` (no answer in time, or it is stopping): the server drops
    that Open, whether it is still waiting for its chunk table or was answered in the meantime. A fetcher picks
    its rids at random, so two fetches from one node do not cancel each other's."""

    rid: RequestId


TransferMessage = Open | Opened | Refused | Working | Read | Chunk | Failed | Close | Cancel | WrongService
CODEC: Codec[TransferMessage] = Codec(Open, Opened, Refused, Working, Read, Chunk, Failed, Close, Cancel, WrongService)
