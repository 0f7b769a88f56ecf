"""The file server's protocol logic, without sockets: frames from an authenticated peer in, reply frames out.

:class:`ServeCore` decides everything :class:`~overdrive.transfer.server.FileServer` does: which names may be
opened (catalogue + :func:`~overdrive.files.names.open_shared`), how many transfers a peer may hold, which
chunk to read, and when a file has changed under a transfer (``fstat`` size/mtime on every read, and the whole
file's hash checked against the catalogue when its chunk table is built, unless size and mtime are the ones the
catalogue hashed). It reads files with ``os.pread`` and hands the bytes out as a payload frame, never copying them
again. The chunk table holds one XXH3-128 checksum per chunk (see :mod:`~overdrive.transfer.protocol` for why
that is enough), so building it costs a read of the file and little CPU; still, that is seconds for GiBs, so it is
never done on the server's loop: an Open whose table is not cached becomes a :class:`TableBuild` that the shell runs
in a worker thread (:meth:`ServeCore.take_builds`) and hands back (:meth:`ServeCore.built`), which answers every
Open waiting for it. Opens of the same file version share one build; an Open the fetcher gives up (``Cancel``) is
dropped whether it is still waiting or already answered.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from overdrive.bus.codec import Frame
from overdrive.errors import ConfigError, ProtocolError, TransferError, UnsafePathError
from overdrive.files import names
from overdrive.files.model import Catalogue
from overdrive.transfer.protocol import (
    CODEC,
    DEFAULT_CHUNK,
    MAX_CHUNK,
    MAX_CHUNKS,
    Cancel,
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
    table_workers: int = 4
    """Chunk tables built at once, each in a worker thread of the server (more wait for a free worker)."""

    def __post_init__(self) -> None:
        if not valid_chunk_size(self.chunk_size):
            raise ConfigError(f"chunk_size must be a power of two in [64 KiB, 16 MiB], not {self.chunk_size}")
        if not 1 <= self.max_transfers_per_peer <= self.max_transfers:
            raise ConfigError("need 1 <= max_transfers_per_peer <= max_transfers")
        if self.idle_timeout <= 0:
            raise ConfigError("idle_timeout must be positive")
        if self.table_workers < 1:
            raise ConfigError("table_workers must be at least 1")


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
    cancelled: int = 0
    """Opens the fetcher gave up (timed out or stopped), dropped while waiting for their table or after."""
    tables_built: int = 0


@dataclass(slots=True)
class _Transfer:
    tid: int
    rid: int
    """The Open that made it (a ``Cancel`` of that rid closes it)."""
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


class _StoppedError(Exception):
    pass


def build_table(
    fd: int, size: int, chunk_size: int, known_hash: str = "", stop: Callable[[], bool] | None = None
) -> ChunkTable:
    """Checksum ``fd`` chunk by chunk (memory: one chunk), and BLAKE3 it as a whole unless ``known_hash`` is given.

    ``stop`` is asked before each chunk; when it says True the build ends with TransferError.
    """
    whole = None if known_hash else blake3.blake3()
    digests = bytearray()
    offset = 0
    while offset < size:
        if stop is not None and stop():
            raise _StoppedError
        data = os.pread(fd, min(chunk_size, size - offset), offset)
        if not data:
            raise TransferError("file shrank while hashing it")
        digests += chunk_checksum(data)
        if whole is not None:
            whole.update(data)
        offset += len(data)
    return ChunkTable(bytes(digests), whole.hexdigest() if whole is not None else known_hash)


@dataclass(eq=False, slots=True)
class _Waiter:
    """An Open waiting for its file's chunk table; owns ``fd`` until it is answered."""

    peer: str
    rid: int
    name: str
    fd: int
    st: os.stat_result
    content_hash: str
    """The catalogue's hash for the name when the Open came: the table must match it."""
    origin: object
    """Whatever the shell passed with the Open (its routing id): where the answer goes."""


class TableBuild:
    """Building the chunk table of one version of a file: :meth:`run` in any thread (it only reads its own
    descriptor), then give it back to :meth:`ServeCore.built` on the server's thread."""

    def __init__(self, key: tuple[int, ...], fd: int, st: os.stat_result, chunk_size: int, known_hash: str) -> None:
        self.key = key
        self.fd = fd
        """A duplicate of the first waiter's descriptor, closed by the core once the build is given back."""
        self.size, self.mtime_ns, self.chunk_size, self.known_hash = st.st_size, st.st_mtime_ns, chunk_size, known_hash
        self.waiters: list[_Waiter] = []
        self.table: ChunkTable | None = None
        self.error: Exception | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop at the next chunk (nobody waits for it any more, or the server is stopping)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def run(self) -> None:
        """Read and checksum the file; the outcome lands in :attr:`table` or :attr:`error`. Never raises."""
        try:
            table = build_table(self.fd, self.size, self.chunk_size, self.known_hash, self._cancelled.is_set)
            after = os.fstat(self.fd)
            if (after.st_size, after.st_mtime_ns) != (self.size, self.mtime_ns):
                raise _ChangedError("file changed while its chunk table was built")
            self.table = table
        except (_StoppedError, _ChangedError, OSError, TransferError) as exc:
            self.error = exc


