"""The store interface every index backend implements, and the helpers they share.

A store holds the records of one master: at most one per (holder, name), the last writer's version (larger
``(hlc, origin)`` wins, see :mod:`overdrive.index.records`). Writes come in batches of row tuples
(:data:`~overdrive.index.records.RecordRow`), applied last-writer-wins in one transaction together with the
master's version vector, so a crash never leaves the vector ahead of the data. Reads stream rows in batches.

Anti-entropy splits the index into :data:`BUCKETS` buckets by ``seq % 256`` and compares one checksum per bucket
(count and sums of the version fields). Two stores holding the same winning versions have the same checksums.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from overdrive.errors import StoreError
from overdrive.index.patterns import matcher
from overdrive.index.records import CONTENT_HASH, DELETED, HLC, NAME, ORIGIN, SEQ, Record, RecordRow

BUCKETS = 256
NOTICE_AFTER = 1.0
"""Seconds a database may take to answer at start before the user is told what is being waited for."""
Waiting = Callable[[str], None]
"""Hears one line (``waiting for ... (up to N s)...``) when a database has not answered within NOTICE_AFTER."""
BATCH = 20_000
_MASK = (1 << 62) - 1
COLUMNS = ("name", "size", "content_hash", "holder", "address", "mtime_ns", "origin", "seq", "hlc", "deleted")
"""The stored fields (SQL columns, Firestore document fields), in :data:`~overdrive.index.records.RecordRow` order."""
PREFIX_RE = re.compile(r"^[a-z0-9_]{0,32}$")


def check_prefix(prefix: str, what: str) -> str:
    """Return ``prefix`` if it can start table or collection names (``what`` names them), else raise StoreError."""
    if not PREFIX_RE.match(prefix):
        raise StoreError(f"{what} prefix {prefix!r} must be up to 32 of a-z, 0-9, _")
    return prefix


def bucket_of(seq: int) -> int:
    """The anti-entropy bucket of a record."""
    return seq % BUCKETS


def checksum(count: int, hlc_low_sum: int, seq_sum: int, deleted_sum: int) -> int:
    """One bucket's checksum from its aggregates (``hlc_low_sum`` sums ``hlc % 2**32``)."""
    if count == 0:
        return 0
    return (count * 1_000_003 + hlc_low_sum * 31 + seq_sum * 7 + deleted_sum * 13 + 1) & _MASK


def row_checksums(rows: Iterable[Sequence[object]]) -> list[int]:
    """Bucket checksums computed in Python from rows (for backends without SQL aggregates)."""
    agg = [[0, 0, 0, 0] for _ in range(BUCKETS)]
    for row in rows:
        seq = int(row[SEQ])  # type: ignore[call-overload]
        slot = agg[seq % BUCKETS]
        slot[0] += 1
        slot[1] += int(row[HLC]) % (1 << 32)  # type: ignore[call-overload]
        slot[2] += seq
        slot[3] += 1 if row[DELETED] else 0
    return [checksum(*a) for a in agg]


def encode_vector(vector: Mapping[str, int]) -> str:
    return json.dumps(dict(sorted(vector.items())), separators=(",", ":"))


def decode_vector(text: str | None) -> dict[str, int]:
    if not text:
        return {}
    data = json.loads(text)
    return {str(k): int(v) for k, v in data.items()}


def to_record(row: Sequence[object]) -> Record:
    """A validated Record from a stored row."""
    name, size, content_hash, holder, address, mtime_ns, origin, seq, hlc, deleted = row
    return Record(
        name=str(name),
        size=int(size),  # type: ignore[call-overload]
        content_hash=str(content_hash),
        holder=str(holder),
        address=str(address),
        mtime_ns=int(mtime_ns),  # type: ignore[call-overload]
        origin=str(origin),
        seq=int(seq),  # type: ignore[call-overload]
        hlc=int(hlc),  # type: ignore[call-overload]
        deleted=bool(deleted),
    )


def wins(new: Sequence[object], old: Sequence[object]) -> bool:
    """True if row ``new`` beats row ``old`` (same key) by ``(hlc, origin)``."""
    return (int(new[HLC]), str(new[ORIGIN])) > (int(old[HLC]), str(old[ORIGIN]))  # type: ignore[call-overload]


