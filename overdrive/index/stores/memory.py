"""An in-memory store (``memory://``): for tests and the in-memory replication simulations."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

from overdrive.index.records import DELETED, HLC, HOLDER, NAME, ORIGIN, SEQ, Record, RecordRow
from overdrive.index.stores.base import BATCH, BUCKETS, Store, encode_vector, row_checksums, to_record, wins


def _chunks(rows: list[RecordRow], batch: int) -> Iterator[list[RecordRow]]:
    for start in range(0, len(rows), batch):
        yield rows[start : start + batch]


class MemoryStore(Store):
    """Records in a dict keyed by (holder, name); nothing persists."""

    def __init__(self, name: str = "memory") -> None:
        self.name = name
        self.data: dict[tuple[str, str], RecordRow] = {}
        self.meta: dict[str, str] = {}

    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        changed = 0
        for row in rows:
            key = (row[HOLDER], row[NAME])
            old = self.data.get(key)
            if old is None or wins(row, old):
                self.data[key] = tuple(row)  # type: ignore[assignment]
                changed += 1
        if vector is not None:
            self.meta["vector"] = encode_vector(vector)
        return changed

    def get(self, holder: str, name: str) -> Record | None:
        row = self.data.get((holder, name))
        return to_record(row) if row else None

    def rows(self, batch: int = BATCH) -> Iterator[list[RecordRow]]:
        yield from _chunks(list(self.data.values()), batch)

    def since(self, vector: Mapping[str, int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        wanted = [r for r in self.data.values() if r[SEQ] > vector.get(r[ORIGIN], 0)]
        yield from _chunks(wanted, batch)

    def bucket_rows(self, buckets: Sequence[int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        wanted = {b % BUCKETS for b in buckets}
        yield from _chunks([r for r in self.data.values() if r[SEQ] % BUCKETS in wanted], batch)

    def checksums(self) -> list[int]:
        return row_checksums(self.data.values())

    def holder_rows(self, holder: str) -> list[RecordRow]:
        return [r for r in self.data.values() if r[HOLDER] == holder]

    def purge(self, before_hlc: int) -> int:
        doomed = [k for k, r in self.data.items() if r[DELETED] and r[HLC] < before_hlc]
        for key in doomed:
            del self.data[key]
        return len(doomed)

    def get_meta(self, key: str) -> str | None:
        return self.meta.get(key)

    def set_meta(self, key: str, value: str) -> None:
        self.meta[key] = value

    def count(self) -> int:
        return sum(1 for r in self.data.values() if not r[DELETED])

    def describe(self) -> str:
        return f"memory store {self.name}"

    def close(self) -> None:
        pass
