"""The SQL stores' shared base, through peewee: the SQLite (:mod:`.sqlite`) and MySQL (:mod:`.mysql`) backends.

Both use the same table layout and the same statements apart from the last-writer-wins upsert, which each
dialect spells its own way. Bulk writes go through the DB-API ``executemany`` on peewee's connection inside one
peewee transaction, which is what makes 20,000+ updates/s possible; reads page by primary key so no cursor stays
open across the master's event loop.
"""

# ruff: noqa: S608 - table names come from a prefix checked against PREFIX_RE; values are always parameters
from __future__ import annotations

import logging
import operator
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import wraps
from typing import Any, ParamSpec, TypeVar

from overdrive.errors import StoreError
from overdrive.index.records import DELETED, HOLDER, NAME, SEQ, Record, RecordRow
from overdrive.index.stores.base import BATCH, BUCKETS, COLUMNS, Store, check_prefix, checksum, encode_vector, to_record

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_MYSQL_DRIVERS = ("pymysql", "MySQLdb")


def _peewee_without_mysql() -> Any:
    """Import peewee without the MySQL driver it imports as it loads, if installed (pymysql: ~25 ms, cryptography
    included), which a SQLite store never uses; :mod:`.mysql` hands the driver to peewee when a MySQL store opens.
    The backends import peewee from here, so that this import is the first."""
    if "peewee" in sys.modules:
        return sys.modules["peewee"]
    hidden = [name for name in _MYSQL_DRIVERS if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment] # None in sys.modules: the import raises ImportError
    try:
        import peewee
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
    return peewee


peewee = _peewee_without_mysql()

COLS = ", ".join(COLUMNS)
"""The columns of a record row, for SELECT and INSERT lists."""
NAMES_PER_QUERY = 500
"""Names looked up per statement by :meth:`SqlStore.named_rows`."""


def _first_cause(exc: BaseException, errors: tuple[type[BaseException], ...]) -> BaseException:
    """The error that says why: a COMMIT that fails (a full disk) makes SQLite roll back by itself, and peewee's own
    ROLLBACK then fails with "no transaction is active", which says nothing of the reason; the COMMIT's error is
    the one it was raised while handling. Any other error is its own reason (an earlier one it was raised while
    handling, an IntegrityError caught on purpose say, is not)."""
    while "no transaction is active" in str(exc) and isinstance(exc.__context__, errors):
        exc = exc.__context__
    return exc


def store_error(store: SqlStore, exc: BaseException) -> StoreError:
    """The StoreError naming ``store`` for a backend exception."""
    return StoreError(f"{store.describe()}: {_first_cause(exc, store.errors)}")


