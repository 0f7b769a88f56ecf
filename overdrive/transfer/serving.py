"""The file server's protocol logic, without sockets: frames from an authenticated peer in, reply frames out.

:class:`ServeCore` decides everything :class:`~overdrive.transfer.server.FileServer` does: which names may be
opened (catalogue + :func:`~overdrive.transfer.names.open_shared`), how many transfers a peer may hold, which
chunk to read, and when a file has changed under a transfer (``fstat`` size/mtime on every read, and the whole
file's hash checked against the catalogue when its chunk table is built, unless size and mtime are the ones the
catalogue hashed). It reads files with ``os.pread`` and hands the bytes out as a payload frame, never copying them
again. The chunk table holds one XXH3-128 checksum per chunk (see :mod:`~overdrive.transfer.protocol` for why
that is enough), so building it costs a read of the file and little CPU.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from overdrive.bus.codec import Frame
from overdrive.errors import ProtocolError, TransferError, UnsafePathError
from overdrive.transfer import names
from overdrive.transfer.catalogue import Catalogue
from overdrive.transfer.protocol import (
    CODEC,
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MAX_CHUNKS,
    Chunk,
    Close,
    Failed,
    Open,
    Opened,
    Read,
    Refused,
    RefuseReason,
    Working,
    chunk_checksum,
    chunk_count,
    valid_chunk_size,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Limits of one file server."""

    chunk_size: int = DEFAULT_CHUNK
    max_transfers_per_peer: int = 8
    max_transfers: int = 256
    idle_timeout: float = 120.0
    table_cache_bytes: int = 64 << 20
    max_chunk_size: int = 4 << 20
    """Largest chunk a fetcher may ask for (bigger only when a file needs it to stay under MAX_CHUNKS)."""
    working_notice: int = 64 << 20
    """Files at least this big get a ``Working`` reply before their chunk table is built (not when it is cached)."""

    def __post_init__(self) -> None:
        if not valid_chunk_size(self.chunk_size):
            raise ValueError(f"chunk_size must be a power of two in [64 KiB, 16 MiB], not {self.chunk_size}")
        if not 1 <= self.max_transfers_per_peer <= self.max_transfers:
            raise ValueError("need 1 <= max_transfers_per_peer <= max_transfers")
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")


@dataclass
class ServerStats:
    """Counters a test or benchmark can read (plain ints, safe to read from another thread)."""

    opened: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    chunks_sent: int = 0
    bytes_sent: int = 0
    malformed: int = 0
    unroutable: int = 0
    changed: int = 0
    closed: int = 0
    expired: int = 0


@dataclass(slots=True)
class _Transfer:
    tid: int
    peer: str
    name: str
    fd: int
    size: int
    mtime_ns: int
    chunk_size: int
    chunks: int
    last_used: float


@dataclass(frozen=True, slots=True)
class ChunkTable:
    """XXH3-128 of each chunk and BLAKE3 of the whole file, for one version (dev, inode, size, mtime) of a file."""

    digests: bytes
    content_hash: str


def build_table(fd: int, size: int, chunk_size: int, known_hash: str = "") -> ChunkTable:
    """Checksum ``fd`` chunk by chunk (memory: one chunk), and BLAKE3 it as a whole unless ``known_hash`` is given."""
    whole = None if known_hash else blake3.blake3()
    digests = bytearray()
    offset = 0
    while offset < size:
        data = os.pread(fd, min(chunk_size, size - offset), offset)
        if not data:
            raise TransferError("file shrank while hashing it")
        digests += chunk_checksum(data)
        if whole is not None:
            whole.update(data)
        offset += len(data)
    return ChunkTable(bytes(digests), whole.hexdigest() if whole is not None else known_hash)


