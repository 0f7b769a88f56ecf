"""The replication state machine of one master, without sockets (sans-IO).

Every change to the index is *stamped* by the master a node talked to (its origin): ``(origin, seq)`` with a
per-origin sequence number and an HLC timestamp. Masters exchange stamped rows; each keeps a version vector
``origin -> highest seq up to which it has seen every update`` (out-of-order arrivals wait in ``pending``).

* :meth:`Replica.stamp` turns a node's report into new rows (only what actually changed). Only a holder writes
  its own rows, so a node's rows carry the node's clock (:meth:`Replica.node_stamp`, bounded by ours): a report
  that a stalled master handles late then loses to what the node reported meanwhile through another master.
* :meth:`Replica.accept` filters rows from a peer down to the ones not seen before (idempotence: a duplicate
  is dropped by its ``(origin, seq)``), which are then :meth:`commit`-ted and forwarded.
* Applying is last-writer-wins per (holder, name) by ``(hlc, origin)`` in the store, so any delivery order gives
  the same result. Deletions are tombstones, purged after ``tombstone_retention``; an incoming tombstone older
  than that is ignored (the usual limit: a master partitioned for longer than the retention can resurrect).
* Catch-up (zguide "Clone" with vectors): a master behind a peer's vector asks for :meth:`serve_sync` rows (all
  rows with ``seq`` above its vector), :meth:`merge` s them, then :meth:`finish_sync` folds in the peer's vector.
* Anti-entropy: peers compare :meth:`checksums` per hash bucket and exchange the rows of differing buckets.

The store is the only I/O, and :class:`~overdrive.index.stores.memory.MemoryStore` makes it pure memory for tests.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from overdrive.errors import ConfigError
from overdrive.files.model import FileInfo
from overdrive.index.hlc import MAX_DRIFT_MS, HybridClock, from_ms, wall_ms
from overdrive.index.protocol import VECTOR_LIMIT
from overdrive.index.records import RecordRow, check_node_id
from overdrive.index.stores.base import BATCH, Store, encode_vector

log = logging.getLogger(__name__)

BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
MAX_ORIGINS = 2_000
"""Origins a catch-up may add to the version vector besides known masters (masters that have left, vouched for by
the master we caught up from). Known masters always get in; past this, other origins are not taken, so a hostile
master cannot push the vector towards the wire's VECTOR_LIMIT."""
MAX_PENDING = 1_000_000
"""Out-of-order seqs remembered per origin; beyond that, anti-entropy fills the gap instead."""
NO_HASH = "0" * 64
"""Content hash of a tombstone for a name this master never saw listed (the listing may still be on its way)."""


def new_origin_id() -> str:
    """A fresh random origin id (16 base32 characters), one per store."""
    return "".join(secrets.choice(BASE32) for _ in range(16))


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicationConfig:
    """Replication tunables."""

    tombstone_retention: float = 7 * 86400.0
    """Seconds a deletion is remembered (must exceed the longest partition you want to survive)."""
    batch: int = BATCH
    """Rows per snapshot / repair batch."""

    def __post_init__(self) -> None:
        if self.tombstone_retention <= 0:
            raise ConfigError("tombstone_retention must be positive")
        if not 1 <= self.batch <= 200_000:
            raise ConfigError("batch must be 1 to 200000 rows")


@dataclass(slots=True)
class ReplicaStats:
    """Counters a master reports."""

    stamped: int = 0
    accepted: int = 0
    duplicates: int = 0
    stale_tombstones: int = 0
    merged: int = 0
    purged: int = 0