def translated(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn backend exceptions into StoreError naming the store (the first argument)."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store: SqlStore = args[0]  # type: ignore[assignment]
        try:
            return fn(*args, **kwargs)
        except store.errors as exc:
            raise store_error(store, exc) from exc

    return wrapper


def gen_translated(fn: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    """:func:`translated` for a generator method."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        store: SqlStore = args[0]  # type: ignore[assignment]
        try:
            yield from fn(*args, **kwargs)
        except store.errors as exc:
            raise store_error(store, exc) from exc

    return wrapper


def loaded(fn: Callable[P, T]) -> Callable[P, T]:
    """Mark a method that needs the indexes or the last-writer-wins result: it first ends a bulk load in progress
    (:meth:`SqlStore.end_load`), at the call, not when a returned iterator is first advanced."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        store: SqlStore = args[0]  # type: ignore[assignment]
        store.end_load()
        return fn(*args, **kwargs)

    return wrapper


key_order = operator.itemgetter(HOLDER, NAME)
"""(holder, name): the order of SQLite's unique key; MySQL keys a hash, where no order helps."""


def _rows(page: list[Any]) -> list[RecordRow]:
    """DB rows as record rows (SQL gives ``deleted`` as 0/1; the wire wants a bool)."""
    return [(*r[:DELETED], r[DELETED] == 1) for r in page]


def _id_rows(page: list[Any]) -> list[RecordRow]:
    """:func:`_rows` for DB rows that start with the ``id`` column."""
    return [(*r[1:-1], r[-1] == 1) for r in page]


class SqlStore(Store):
    """Shared SQL logic; subclasses give the database, DDL and upsert."""

    param = "?"
    errors: tuple[type[BaseException], ...] = (peewee.PeeweeException, OSError)
    """What the backend raises on failure (the store translates it to StoreError)."""

    def mod(self, expr: str, n: int) -> str:
        """``expr`` modulo ``n`` in this dialect (``%`` is a parameter marker for pymysql)."""
        return f"({expr} % {n})"

    def __init__(self, db: Any, prefix: str = "") -> None:
        """``db``: the peewee Database (peewee is untyped)."""
        check_prefix(prefix, "table")
        self.db: Any = db
        self.table = f"{prefix}records"
        self.meta = f"{prefix}meta"
        p = self.param
        marks = ", ".join([p] * len(COLUMNS))
        self._insert = self.upsert_sql(marks)
        self._select = f"SELECT {COLS} FROM {self.table}"
        self._by_name = f"name = {p}"
        """The condition that finds the rows of one exact name."""
        self._closed = False

    def upsert_sql(self, marks: str) -> str:
        raise NotImplementedError

    def prepare(self, rows: Sequence[RecordRow]) -> Sequence[Sequence[object]]:
        """Rows as the upsert statement takes them."""
        return rows

    def ddl(self) -> list[str]:
        raise NotImplementedError

    def end_load(self) -> None:
        """End a bulk load in progress (the SQLite store's; other backends never bulk load)."""

    @translated
    def _setup(self) -> None:
        self.db.connect(reuse_if_open=True)
        with self.db.atomic():
            for statement in self.ddl():
                self.db.execute_sql(statement)

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return list(self.db.execute_sql(sql, params).fetchall())

    @translated
    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        with self.db.atomic():
            changed = 0
            if rows:
                cursor = self.db.cursor()
                # in key order: B-tree inserts with locality are markedly faster on big batches
                ordered = sorted(rows, key=key_order) if len(rows) > 64 else rows
                cursor.executemany(self._insert, self.prepare(ordered))
                changed = max(cursor.rowcount, 0)
            if vector is not None:
                self._set_meta("vector", encode_vector(vector))
        return changed

    @loaded
    @translated
    def get(self, holder: str, name: str) -> Record | None:
        p = self.param
        found = self._fetch(f"{self._select} WHERE holder = {p} AND name = {p}", (holder, name))
        return to_record(found[0]) if found else None

    @loaded
    @gen_translated
    def rows(self, batch: int = BATCH) -> Iterator[list[RecordRow]]:
        p = self.param
        last = -1
        while True:
            page = self._fetch(
                f"SELECT id, {COLS} FROM {self.table} WHERE id > {p} ORDER BY id LIMIT {p}", (last, batch)
            )
            if not page:
                return
            last = page[-1][0]
            yield _id_rows(page)

    @loaded
    @gen_translated
    def since(self, vector: Mapping[str, int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        if not vector:
            yield from self.rows(batch)
            return
        p = self.param
        for origin in self._origins():
            last = vector.get(origin, 0)
            while True:
                page = self._fetch(
                    f"{self._select} WHERE origin = {p} AND seq > {p} ORDER BY seq LIMIT {p}", (origin, last, batch)
                )
                if not page:
                    break
                last = page[-1][SEQ]
                yield _rows(page)

    def _origins(self) -> list[str]:
        """The origins that have rows here."""
        return [r[0] for r in self._fetch(f"SELECT DISTINCT origin FROM {self.table}")]

    @loaded
    @gen_translated
    def bucket_rows(self, buckets: Sequence[int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        wanted = sorted({int(b) % BUCKETS for b in buckets})
        if not wanted:
            return
        listed = ", ".join(str(b) for b in wanted)
        p = self.param
        last = -1
        while True:
            page = self._fetch(
                f"SELECT id, {COLS} FROM {self.table} WHERE id > {p} AND {self.mod('seq', BUCKETS)} IN ({listed}) "
                f"ORDER BY id LIMIT {p}",
                (last, batch),
            )
            if not page:
                return
            last = page[-1][0]
            yield _id_rows(page)

    @loaded
    @translated
    def checksums(self) -> list[int]:
        found = self._fetch(
            f"SELECT {self.mod('seq', BUCKETS)}, COUNT(*), SUM({self.mod('hlc', 1 << 32)}), SUM(seq), SUM(deleted) "
            f"FROM {self.table} GROUP BY {self.mod('seq', BUCKETS)}"
        )
        out = [0] * BUCKETS
        for bucket, count, hsum, ssum, dsum in found:
            out[int(bucket)] = checksum(int(count), int(hsum), int(ssum), int(dsum))
        return out

    @loaded
    @translated
    def holder_rows(self, holder: str) -> list[RecordRow]:
        return _rows(self._fetch(f"{self._select} WHERE holder = {self.param}", (holder,)))

    @loaded
    @translated
    def named_rows(self, holder: str, names: Sequence[str]) -> list[RecordRow]:
        p = self.param
        out: list[RecordRow] = []
        unique = sorted(set(names))
        for start in range(0, len(unique), NAMES_PER_QUERY):
            chunk = unique[start : start + NAMES_PER_QUERY]
            marks = ", ".join([p] * len(chunk))
            out += _rows(self._fetch(f"{self._select} WHERE holder = {p} AND name IN ({marks})", (holder, *chunk)))
        return out

    @loaded
    @translated
    def purge(self, before_hlc: int) -> int:
        with self.db.atomic():
            cursor = self.db.execute_sql(
                f"DELETE FROM {self.table} WHERE deleted = 1 AND hlc < {self.param}", (before_hlc,)
            )
            return max(int(cursor.rowcount), 0)

    @translated
    def get_meta(self, key: str) -> str | None:
        found = self._fetch(f"SELECT v FROM {self.meta} WHERE k = {self.param}", (key,))
        return str(found[0][0]) if found else None

    def _set_meta(self, key: str, value: str) -> None:
        p = self.param
        self.db.execute_sql(f"REPLACE INTO {self.meta} (k, v) VALUES ({p}, {p})", (key, value))

    @loaded
    @translated
    def set_meta(self, key: str, value: str) -> None:
        with self.db.atomic():
            self._set_meta(key, value)

    @translated
    def count(self) -> int:
        return int(self._fetch(f"SELECT COUNT(*) FROM {self.table} WHERE deleted = 0")[0][0])

    @loaded
    def find(
        self,
        name: str = "",
        *,
        glob: bool = False,
        content_hash: str | None = None,
        include_deleted: bool = False,
    ) -> Iterator[Record]:
        if glob or not name:
            yield from super().find(name, glob=glob, content_hash=content_hash, include_deleted=include_deleted)
            return
        p = self.param
        sql = f"{self._select} WHERE {self._by_name}"
        params: list[object] = [name]
        if content_hash is not None:
            sql += f" AND content_hash = {p}"
            params.append(content_hash)
        if not include_deleted:
            sql += " AND deleted = 0"
        try:
            found = self._fetch(sql, params)
        except self.errors as exc:
            raise StoreError(f"{self.describe()}: {exc}") from exc
        for row in found:
            yield to_record(row)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.db.close()
            except self.errors as exc:
                log.debug("closing %s: %s", self.describe(), exc)