class Store(ABC):
    """A master's copy of the index. Methods raise :class:`~overdrive.errors.StoreError` on backend failure."""

    @abstractmethod
    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        """Upsert ``rows`` last-writer-wins and (if given) save ``vector``, atomically; return rows that won."""

    @abstractmethod
    def get(self, holder: str, name: str) -> Record | None:
        """The stored version of (holder, name), tombstone included, or None."""

    @abstractmethod
    def rows(self, batch: int = BATCH) -> Iterator[list[RecordRow]]:
        """Every stored row (tombstones included), in batches."""

    @abstractmethod
    def since(self, vector: Mapping[str, int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        """Rows whose ``seq`` is above ``vector[origin]`` (0 for unknown origins), in batches."""

    def since_pages(self, vector: Mapping[str, int], batch: int = BATCH) -> Iterator[bytes]:
        """:meth:`since` as snapshot pages (:mod:`overdrive.index.pages`); SQLite fills them without Python rows."""
        from overdrive.index.pages import encode_page

        for rows in self.since(vector, batch):
            yield encode_page(rows)

    def apply_page(self, data: bytes | memoryview, stale_before: int) -> tuple[int, int]:
        """Apply a snapshot page from a peer last-writer-wins, skipping tombstones stamped before ``stale_before``;
        return (rows that won, largest hlc in the page). Raise ProtocolError (nothing applied) if the page is bad."""
        from overdrive.index.pages import decode_page

        rows = decode_page(data)
        newest = max((r[HLC] for r in rows), default=0)
        return self.apply([r for r in rows if not (r[DELETED] and r[HLC] < stale_before)]), newest

    @abstractmethod
    def bucket_rows(self, buckets: Sequence[int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        """Rows in the given anti-entropy buckets."""

    @abstractmethod
    def checksums(self) -> list[int]:
        """The :data:`BUCKETS` bucket checksums."""

    @abstractmethod
    def holder_rows(self, holder: str) -> list[RecordRow]:
        """Every row (tombstones included) of one holder."""

    def named_rows(self, holder: str, names: Sequence[str]) -> list[RecordRow]:
        """The rows of one holder with these names (backends override this with an indexed query)."""
        wanted = set(names)
        return [r for r in self.holder_rows(holder) if r[NAME] in wanted]

    @abstractmethod
    def purge(self, before_hlc: int) -> int:
        """Remove tombstones stamped before ``before_hlc``; return how many."""

    @abstractmethod
    def get_meta(self, key: str) -> str | None:
        """A persisted setting (origin id, version vector)."""

    @abstractmethod
    def set_meta(self, key: str, value: str) -> None:
        """Persist a setting."""

    @abstractmethod
    def count(self) -> int:
        """Number of live (not deleted) records."""

    @abstractmethod
    def describe(self) -> str:
        """One line saying which backend and where (no passwords)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""

    def release(self) -> None:  # noqa: B027 - most backends hold nothing per thread
        """Let go of what the calling thread holds open (SQLite: its connection) before another thread takes the
        store over; the store reopens it if this thread uses it again."""

    # -- shared conveniences -----------------------------------------------------------------------------------

    def load_vector(self) -> dict[str, int]:
        return decode_vector(self.get_meta("vector"))

    def find(
        self,
        name: str = "",
        *,
        glob: bool = False,
        content_hash: str | None = None,
        include_deleted: bool = False,
    ) -> Iterator[Record]:
        """Records matching an exact name (or fnmatch ``glob``; "" = all) and an optional content hash."""
        match = matcher(name) if glob and name else None
        for batch in self.rows():
            for row in batch:
                if row[DELETED] and not include_deleted:
                    continue
                if content_hash is not None and row[CONTENT_HASH] != content_hash:
                    continue
                if name and not (match(row[NAME]) if match is not None else row[NAME] == name):
                    continue
                yield to_record(row)

    def digest(self) -> str:
        """A short hex digest of the whole index (equal digests = same winning versions everywhere)."""
        import hashlib

        data = ",".join(str(c) for c in self.checksums()).encode()
        return hashlib.blake2b(data, digest_size=12).hexdigest()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