class ServeCore:
    """Sans-IO request handling for one shared folder. Not thread-safe: one server thread owns it."""

    def __init__(self, folder: Path, catalogue: Catalogue, config: ServerConfig | None = None) -> None:
        self.folder = Path(folder)
        self.catalogue = catalogue
        self.config = config or ServerConfig()
        self.stats = ServerStats()
        self._transfers: dict[int, _Transfer] = {}
        self._per_peer: Counter[str] = Counter()
        self._tables: OrderedDict[tuple[int, ...], ChunkTable] = OrderedDict()
        self._table_bytes = 0
        self._next_tid = 1

    @property
    def open_transfers(self) -> int:
        return len(self._transfers)

    def handle(self, peer: str, frames: Sequence[Frame], now: float) -> list[list[Frame]]:
        """Replies (each a list of frames, routing not included) to one message from authenticated ``peer``."""
        return list(self.replies(peer, frames, now))

    def replies(self, peer: str, frames: Sequence[Frame], now: float) -> Iterator[list[Frame]]:
        """:meth:`handle` as a generator: the server sends each reply as it comes, so a ``Working`` notice goes
        out before the chunk table build it announces."""
        try:
            message, _ = CODEC.decode(frames)
        except ProtocolError as exc:
            self.stats.malformed += 1
            log.debug("malformed request from %s: %s", peer, exc)
            return
        if isinstance(message, Read):
            yield self._read(peer, message, now)
        elif isinstance(message, Open):
            yield from self._open(peer, message, now)
        elif isinstance(message, Close):
            transfer = self._transfers.get(message.tid)
            if transfer is not None and transfer.peer == peer:
                self._drop(transfer)
                self.stats.closed += 1
        else:
            self.stats.malformed += 1  # a reply type sent to the server

    def expire(self, now: float) -> None:
        """Close transfers idle longer than the configured timeout."""
        for transfer in [t for t in self._transfers.values() if now - t.last_used > self.config.idle_timeout]:
            self._drop(transfer)
            self.stats.expired += 1

    def close(self) -> None:
        for transfer in list(self._transfers.values()):
            self._drop(transfer)

    # -- requests ---------------------------------------------------------------------------------------------

    def _refuse(self, rid: int, reason: RefuseReason, detail: str) -> list[Frame]:
        self.stats.refused[reason] += 1
        log.info("refused open: %s (%s)", reason, detail)
        return CODEC.encode(Refused(rid=rid, reason=reason, detail=detail[:512]))

    def _open(self, peer: str, msg: Open, now: float) -> Iterator[list[Frame]]:
        try:
            names.check_name(msg.name)
        except UnsafePathError as exc:
            yield self._refuse(msg.rid, "unsafe", str(exc))
            return
        entry = self.catalogue.get(msg.name)
        if entry is None:
            yield self._refuse(msg.rid, "not-found", f"{msg.name!r} is not shared here")
            return
        if msg.content_hash and entry.content_hash != msg.content_hash:
            yield self._refuse(msg.rid, "changed", f"{msg.name!r} is shared here in another version")
            return
        if (
            self._per_peer[peer] >= self.config.max_transfers_per_peer
            or len(self._transfers) >= self.config.max_transfers
        ):
            yield self._refuse(msg.rid, "busy", "too many open transfers")
            return
        try:
            fd, st = names.open_shared(self.folder, msg.name)
        except UnsafePathError as exc:
            yield self._refuse(msg.rid, "unsafe", str(exc))
            return
        except TransferError as exc:
            reason: RefuseReason = "not-regular" if "regular" in str(exc) else "not-found"
            yield self._refuse(msg.rid, reason, str(exc))
            return
        except OSError as exc:
            yield self._refuse(msg.rid, "io-error", f"{msg.name!r}: {exc.strerror}")
            return
        try:
            if st.st_size != entry.size:
                raise _ChangedError(f"{msg.name!r} changed size since it was catalogued")
            asked = msg.chunk_size
            chunk_size = asked if asked and asked <= self.config.max_chunk_size else self.config.chunk_size
            while chunk_count(st.st_size, chunk_size) > MAX_CHUNKS and chunk_size < MAX_CHUNK:
                chunk_size *= 2
            if chunk_count(st.st_size, chunk_size) > MAX_CHUNKS:
                raise _RefuseError("bad-chunking", "file too large")
            # Same size and mtime as when the catalogue hashed it: trust its hash and only build the chunk table.
            # Otherwise hash the whole file too and serve it only if it still matches (touched, not changed).
            unchanged = st.st_mtime_ns == entry.mtime_ns
            key = _table_key(st, chunk_size)
            if key not in self._tables and st.st_size >= self.config.working_notice:
                yield CODEC.encode(Working(rid=msg.rid, size=st.st_size))
            table = self._table(fd, st, chunk_size, entry.content_hash if unchanged else "")
            if table.content_hash != entry.content_hash:
                raise _ChangedError(f"{msg.name!r} no longer matches its catalogued hash")
        except _ChangedError as exc:
            os.close(fd)
            yield self._refuse(msg.rid, "changed", str(exc))
            return
        except _RefuseError as exc:
            os.close(fd)
            yield self._refuse(msg.rid, exc.reason, exc.detail)
            return
        except (OSError, TransferError) as exc:
            os.close(fd)
            yield self._refuse(msg.rid, "io-error", f"{msg.name!r}: {exc}")
            return
        except BaseException:  # the generator closed at the Working notice (the server stopping)
            os.close(fd)
            raise
        tid = self._next_tid
        self._next_tid += 1
        chunks = chunk_count(st.st_size, chunk_size)
        self._transfers[tid] = _Transfer(tid, peer, msg.name, fd, st.st_size, st.st_mtime_ns, chunk_size, chunks, now)
        self._per_peer[peer] += 1
        self.stats.opened += 1
        reply = Opened(
            rid=msg.rid,
            tid=tid,
            size=st.st_size,
            chunk_size=chunk_size,
            mtime_ns=st.st_mtime_ns,
            content_hash=table.content_hash,
        )
        yield CODEC.encode(reply, table.digests)

    def _read(self, peer: str, msg: Read, now: float) -> list[Frame]:
        transfer = self._transfers.get(msg.tid)
        if transfer is None or transfer.peer != peer:
            return CODEC.encode(Failed(tid=msg.tid, reason="unknown-transfer", index=msg.index))
        if msg.index >= transfer.chunks:
            return CODEC.encode(Failed(tid=msg.tid, reason="bad-index", index=msg.index))
        transfer.last_used = now
        offset = msg.index * transfer.chunk_size
        length = min(transfer.chunk_size, transfer.size - offset)
        try:
            st = os.fstat(transfer.fd)
            data = os.pread(transfer.fd, length, offset)
        except OSError as exc:
            self._drop(transfer)
            return CODEC.encode(Failed(tid=msg.tid, reason="io-error", index=msg.index, detail=str(exc.strerror)))
        if st.st_size != transfer.size or st.st_mtime_ns != transfer.mtime_ns or len(data) != length:
            self._drop(transfer)
            self.stats.changed += 1
            log.warning("%s changed while %s was fetching it", transfer.name, peer)
            return CODEC.encode(
                Failed(
                    tid=msg.tid,
                    reason="changed",
                    index=msg.index,
                    detail=f"{transfer.name!r} changed (size or modification time) while it was being served",
                )
            )
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += length
        return CODEC.encode(Chunk(tid=msg.tid, index=msg.index), data)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _drop(self, transfer: _Transfer) -> None:
        if self._transfers.pop(transfer.tid, None) is not None:
            os.close(transfer.fd)
            self._per_peer[transfer.peer] -= 1
            if self._per_peer[transfer.peer] <= 0:
                del self._per_peer[transfer.peer]

    def _table(self, fd: int, st: os.stat_result, chunk_size: int, known_hash: str) -> ChunkTable:
        key = _table_key(st, chunk_size)
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
            return table
        table = build_table(fd, st.st_size, chunk_size, known_hash)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            raise _ChangedError("file changed while its chunk table was built")
        self._tables[key] = table
        self._table_bytes += len(table.digests) + 64
        while self._table_bytes > self.config.table_cache_bytes and len(self._tables) > 1:
            _, old = self._tables.popitem(last=False)
            self._table_bytes -= len(old.digests) + 64
        return table


def _table_key(st: os.stat_result, chunk_size: int) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, chunk_size)


class _ChangedError(Exception):
    pass


class _RefuseError(Exception):
    def __init__(self, reason: RefuseReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