@dataclass
class Replica:
    """One master's replication state over its store."""

    store: Store
    config: ReplicationConfig = field(default_factory=ReplicationConfig)
    clock: HybridClock = field(default_factory=HybridClock)
    origin: str = ""
    vector: dict[str, int] = field(default_factory=dict)
    pending: dict[str, set[int]] = field(default_factory=dict)
    stats: ReplicaStats = field(default_factory=ReplicaStats)

    def __post_init__(self) -> None:
        stored = self.store.get_meta("origin")
        if self.origin and stored and stored != self.origin:
            raise ValueError(f"store belongs to origin {stored}, not {self.origin}")
        if not self.origin:
            self.origin = stored or new_origin_id()
        check_node_id(self.origin, "origin")
        if stored is None:
            self.store.set_meta("origin", self.origin)
        self.vector = self.store.load_vector()
        self.vector.setdefault(self.origin, 0)

    def reload(self) -> None:
        """Forget what is not in the store: after a write failed (a full disk, say), the vector is the one saved
        with the last batch that was, so nothing is marked seen that is not stored. What was lost comes back
        through catch-up and anti-entropy; sequence numbers stamped but not stored were never sent, so they are
        stamped again."""
        self.vector = self.store.load_vector()
        self.vector.setdefault(self.origin, 0)
        self.pending.clear()

    @property
    def seq(self) -> int:
        """The last sequence number this master stamped."""
        return self.vector[self.origin]

    def wire_vector(self, first: Iterable[str] = ()) -> dict[str, int]:
        """The vector as a message may carry it: all of it, or (past VECTOR_LIMIT, a store filled before origins
        were bounded) our own origin, ``first`` (known masters) and the highest seqs. A peer reading less than we
        have only asks for, or serves, more rows: never a message it cannot decode."""
        if len(self.vector) <= VECTOR_LIMIT:
            return dict(self.vector)
        keep = [self.origin, *(o for o in first if o in self.vector)]
        rest = sorted(self.vector, key=lambda o: -self.vector[o])
        out: dict[str, int] = {}
        for origin in itertools.chain(keep, rest):
            if len(out) >= VECTOR_LIMIT:
                break
            out.setdefault(origin, self.vector[origin])
        return out

    def admitted(self, theirs: Mapping[str, int], known: Container[str]) -> dict[str, int]:
        """The part of a peer's vector we may take: origins we have or ``known`` masters, and others (masters
        that have left) while fewer than MAX_ORIGINS are held."""
        room = MAX_ORIGINS - len(self.vector)
        out: dict[str, int] = {}
        for origin, seq in theirs.items():
            if origin in self.vector or origin in known:
                out[origin] = seq
            elif room > 0:
                out[origin] = seq
                room -= 1
        return out

    # -- local writes ------------------------------------------------------------------------------------------

    def node_stamp(self, stamp: int) -> int | None:
        """The timestamp for rows of a report a node stamped ``stamp`` (its clock follows ours, from our Acks), or
        None to refuse the report: more than MAX_DRIFT_MS behind our clock, it is one a stalled master held (the
        node has moved on) or from a node that skipped the clock handshake, and its tombstones could count as
        expired. Stamps ahead of ours are capped at MAX_DRIFT_MS ahead, so a node cannot push clocks forward
        (peers do not follow a row that far ahead) and its capped stamps still grow."""
        mine = self.clock.now()
        drift = from_ms(MAX_DRIFT_MS)
        if stamp < mine - drift:
            return None
        return min(stamp, mine + drift)

    def stamp(
        self,
        holder: str,
        address: str,
        files: Sequence[FileInfo],
        removed: Iterable[str] = (),
        keep_only: set[str] | None = None,
        hlc: int = 0,
    ) -> list[RecordRow]:
        """New rows for what a node reports: changed files, removed names, and (``keep_only``) everything else,
        stamped ``hlc`` (from :meth:`node_stamp`; 0: our clock).

        Unchanged files produce nothing, so a node re-registering after a failover costs no replication. A name
        removed explicitly is tombstoned even if we never saw it listed: the listing may be held up in a stalled
        master and arrive later, and must then lose. A report reusing the stamp of the row we hold for a name is
        ignored for that name: two versions with one ``(hlc, origin)`` would leave masters disagreeing.
        """
        removed = list(removed)
        if keep_only is None:
            known = self.store.named_rows(holder, [f.name for f in files] + removed)
        else:
            known = self.store.holder_rows(holder)
        current = {row[0]: row for row in known}
        out: list[RecordRow] = []
        for info in files:
            old = current.get(info.name)
            if (
                old is not None
                and not old[9]
                and old[1] == info.size
                and old[2] == info.content_hash
                and old[5] == info.mtime_ns
                and old[4] == address
            ) or self._reused(old, hlc):
                continue
            row = (info.name, info.size, info.content_hash, holder, address, info.mtime_ns)
            out.append(self._stamp_row(row, deleted=False, hlc=hlc))
            current[info.name] = out[-1]
        gone = set(removed)
        if keep_only is not None:
            gone |= {name for name in current if name not in keep_only}
        for name in sorted(gone):
            old = current.get(name)
            if (old is not None and old[9]) or self._reused(old, hlc):
                continue
            base = old[:6] if old is not None else (name, 0, NO_HASH, holder, address, 0)
            out.append(self._stamp_row(base, deleted=True, hlc=hlc))
        self.stats.stamped += len(out)
        return out

    def _reused(self, old: RecordRow | None, hlc: int) -> bool:
        return hlc != 0 and old is not None and old[8] == hlc and old[6] == self.origin

    def _stamp_row(self, base: Sequence[object], *, deleted: bool, hlc: int = 0) -> RecordRow:
        seq = self.vector[self.origin] + 1
        self.vector[self.origin] = seq
        return (*base, self.origin, seq, hlc or self.clock.now(), deleted)  # type: ignore[return-value]

    # -- replicated writes -------------------------------------------------------------------------------------

    def accept(self, rows: Iterable[RecordRow], now_ms: int | None = None) -> list[RecordRow]:
        """The rows not seen before (by ``(origin, seq)``), marking them seen; stale tombstones are dropped."""
        cutoff = self._cutoff(now_ms)
        fresh: list[RecordRow] = []
        newest = 0
        for row in rows:
            origin, seq = row[6], row[7]
            if not self._mark(origin, seq):
                self.stats.duplicates += 1
                continue
            if row[9] and row[8] < cutoff:
                self.stats.stale_tombstones += 1
                continue
            newest = max(newest, row[8])
            fresh.append(row)
        if newest:
            self.clock.observe(newest)
        self.stats.accepted += len(fresh)
        return fresh

    def _mark(self, origin: str, seq: int) -> bool:
        done = self.vector.get(origin, 0)
        if seq <= done:
            return False
        waiting = self.pending.get(origin)
        if seq == done + 1:
            done = seq
            if waiting:
                while done + 1 in waiting:
                    done += 1
                    waiting.discard(done)
                if not waiting:
                    del self.pending[origin]
            self.vector[origin] = done
            return True
        if waiting is None:
            waiting = self.pending[origin] = set()
        if seq in waiting:
            return False
        if len(waiting) < MAX_PENDING:
            waiting.add(seq)
        return True

    def commit(self, rows: Sequence[RecordRow]) -> int:
        """Apply rows last-writer-wins and persist the vector with them; return how many won."""
        return self.store.apply(rows, self.vector)

    # -- catch-up ----------------------------------------------------------------------------------------------

    def behind(self, theirs: Mapping[str, int]) -> bool:
        """True if a peer's vector has updates we have not seen."""
        return any(seq > self.vector.get(origin, 0) for origin, seq in theirs.items())

    def serve_sync(self, theirs: Mapping[str, int]) -> Iterator[list[RecordRow]]:
        """Every stored row a peer with vector ``theirs`` may lack, in batches."""
        return self.store.since(theirs, self.config.batch)

    def serve_sync_pages(self, theirs: Mapping[str, int]) -> Iterator[bytes]:
        """:meth:`serve_sync` as snapshot pages (:mod:`overdrive.index.pages`)."""
        return self.store.since_pages(theirs, self.config.batch)

    def merge_page(self, data: bytes | memoryview, now_ms: int | None = None) -> int:
        """:meth:`merge` for a snapshot page; raise ProtocolError (nothing applied) if the page is bad."""
        won, newest = self.store.apply_page(data, self._cutoff(now_ms))
        if newest:
            self.clock.observe(newest)
        self.stats.merged += won
        return won

    def merge(self, rows: Sequence[RecordRow], now_ms: int | None = None) -> int:
        """Apply snapshot or repair rows (last-writer-wins; vector untouched); return how many won."""
        cutoff = self._cutoff(now_ms)
        keep = [r for r in rows if not (r[9] and r[8] < cutoff)]
        if keep:
            self.clock.observe(max(r[8] for r in keep))
        won = self.store.apply(keep)
        self.stats.merged += won
        return won

    def finish_sync(self, theirs: Mapping[str, int]) -> None:
        """After merging a peer's sync rows: we now cover its vector."""
        for origin, seq in theirs.items():
            if seq > self.vector.get(origin, 0):
                self.vector[origin] = seq
                waiting = self.pending.get(origin)
                if waiting is not None:
                    self.pending[origin] = {s for s in waiting if s > seq}
                    done = seq
                    while done + 1 in self.pending[origin]:
                        done += 1
                        self.pending[origin].discard(done)
                    self.vector[origin] = done
                    if not self.pending[origin]:
                        del self.pending[origin]
        self.store.set_meta("vector", encode_vector(self.vector))

    # -- anti-entropy and housekeeping ---------------------------------------------------------------------------

    def checksums(self) -> list[int]:
        return self.store.checksums()

    @staticmethod
    def differing(mine: Sequence[int], theirs: Sequence[int]) -> list[int]:
        """Buckets whose checksums differ."""
        return [i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b]

    def bucket_rows(self, buckets: Sequence[int]) -> Iterator[list[RecordRow]]:
        return self.store.bucket_rows(buckets, self.config.batch)

    def purge(self, now_ms: int | None = None) -> int:
        """Drop tombstones older than the retention period."""
        removed = self.store.purge(self._cutoff(now_ms))
        self.stats.purged += removed
        return removed

    def _cutoff(self, now_ms: int | None) -> int:
        now = wall_ms() if now_ms is None else now_ms
        return from_ms(max(0, now - int(self.config.tombstone_retention * 1000)))