class ServeCore:
    """Sans-IO request handling for one shared folder. Not thread-safe: one server thread owns it (only
    :meth:`TableBuild.run` may run elsewhere)."""

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
        self._builds: dict[tuple[int, ...], TableBuild] = {}
        """Builds that Opens of their file version can still join."""
        self._unfinished: list[TableBuild] = []
        """Every build not yet given back (their descriptors are ours to close)."""
        self._to_start: list[TableBuild] = []

    @property
    def open_transfers(self) -> int:
        return len(self._transfers)

    @property
    def waiting_opens(self) -> int:
        """Opens waiting for a chunk table."""
        return sum(len(b.waiters) for b in self._builds.values())

    @property
    def unfinished_builds(self) -> int:
        """Builds handed out and not yet given back to :meth:`built`."""
        return len(self._unfinished)

    def handle(self, peer: str, frames: Sequence[Frame], now: float) -> list[list[Frame]]:
        """Every reply (a list of frames, routing not included) to one message from authenticated ``peer``, with
        any chunk table it needs built here and now (for tests and tools; the server builds them off its loop)."""
        out = list(self.replies(peer, frames, now))
        for build in self.take_builds():
            build.run()
            out += [reply for _, reply in self.built(build, now)]
        return out

    def replies(self, peer: str, frames: Sequence[Frame], now: float, origin: object = None) -> Iterator[list[Frame]]:
        """The replies to send now to one message from authenticated ``peer``. An Open whose chunk table must be
        built first gets at most a ``Working`` notice here; its answer comes from :meth:`built` (with ``origin``)."""
        try:
            message, _ = CODEC.decode(frames)
        except ProtocolError as exc:
            self.stats.malformed += 1
            log.debug("malformed request from %s: %s", peer, exc)
            return
        if isinstance(message, Read):
            yield self._read(peer, message, now)
        elif isinstance(message, Open):
            yield from self._open(peer, message, now, origin)
        elif isinstance(message, Close):
            transfer = self._transfers.get(message.tid)
            if transfer is not None and transfer.peer == peer:
                self._drop(transfer)
                self.stats.closed += 1
        elif isinstance(message, Cancel):
            self._cancel(peer, message.rid)
        else:
            self.stats.malformed += 1  # a reply type sent to the server

    def take_builds(self) -> list[TableBuild]:
        """Chunk tables to build (call :meth:`TableBuild.run` off the loop, then :meth:`built`)."""
        builds, self._to_start = self._to_start, []
        return builds

    def built(self, build: TableBuild, now: float) -> list[tuple[object, list[Frame]]]:
        """A build has run: cache its table and answer the Opens waiting for it, as (origin, reply) pairs."""
        if build in self._unfinished:
            self._unfinished.remove(build)
            os.close(build.fd)
        if self._builds.get(build.key) is build:
            del self._builds[build.key]
        if build.table is not None:
            self.stats.tables_built += 1
            self._cache(build.key, build.table)
        out = []
        for waiter in build.waiters:
            self._per_peer[waiter.peer] -= 1  # counted as an open transfer while it waited; _opened counts it again
            self._forget_peer(waiter.peer)
            out.append((waiter.origin, self._answer(waiter, build, now)))
        build.waiters.clear()
        return out

    def cancel_builds(self) -> None:
        """Ask every running build to stop (the server is stopping); give them back or :meth:`close` after."""
        for build in self._unfinished:
            build.cancel()

    def expire(self, now: float) -> None:
        """Close transfers idle longer than the configured timeout."""
        for transfer in [t for t in self._transfers.values() if now - t.last_used > self.config.idle_timeout]:
            self._drop(transfer)
            self.stats.expired += 1

    def close(self) -> None:
        """Close every file. No :meth:`TableBuild.run` may still be running (the shell has joined its workers)."""
        for transfer in list(self._transfers.values()):
            self._drop(transfer)
        for build in self._unfinished:
            build.cancel()
            os.close(build.fd)
            for waiter in build.waiters:
                os.close(waiter.fd)
            build.waiters.clear()
        self._unfinished.clear()
        self._builds.clear()
        self._to_start.clear()
        self._per_peer.clear()

    # -- requests ---------------------------------------------------------------------------------------------

    def _refuse(self, rid: int, reason: RefuseReason, detail: str) -> list[Frame]:
        self.stats.refused[reason] += 1
        log.info("refused open: %s (%s)", reason, detail)
        return CODEC.encode(Refused(rid=rid, reason=reason, detail=detail[:512]))

    def _open(self, peer: str, msg: Open, now: float, origin: object) -> Iterator[list[Frame]]:
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
            or len(self._transfers) + self.waiting_opens >= self.config.max_transfers
        ):
            yield self._refuse(msg.rid, "busy", "too many open transfers")
            return
        try:
            fd, st = names.open_shared(self.folder, msg.name)
        except UnsafePathError as exc:
            yield self._refuse(msg.rid, "unsafe", str(exc))
            return
        except TransferError as exc:
            cause = exc.__cause__  # an unreadable file (chmod 000) is there: not "not-found" to the fetcher
            reason: RefuseReason = "not-regular" if "regular" in str(exc) else "not-found"
            if isinstance(cause, OSError) and cause.errno != errno.ENOENT:
                reason = "io-error"
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
        except _ChangedError as exc:
            os.close(fd)
            yield self._refuse(msg.rid, "changed", str(exc))
            return
        except _RefuseError as exc:
            os.close(fd)
            yield self._refuse(msg.rid, exc.reason, exc.detail)
            return
        waiter = _Waiter(peer, msg.rid, msg.name, fd, st, entry.content_hash, origin)
        key = _table_key(st, chunk_size)
        table = self._tables.get(key)
        if table is not None:
            self._tables.move_to_end(key)
            yield self._opened(waiter, chunk_size, table, now)
            return
        build = self._builds.get(key)
        if build is None:
            # Same size and mtime as when the catalogue hashed it: trust its hash and only build the chunk table.
            # Otherwise hash the whole file too and serve it only if it still matches (touched, not changed).
            known = entry.content_hash if st.st_mtime_ns == entry.mtime_ns else ""
            try:
                build = TableBuild(key, os.dup(fd), st, chunk_size, known)
            except OSError as exc:
                os.close(fd)
                yield self._refuse(msg.rid, "io-error", f"{msg.name!r}: {exc.strerror}")
                return
            self._builds[key] = build
            self._unfinished.append(build)
            self._to_start.append(build)
        build.waiters.append(waiter)
        self._per_peer[peer] += 1  # a waiting Open holds a descriptor: it counts against the limits
        if st.st_size >= self.config.working_notice:
            yield CODEC.encode(Working(rid=msg.rid, size=st.st_size))

    def _answer(self, waiter: _Waiter, build: TableBuild, now: float) -> list[Frame]:
        """Opened or Refused for an Open that waited for ``build``."""
        if build.table is None:
            os.close(waiter.fd)
            reason: RefuseReason = "changed" if isinstance(build.error, _ChangedError) else "io-error"
            return self._refuse(waiter.rid, reason, f"{waiter.name!r}: {build.error}")
        return self._opened(waiter, build.chunk_size, build.table, now)

    def _opened(self, waiter: _Waiter, chunk_size: int, table: ChunkTable, now: float) -> list[Frame]:
        if table.content_hash != waiter.content_hash:
            os.close(waiter.fd)
            return self._refuse(waiter.rid, "changed", f"{waiter.name!r} no longer matches its catalogued hash")
        tid = self._next_tid
        self._next_tid += 1
        st = waiter.st
        chunks = chunk_count(st.st_size, chunk_size)
        self._transfers[tid] = _Transfer(
            tid, waiter.rid, waiter.peer, waiter.name, waiter.fd, st.st_size, st.st_mtime_ns, chunk_size, chunks, now
        )
        self._per_peer[waiter.peer] += 1
        self.stats.opened += 1
        reply = Opened(
            rid=waiter.rid,
            tid=tid,
            size=st.st_size,
            chunk_size=chunk_size,
            mtime_ns=st.st_mtime_ns,
            content_hash=table.content_hash,
        )
        return CODEC.encode(reply, table.digests)

    def _cancel(self, peer: str, rid: int) -> None:
        """The fetcher gave up Open ``rid``: drop it, waiting or answered (a build nobody waits for stops)."""
        for build in list(self._builds.values()):
            for waiter in [w for w in build.waiters if w.peer == peer and w.rid == rid]:
                build.waiters.remove(waiter)
                os.close(waiter.fd)
                self._per_peer[peer] -= 1
                self._forget_peer(peer)
                self.stats.cancelled += 1
            if not build.waiters:
                build.cancel()
                del self._builds[build.key]
        for transfer in [t for t in self._transfers.values() if t.peer == peer and t.rid == rid]:
            self._drop(transfer)
            self.stats.cancelled += 1

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
            self._forget_peer(transfer.peer)

    def _forget_peer(self, peer: str) -> None:
        if self._per_peer.get(peer, 0) <= 0:
            self._per_peer.pop(peer, None)

    def _cache(self, key: tuple[int, ...], table: ChunkTable) -> None:
        """Keep ``table`` for later Opens of the same version, within ``table_cache_bytes`` (oldest out first)."""
        self._tables[key] = table
        self._table_bytes += len(table.digests) + 64
        while self._table_bytes > self.config.table_cache_bytes and len(self._tables) > 1:
            _, old = self._tables.popitem(last=False)
            self._table_bytes -= len(old.digests) + 64


def _table_key(st: os.stat_result, chunk_size: int) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, chunk_size)


class _ChangedError(Exception):
    pass


class _RefuseError(Exception):
    def __init__(self, reason: RefuseReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
