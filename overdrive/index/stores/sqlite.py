"""The SQLite store (``sqlite://``, the default): one file in WAL mode, through peewee.

Bulk loads into an empty store are :mod:`.sqlite_load`'s; snapshot pages (:mod:`overdrive.index.pages`) are filled
and loaded here with SQL, so their rows never become Python objects.
"""

# ruff: noqa: S608 - table names come from a prefix checked against PREFIX_RE; values are always parameters
from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from overdrive.errors import ProtocolError, StoreError
from overdrive.index.pages import PAGE_BYTES, PageCheck, attach, check_schema, deserialize, new_page
from overdrive.index.records import RecordRow
from overdrive.index.stores.base import BATCH, COLUMNS, encode_vector
from overdrive.index.stores.sql import COLS, SqlStore, gen_translated, peewee, translated
from overdrive.index.stores.sqlite_load import CACHE_KIB, BulkLoad, discard_interrupted_load

log = logging.getLogger(__name__)

_WINS = "{new}hlc > {old}hlc OR ({new}hlc = {old}hlc AND {new}origin > {old}origin)"
_OUT = "overdrive_page_out"
_IN = "overdrive_page_in"
"""Schema names of the snapshot pages being filled (sender) and loaded (receiver)."""


class SqliteStore(SqlStore):
    """The embedded default: one SQLite file in WAL mode."""

    param = "?"
    errors = (peewee.PeeweeException, sqlite3.Error, OSError)

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create folder for SQLite database {self.path}: {exc.strerror}") from exc
        discard_interrupted_load(self.path)
        db = peewee.SqliteDatabase(
            str(self.path),
            pragmas={
                # a new file only (an existing one keeps its page size): 16 KiB pages take a 1M-entry snapshot
                # load and its index build ~15 % faster than 4 KiB, with fewer writes per page of rows
                "page_size": 16384,
                "journal_mode": "wal",
                "synchronous": "normal",
                "cache_size": -CACHE_KIB,
                "temp_store": "memory",
                "busy_timeout": 10_000,
            },
        )
        super().__init__(db, prefix)
        self.load = BulkLoad(self)
        self._plain_insert = f"INSERT INTO {self.table} ({COLS}) VALUES ({', '.join('?' * len(COLUMNS))})"
        # The unique key is (holder, name), so a holder's rows need no index of their own. A lookup by name alone
        # seeks it once per distinct holder, which a loose index scan of the key lists (a seek per holder).
        t = self.table
        self._by_name = (
            f"holder IN (WITH RECURSIVE h(x) AS (SELECT min(holder) FROM {t} UNION ALL "
            f"SELECT (SELECT min(holder) FROM {t} WHERE holder > x) FROM h WHERE x IS NOT NULL) "
            "SELECT x FROM h WHERE x IS NOT NULL) AND name = ?"
        )
        self._resume_load()
        self._setup()

    @translated
    def _resume_load(self) -> None:
        """A bulk load cut short (a crash) leaves the table without its unique index: finish that load first."""
        self.db.connect(reuse_if_open=True)
        if self.load.cut_short():
            self.load.active = True
            self.end_load()

    @translated
    def end_load(self) -> None:
        """End a bulk load in progress (see :mod:`.sqlite_load`); no-op when not loading."""
        self.load.end()

    def _origins(self) -> list[str]:
        # a loose index scan of (origin, seq): one seek per origin, where DISTINCT reads the whole index (~0.1 s at
        # 1,000,000 entries, paid before the first page of every sync)
        t = self.table
        return [
            r[0]
            for r in self._fetch(
                f"WITH RECURSIVE o(x) AS (SELECT min(origin) FROM {t} UNION ALL "
                f"SELECT (SELECT min(origin) FROM {t} WHERE origin > x) FROM o WHERE x IS NOT NULL) "
                "SELECT x FROM o WHERE x IS NOT NULL"
            )
        ]

    @property
    def _conflict(self) -> str:
        """The last-writer-wins upsert clause."""
        sets = ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("name", "holder"))
        wins = _WINS.format(new="excluded.", old=f"{self.table}.")
        return f"ON CONFLICT(name, holder) DO UPDATE SET {sets} WHERE {wins}"

    def upsert_sql(self, marks: str) -> str:
        return f"INSERT INTO {self.table} ({COLS}) VALUES ({marks}) {self._conflict}"

    def ddl(self) -> list[str]:
        t = self.table
        return [
            f"CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, "
            "content_hash TEXT NOT NULL, holder TEXT NOT NULL, address TEXT NOT NULL, mtime_ns INTEGER NOT NULL, "
            "origin TEXT NOT NULL, seq INTEGER NOT NULL, hlc INTEGER NOT NULL, deleted INTEGER NOT NULL)",
            f"CREATE UNIQUE INDEX IF NOT EXISTS {t}_hkey ON {t} (holder, name)",
            f"CREATE INDEX IF NOT EXISTS {t}_origin_seq ON {t} (origin, seq)",
            # earlier versions keyed (name, holder) and indexed holder apart
            f"DROP INDEX IF EXISTS {t}_key",
            f"DROP INDEX IF EXISTS {t}_holder",
            f"CREATE TABLE IF NOT EXISTS {self.meta} (k TEXT PRIMARY KEY, v TEXT NOT NULL)",
        ]

    def describe(self) -> str:
        return f"SQLite {self.path}"

    @translated
    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        # snapshot rows into an empty store bulk-load (see .sqlite_load): plain INSERTs, the key built at the end
        if not self.load.active and (vector is not None or not self.load.begin(len(rows))):
            return super().apply(rows, vector)
        try:
            with self.db.atomic():
                if rows:
                    self.db.cursor().executemany(self._plain_insert, rows)
                if vector is not None:
                    self._set_meta("vector", encode_vector(vector))
        except (sqlite3.IntegrityError, peewee.IntegrityError):
            # another process opened the file and finished the load (see _resume_load): upsert from now on
            self.end_load()
            return super().apply(rows, vector)
        return len(rows)

    # -- snapshot pages: filled and loaded with SQL, rows never become Python objects -------------------------------

    @gen_translated
    def since_pages(self, vector: Mapping[str, int], batch: int = BATCH) -> Iterator[bytes]:
        self.end_load()
        origins = self._origins()
        if not any(vector.get(origin, 0) for origin in origins):
            # a new master: everything, in table order (a plain scan, twice as fast as by origin through the
            # index); each origin's rows are in seq order in it, so the receiver's (origin, seq) index appends
            yield from self._pages("", "id", "rowid", batch)
            return
        for origin in origins:
            yield from self._pages("origin = ? AND ", "seq", "seq", batch, origin, vector.get(origin, 0))

    def _pages(self, where: str, order: str, top: str, batch: int, *params: object) -> Iterator[bytes]:
        """Pages of the rows matching ``where`` (a prefix ending in AND, or ""), paged by column ``order``, which
        the page holds as ``top``; ``params``: the where clause's, then the first value of ``order`` to skip."""
        *fixed, last = params if params else (-1,)
        conn = self.db.connection()
        while True:
            new_page(conn, _OUT)
            # the page's CHECKs are for the receiver (its quick_check enforces them); these rows are our own, checked
            # when they came in, so filling skips them: ~35 % of the sender's time per page
            conn.execute("PRAGMA ignore_check_constraints = ON")
            try:
                conn.execute(
                    f"INSERT INTO {_OUT}.t (rowid, {COLS}) SELECT id, {COLS} FROM {self.table} "
                    f"WHERE {where}{order} > ? ORDER BY {order} LIMIT ?",
                    (*fixed, last, batch),
                )
                count, highest = conn.execute(f"SELECT count(*), max({top}) FROM {_OUT}.t").fetchone()
                image = conn.serialize(name=_OUT) if count else b""
            finally:
                conn.execute("PRAGMA ignore_check_constraints = OFF")
                conn.execute(f"DETACH DATABASE {_OUT}")
            if not count:
                return
            if len(image) > PAGE_BYTES and batch > 1:
                batch = max(1, batch // 4)  # long names: smaller pages
                continue
            last = highest
            yield image

    @translated
    def apply_page(self, data: bytes | memoryview, stale_before: int) -> tuple[int, int]:
        checked = PageCheck(data)  # in parallel with the insert below, which commits only if it passes
        conn = self.db.connection()
        attach(conn, _IN)
        try:
            try:
                deserialize(conn, data, _IN)
                check_schema(conn, _IN)  # before reading t: it must be the plain page table
                count = int(conn.execute(f"SELECT count(*) FROM {_IN}.t").fetchone()[0])
            except (ProtocolError, sqlite3.Error) as exc:
                checked.result()  # its ProtocolError, if it has one, says more
                raise ProtocolError(f"bad snapshot page: {exc}") from exc
            if not count:
                checked.result()
                return 0, 0
            keep = f"FROM {_IN}.t WHERE NOT (deleted = 1 AND hlc < ?)"
            try:  # a damaged page can pass the schema check and fail only when read: then the check says why
                loading = self.load.begin(count)
                try:
                    with self.db.atomic():
                        if loading:
                            conn.execute(f"INSERT INTO {self.table} ({COLS}) SELECT {COLS} {keep}", (stale_before,))
                        else:
                            conn.execute(
                                f"INSERT INTO {self.table} ({COLS}) SELECT {COLS} {keep} ORDER BY holder, name "
                                f"{self._conflict}",
                                (stale_before,),
                            )
                        won = int(conn.execute("SELECT changes()").fetchone()[0])
                        _rows, newest = checked.result()  # ProtocolError: rolled back
                        return won, newest
                except (sqlite3.IntegrityError, peewee.IntegrityError):
                    checked.result()  # a bad page (a NULL, say) first; else another process finished the load:
                    if not self.load.active:
                        raise
                    self.end_load()  # (see _resume_load) upsert instead
                with self.db.atomic():
                    conn.execute(
                        f"INSERT INTO {self.table} ({COLS}) SELECT {COLS} {keep} ORDER BY holder, name "
                        f"{self._conflict}",
                        (stale_before,),
                    )
                    won = int(conn.execute("SELECT changes()").fetchone()[0])
                return won, checked.result()[1]
            except (sqlite3.DatabaseError, peewee.DatabaseError):
                checked.result()  # ProtocolError for a bad page (rolled back, nothing changed)
                raise  # the page is sound: a real store error
        finally:
            with contextlib.suppress(ProtocolError):
                checked.result()  # never leave a check running behind us
            conn.execute(f"DETACH DATABASE {_IN}")

    def release(self) -> None:
        if not self._closed and not self.db.is_closed() and not self.db.in_transaction():
            self.db.close()

    def close(self) -> None:
        if not self._closed:
            try:
                self.end_load()
            except StoreError as exc:
                log.warning("%s", exc)
            self.load.close()
        super().close()
