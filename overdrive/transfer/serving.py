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
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from overdrive.bus.codec import Frame
from overdrive.bus.kind import SHARE, WrongService
from overdrive.bus.security import NodeIdentity
from overdrive.errors import ForeignMessageError, ProtocolError, TransferError, UnsafePathError
from overdrive.files import names
from overdrive.files.folders import locate
from overdrive.files.model import Catalogue
from overdrive.transfer import proof
from overdrive.transfer.budget import Peer, Tally
from overdrive.transfer.protocol import (
    CODEC,
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
    chunk_count,
)
from overdrive.transfer.server_config import ServerConfig, ServerStats
from overdrive.transfer.tables import ChangedError, ChunkTable, TableBuild, Waiter

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Transfer:
    tid: int
    rid: int
    """The Open that made it (a ``Cancel`` of that rid closes it)."""
    peer: Peer
    name: str
    fd: int
    size: int
    mtime_ns: int
    chunk_size: int
    chunks: int
    last_used: float
    """When a chunk was last served (or the transfer opened): reads that wait for room in flight do not count."""


@dataclass(frozen=True, slots=True)
class Reply:
    """Frames to send to ``origin`` (the shell's routing id) for ``peer``. Their ``size`` bytes count as in flight
    for the peer until the shell says, with :meth:`ServeCore.sent`, that the socket is done with them (sent or
    dropped)."""

    origin: object
    frames: list[Frame]
    peer: Peer
    size: int


@dataclass(frozen=True, slots=True)
class _Deferred:
    peer: Peer
    read: Read
    origin: object


class ServeCore:
    """Sans-IO request handling for one shared folder, or several (``folder`` maps each name prefix to its folder:
    :func:`~overdrive.files.folders.locate`). Not thread-safe: one server thread owns it (only
    :meth:`TableBuild.run` may run elsewhere).

    Fair sharing (see :class:`ServerConfig`): transfer slots and bytes in flight are counted per identity, per
    network address and in total. An Open that finds a limit reached takes the slot of an idle transfer
    (``reclaim_after``) of the same identity, address or anybody; when every slot is taken and none is idle, it
    takes one from the address holding the most, if that holds at least two more than its own. A Read whose chunk
    would pass a bytes-in-flight limit waits (bounded per identity and in total) until :meth:`sent` says earlier
    replies have left the socket."""

    def __init__(
        self,
        folder: Path | Mapping[str, Path],
        catalogue: Catalogue,
        config: ServerConfig | None = None,
        identity: NodeIdentity | None = None,
    ) -> None:
        self.roots = {"": Path(folder)} if isinstance(folder, (str, Path)) else dict(folder)
        """The folders served, by name prefix ("": one folder, names relative to it)."""
        self.identity = identity or NodeIdentity.generate()
        """Whose holder proofs it gives (:mod:`~overdrive.transfer.proof`): the share's node identity."""
        self.catalogue = catalogue
        self.config = config or ServerConfig()
        self.stats = ServerStats()
        self._slot_limits = self.config.slot_limits
        self._inflight_limits = self.config.inflight_limits
        self._transfers: dict[int, _Transfer] = {}
        self._slots = Tally()
        """Transfers and waiting Opens, one slot each."""
        self._inflight = Tally()
        """Bytes of replies handed out and not yet given back to :meth:`sent`."""
        self._deferred: OrderedDict[str, deque[_Deferred]] = OrderedDict()
        """Reads waiting for their peer's bytes in flight to go out, per identity (served round-robin)."""
        self._deferred_count = 0
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

    @property
    def inflight_bytes(self) -> int:
        """Bytes of replies handed out and not yet given back to :meth:`sent`."""
        return self._inflight.total

    @property
    def deferred_reads(self) -> int:
        return self._deferred_count

    def slots_of(self, address: str) -> int:
        """Transfer slots the identities of ``address`` hold together."""
        return self._slots.by_address[address]

    def handle(self, peer: str, frames: Sequence[Frame], now: float, address: str = "") -> list[list[Frame]]:
        """Every reply to one message from authenticated ``peer``, as if the peer read each one at once, with any
        chunk table it needs built here and now (for tests and tools; the server builds them off its loop)."""
        todo = deque(self.replies(peer, frames, now, address=address))
        for build in self.take_builds():
            build.run()
            todo += self.built(build, now)
        out = []
        while todo:
            reply = todo.popleft()
            out.append(reply.frames)
            todo += self.sent(reply, now)
        return out

    def replies(
        self, peer: str, frames: Sequence[Frame], now: float, origin: object = None, address: str = ""
    ) -> list[Reply]:
        """The replies to send now to one message from authenticated ``peer`` at network ``address`` ("" = an
        address of its own). An Open whose chunk table must be built first gets at most a ``Working`` notice here;
        its answer comes from :meth:`built`. A Read may get no reply yet: it waits for :meth:`sent`."""
        who = Peer(peer, address or f"identity:{peer}")
        try:
            message, _ = CODEC.decode(frames)
        except ForeignMessageError as exc:  # an index client (ls) pointed here: say what this is, once per message
            self.stats.malformed += 1
            log.debug("request of another protocol from %s: %s", peer, exc)
            return [self._reply(who, origin, CODEC.encode(WrongService(kind=SHARE)))]
        except ProtocolError as exc:
            self.stats.malformed += 1
            log.debug("malformed request from %s: %s", peer, exc)
            return []
        if isinstance(message, Read):
            return self._read(who, message, now, origin)
        if isinstance(message, Open):
            return [self._reply(who, origin, r) for r in self._open(who, message, now, origin)]
        if isinstance(message, Close):
            transfer = self._transfers.get(message.tid)
            if transfer is not None and transfer.peer.identity == peer:
                self._drop(transfer)
                self.stats.closed += 1
        elif isinstance(message, Cancel):
            self._cancel(peer, message.rid)
        else:
            self.stats.malformed += 1  # a reply type sent to the server
        return []

    def sent(self, reply: Reply, now: float) -> list[Reply]:
        """The socket is done with ``reply`` (sent, or dropped): its bytes no longer count, and the Reads that
        waited for room are answered, round-robin over identities, as far as the limits now allow."""
        self._inflight.remove(reply.peer, reply.size)
        out: list[Reply] = []
        for identity in list(self._deferred):
            queue = self._deferred[identity]
            while queue:
                waiting = queue[0]
                transfer = self._transfers.get(waiting.read.tid)
                length = self._chunk_length(transfer, waiting.read) if transfer is not None else 0
                if self._inflight.over(waiting.peer, length, self._inflight_limits):
                    break
                queue.popleft()
                self._deferred_count -= 1
                out += self._read(waiting.peer, waiting.read, now, waiting.origin, waited=True)
            del self._deferred[identity]
            if queue:
                self._deferred[identity] = queue  # to the back: the next identity goes first next time
        return out

    def take_builds(self) -> list[TableBuild]:
        """Chunk tables to build (call :meth:`TableBuild.run` off the loop, then :meth:`built`)."""
        builds, self._to_start = self._to_start, []
        return builds

    def built(self, build: TableBuild, now: float) -> list[Reply]:
        """A build has run: cache its table and answer the Opens waiting for it."""
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
            self._slots.remove(waiter.peer, 1)  # counted as a slot while it waited; _opened counts it again
            out.append(self._reply(waiter.peer, waiter.origin, self._answer(waiter, build, now)))
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
        self._slots.clear()
        self._deferred.clear()
        self._deferred_count = 0

    # -- requests ---------------------------------------------------------------------------------------------

    def _reply(self, peer: Peer, origin: object, frames: list[Frame]) -> Reply:
        """``frames`` as a reply to ``peer``, its bytes counted in flight until :meth:`sent`."""
        size = sum(len(f) for f in frames)
        self._inflight.add(peer, size)
        return Reply(origin, frames, peer, size)

    def _refuse(self, rid: int, reason: RefuseReason, detail: str) -> list[Frame]:
        self.stats.refused[reason] += 1
        log.info("refused open: %s (%s)", reason, detail)
        return CODEC.encode(Refused(rid=rid, reason=reason, detail=detail[:512]))

    def _make_room(self, who: Peer, now: float) -> bool:
        """Whether ``who`` may take one more slot, after closing a transfer to make room if it must: an idle one
        (``reclaim_after``) of the identity, address or everybody whose limit is reached, or, when every slot is
        taken and none is idle, one of the address holding the most, if it holds two more than ``who``'s."""
        while scope := self._slots.over(who, 1, self._slot_limits):
            candidates = [t for t in self._transfers.values() if _within(t.peer, who, scope)]
            victims = [t for t in candidates if now - t.last_used >= self.config.reclaim_after]
            if not victims and scope == "total":
                held = self._slots.by_address
                richest = max(held, key=held.__getitem__)
                if held[richest] >= held[who.address] + 2:
                    victims = [t for t in candidates if t.peer.address == richest]
            if not victims:
                return False
            victim = min(victims, key=lambda t: t.last_used)
            log.info("closing transfer %d of %s to make room (%s limit)", victim.tid, victim.peer.identity, scope)
            self._drop(victim)
            self.stats.evicted += 1
        return True

    def _open(self, who: Peer, msg: Open, now: float, origin: object) -> Iterator[list[Frame]]:
        if not proof.key_matches(who.identity, msg):
            yield self._refuse(msg.rid, "wrong-key", "the open's key is not the key of its connection")
            return
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
        if not self._make_room(who, now):
            yield self._refuse(msg.rid, "busy", "too many open transfers")
            return
        try:
            found = locate(self.roots, msg.name)
            if found is None:  # the catalogue named it, but no folder has its prefix: a bug, refused all the same
                raise TransferError(f"{msg.name!r} is in no shared folder")
            fd, st = names.open_shared(*found)
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
                raise ChangedError(f"{msg.name!r} changed size since it was catalogued")
            asked = msg.chunk_size
            chunk_size = asked if asked and asked <= self.config.max_chunk_size else self.config.chunk_size
            while chunk_count(st.st_size, chunk_size) > MAX_CHUNKS and chunk_size < MAX_CHUNK:
                chunk_size *= 2
            if chunk_count(st.st_size, chunk_size) > MAX_CHUNKS:
                raise _RefuseError("bad-chunking", "file too large")
        except ChangedError as exc:
            os.close(fd)
            yield self._refuse(msg.rid, "changed", str(exc))
            return
        except _RefuseError as exc:
            os.close(fd)
            yield self._refuse(msg.rid, exc.reason, exc.detail)
            return
        waiter = Waiter(who, msg.rid, msg.name, fd, st, entry.content_hash, origin, proof.answer(self.identity, msg))
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
        self._slots.add(who, 1)  # a waiting Open holds a descriptor: it counts against the limits
        if st.st_size >= self.config.working_notice:
            yield CODEC.encode(Working(rid=msg.rid, size=st.st_size))

    def _answer(self, waiter: Waiter, build: TableBuild, now: float) -> list[Frame]:
        """Opened or Refused for an Open that waited for ``build``."""
        if build.table is None:
            os.close(waiter.fd)
            reason: RefuseReason = "changed" if isinstance(build.error, ChangedError) else "io-error"
            return self._refuse(waiter.rid, reason, f"{waiter.name!r}: {build.error}")
        return self._opened(waiter, build.chunk_size, build.table, now)

    def _opened(self, waiter: Waiter, chunk_size: int, table: ChunkTable, now: float) -> list[Frame]:
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
        self._slots.add(waiter.peer, 1)
        self.stats.opened += 1
        reply = Opened(
            rid=waiter.rid,
            tid=tid,
            size=st.st_size,
            chunk_size=chunk_size,
            mtime_ns=st.st_mtime_ns,
            content_hash=table.content_hash,
            holder_key=waiter.proof[0],
            proof=waiter.proof[1],
        )
        return CODEC.encode(reply, table.digests)

    def _cancel(self, peer: str, rid: int) -> None:
        """The fetcher gave up Open ``rid``: drop it, waiting or answered (a build nobody waits for stops)."""
        for build in list(self._builds.values()):
            for waiter in [w for w in build.waiters if w.peer.identity == peer and w.rid == rid]:
                build.waiters.remove(waiter)
                os.close(waiter.fd)
                self._slots.remove(waiter.peer, 1)
                self.stats.cancelled += 1
            if not build.waiters:
                build.cancel()
                del self._builds[build.key]
        for transfer in [t for t in self._transfers.values() if t.peer.identity == peer and t.rid == rid]:
            self._drop(transfer)
            self.stats.cancelled += 1

    def _read(self, who: Peer, msg: Read, now: float, origin: object, waited: bool = False) -> list[Reply]:
        """A chunk, or why not; no reply yet when the chunk must wait for room in flight (``waited``: it did)."""
        transfer = self._transfers.get(msg.tid)
        if transfer is None or transfer.peer.identity != who.identity:
            return [
                self._reply(who, origin, CODEC.encode(Failed(tid=msg.tid, reason="unknown-transfer", index=msg.index)))
            ]
        if msg.index >= transfer.chunks:
            return [self._reply(who, origin, CODEC.encode(Failed(tid=msg.tid, reason="bad-index", index=msg.index)))]
        length = self._chunk_length(transfer, msg)
        if not waited and (who.identity in self._deferred or self._inflight.over(who, length, self._inflight_limits)):
            self._defer(who, msg, origin)
            return []
        return [self._reply(who, origin, self._chunk(transfer, msg, length, now))]

    def _defer(self, who: Peer, msg: Read, origin: object) -> None:
        queue = self._deferred.setdefault(who.identity, deque())
        if (
            len(queue) >= self.config.max_deferred_reads_per_peer
            or self._deferred_count >= self.config.max_deferred_reads
        ):
            self.stats.reads_dropped += 1
            if not queue:
                del self._deferred[who.identity]
            return
        queue.append(_Deferred(who, msg, origin))
        self._deferred_count += 1
        self.stats.deferred += 1

    @staticmethod
    def _chunk_length(transfer: _Transfer, msg: Read) -> int:
        return min(transfer.chunk_size, transfer.size - msg.index * transfer.chunk_size)

    def _chunk(self, transfer: _Transfer, msg: Read, length: int, now: float) -> list[Frame]:
        """Chunk ``msg.index`` read from the file, or Failed if it cannot be read or the file changed."""
        offset = msg.index * transfer.chunk_size
        try:
            st = os.fstat(transfer.fd)
            data = os.pread(transfer.fd, length, offset)
        except OSError as exc:
            self._drop(transfer)
            return CODEC.encode(Failed(tid=msg.tid, reason="io-error", index=msg.index, detail=str(exc.strerror)))
        if st.st_size != transfer.size or st.st_mtime_ns != transfer.mtime_ns or len(data) != length:
            self._drop(transfer)
            self.stats.changed += 1
            log.warning("%s changed while %s was fetching it", transfer.name, transfer.peer.identity)
            return CODEC.encode(
                Failed(
                    tid=msg.tid,
                    reason="changed",
                    index=msg.index,
                    detail=f"{transfer.name!r} changed (size or modification time) while it was being served",
                )
            )
        transfer.last_used = now
        self.stats.chunks_sent += 1
        self.stats.bytes_sent += length
        return CODEC.encode(Chunk(tid=msg.tid, index=msg.index), data)

    # -- helpers ----------------------------------------------------------------------------------------------

    def _drop(self, transfer: _Transfer) -> None:
        if self._transfers.pop(transfer.tid, None) is not None:
            os.close(transfer.fd)
            self._slots.remove(transfer.peer, 1)

    def _cache(self, key: tuple[int, ...], table: ChunkTable) -> None:
        """Keep ``table`` for later Opens of the same version, within ``table_cache_bytes`` (oldest out first)."""
        self._tables[key] = table
        self._table_bytes += len(table.digests) + 64
        while self._table_bytes > self.config.table_cache_bytes and len(self._tables) > 1:
            _, old = self._tables.popitem(last=False)
            self._table_bytes -= len(old.digests) + 64


def _within(peer: Peer, who: Peer, scope: str) -> bool:
    """Whether ``peer`` counts against the ``scope`` limit ("identity", "address", "total") of ``who``."""
    if scope == "identity":
        return peer.identity == who.identity
    return scope == "total" or peer.address == who.address


def _table_key(st: os.stat_result, chunk_size: int) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, chunk_size)


class _RefuseError(Exception):
    def __init__(self, reason: RefuseReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
