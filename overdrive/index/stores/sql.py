"""SQL stores through peewee: SQLite (the default, WAL mode) and MySQL/MariaDB (through pymysql).

Both use the same table layout and the same statements apart from the last-writer-wins upsert, which each
dialect spells its own way. Bulk writes go through the DB-API ``executemany`` on peewee's connection inside one
peewee transaction, which is what makes 20,000+ updates/s possible; reads page by primary key so no cursor stays
open across the master's event loop.
"""

# ruff: noqa: S608 - table names come from a prefix checked against PREFIX_RE; values are always parameters
from __future__ import annotations

import contextlib
import fcntl
import logging
import operator
import os
import re
import sqlite3
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import wraps
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import peewee
import pymysql

from overdrive.errors import StoreError
from overdrive.index.pages import PAGE_BYTES, PageCheck, attach, check_schema, new_page
from overdrive.index.records import Record, RecordRow, key_id
from overdrive.index.stores.base import BATCH, BUCKETS, Store, checksum, encode_vector, to_record

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

COLUMNS = ("name", "size", "content_hash", "holder", "address", "mtime_ns", "origin", "seq", "hlc", "deleted")
_COLS = ", ".join(COLUMNS)
_WINS = "{new}hlc > {old}hlc OR ({new}hlc = {old}hlc AND {new}origin > {old}origin)"
LOAD_MIN_ROWS = 5000
"""An apply of at least this many rows (without a vector: snapshot rows) into an empty SQLite store bulk-loads."""
CACHE_KIB = 65536
"""SQLite's page cache, per connection."""
SORT_CACHE_KIB = 16384
SORT_THREADS = 2
"""Cache and helper threads while building the unique key after a bulk load."""
_OUT = "overdrive_page_out"
_IN = "overdrive_page_in"
"""Schema names of the snapshot pages being filled (sender) and loaded (receiver)."""
PREFIX_RE = re.compile(r"^[a-z0-9_]{0,32}$")
_DB_ERRORS: tuple[type[BaseException], ...] = (peewee.PeeweeException, sqlite3.Error, pymysql.err.Error, OSError)


def _first_cause(exc: BaseException) -> BaseException:
    """The error that says why: a COMMIT that fails (a full disk) makes SQLite roll back by itself, and peewee's own
    ROLLBACK then fails with "no transaction is active", which says nothing of the reason; the COMMIT's error is
    the one it was raised while handling. Any other error is its own reason (an earlier one it was raised while
    handling, an IntegrityError caught on purpose say, is not)."""
    while "no transaction is active" in str(exc) and isinstance(exc.__context__, _DB_ERRORS):
        exc = exc.__context__
    return exc


def _translated(fn: Callable[P, T]) -> Callable[P, T]:
    """Turn backend exceptions into StoreError naming the store."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except _DB_ERRORS as exc:
            store = args[0]
            raise StoreError(f"{store.describe()}: {_first_cause(exc)}") from exc  # type: ignore[attr-defined]

    return wrapper


def _gen_translated(fn: Callable[P, Iterator[T]]) -> Callable[P, Iterator[T]]:
    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> Iterator[T]:
        try:
            yield from fn(*args, **kwargs)
        except _DB_ERRORS as exc:
            store = args[0]
            raise StoreError(f"{store.describe()}: {_first_cause(exc)}") from exc  # type: ignore[attr-defined]

    return wrapper


_key_order = operator.itemgetter(3, 0)
"""(holder, name): the order of SQLite's unique key; MySQL keys a hash, where no order helps."""


def _rows(page: list[Any]) -> list[RecordRow]:
    """DB rows as record rows (SQL gives ``deleted`` as 0/1; the wire wants a bool)."""
    return [(*r[:9], r[9] == 1) for r in page]


def key_hex(holder: str, name: str) -> str:
    return key_id(holder, name).hex()


class SqlStore(Store):
    """Shared SQL logic; subclasses give the database, DDL and upsert."""

    param = "?"

    def mod(self, expr: str, n: int) -> str:
        """``expr`` modulo ``n`` in this dialect (``%`` is a parameter marker for pymysql)."""
        return f"({expr} % {n})"

    def __init__(self, db: peewee.Database, prefix: str = "") -> None:
        if not PREFIX_RE.match(prefix):
            raise StoreError(f"table prefix {prefix!r} must be up to 32 of a-z, 0-9, _")
        self.db: Any = db  # peewee is untyped
        self.table = f"{prefix}records"
        self.meta = f"{prefix}meta"
        p = self.param
        marks = ", ".join([p] * len(COLUMNS))
        self._insert = self.upsert_sql(marks)
        self._select = f"SELECT {_COLS} FROM {self.table}"
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

    @_translated
    def _setup(self) -> None:
        self.db.connect(reuse_if_open=True)
        with self.db.atomic():
            for statement in self.ddl():
                self.db.execute_sql(statement)

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return list(self.db.execute_sql(sql, params).fetchall())

    @_translated
    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        with self.db.atomic():
            changed = 0
            if rows:
                cursor = self.db.cursor()
                # in key order: B-tree inserts with locality are markedly faster on big batches
                ordered = sorted(rows, key=_key_order) if len(rows) > 64 else rows
                cursor.executemany(self._insert, self.prepare(ordered))
                changed = max(cursor.rowcount, 0)
            if vector is not None:
                self._set_meta("vector", encode_vector(vector))
        return changed

    @_translated
    def get(self, holder: str, name: str) -> Record | None:
        p = self.param
        found = self._fetch(f"{self._select} WHERE holder = {p} AND name = {p}", (holder, name))
        return to_record(found[0]) if found else None

    @_gen_translated
    def rows(self, batch: int = BATCH) -> Iterator[list[RecordRow]]:
        p = self.param
        last = -1
        while True:
            page = self._fetch(
                f"SELECT id, {_COLS} FROM {self.table} WHERE id > {p} ORDER BY id LIMIT {p}", (last, batch)
            )
            if not page:
                return
            last = page[-1][0]
            yield [(*r[1:10], r[10] == 1) for r in page]

    @_gen_translated
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
                last = page[-1][7]
                yield _rows(page)

    def _origins(self) -> list[str]:
        """The origins that have rows here."""
        return [r[0] for r in self._fetch(f"SELECT DISTINCT origin FROM {self.table}")]

    @_gen_translated
    def bucket_rows(self, buckets: Sequence[int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        wanted = sorted({int(b) % BUCKETS for b in buckets})
        if not wanted:
            return
        listed = ", ".join(str(b) for b in wanted)
        p = self.param
        last = -1
        while True:
            page = self._fetch(
                f"SELECT id, {_COLS} FROM {self.table} WHERE id > {p} AND {self.mod('seq', BUCKETS)} IN ({listed}) "
                f"ORDER BY id LIMIT {p}",
                (last, batch),
            )
            if not page:
                return
            last = page[-1][0]
            yield [(*r[1:10], r[10] == 1) for r in page]

    @_translated
    def checksums(self) -> list[int]:
        found = self._fetch(
            f"SELECT {self.mod('seq', BUCKETS)}, COUNT(*), SUM({self.mod('hlc', 1 << 32)}), SUM(seq), SUM(deleted) "
            f"FROM {self.table} GROUP BY {self.mod('seq', BUCKETS)}"
        )
        out = [0] * BUCKETS
        for bucket, count, hsum, ssum, dsum in found:
            out[int(bucket)] = checksum(int(count), int(hsum), int(ssum), int(dsum))
        return out

    @_translated
    def holder_rows(self, holder: str) -> list[RecordRow]:
        return _rows(self._fetch(f"{self._select} WHERE holder = {self.param}", (holder,)))

    @_translated
    def named_rows(self, holder: str, names: Sequence[str]) -> list[RecordRow]:
        p = self.param
        out: list[RecordRow] = []
        unique = sorted(set(names))
        for start in range(0, len(unique), 500):
            chunk = unique[start : start + 500]
            marks = ", ".join([p] * len(chunk))
            out += _rows(self._fetch(f"{self._select} WHERE holder = {p} AND name IN ({marks})", (holder, *chunk)))
        return out

    @_translated
    def purge(self, before_hlc: int) -> int:
        with self.db.atomic():
            cursor = self.db.execute_sql(
                f"DELETE FROM {self.table} WHERE deleted = 1 AND hlc < {self.param}", (before_hlc,)
            )
            return max(int(cursor.rowcount), 0)

    @_translated
    def get_meta(self, key: str) -> str | None:
        found = self._fetch(f"SELECT v FROM {self.meta} WHERE k = {self.param}", (key,))
        return str(found[0][0]) if found else None

    def _set_meta(self, key: str, value: str) -> None:
        p = self.param
        self.db.execute_sql(f"REPLACE INTO {self.meta} (k, v) VALUES ({p}, {p})", (key, value))

    @_translated
    def set_meta(self, key: str, value: str) -> None:
        with self.db.atomic():
            self._set_meta(key, value)

    @_translated
    def count(self) -> int:
        return int(self._fetch(f"SELECT COUNT(*) FROM {self.table} WHERE deleted = 0")[0][0])

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
        except _DB_ERRORS as exc:
            raise StoreError(f"{self.describe()}: {exc}") from exc
        for row in found:
            yield to_record(row)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.db.close()
            except _DB_ERRORS as exc:
                log.debug("closing %s: %s", self.describe(), exc)


class SqliteStore(SqlStore):
    """The embedded default: one SQLite file in WAL mode."""

    param = "?"

    def __init__(self, path: Path, prefix: str = "") -> None:
        self.path = Path(path).expanduser()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create folder for SQLite database {self.path}: {exc.strerror}") from exc
        self._marker = self.path.with_name(self.path.name + ".loading")
        self._marker_fd = -1
        self._discard_interrupted_load()
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
        self._loading = False
        self._plain_insert = f"INSERT INTO {self.table} ({_COLS}) VALUES ({', '.join('?' * len(COLUMNS))})"
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

    def _discard_interrupted_load(self) -> None:
        """Delete the copy an initial sync left half-written (see :meth:`_begin_load`), unless its master still runs
        or the file holds another index's tables (``?prefix=``), which are never thrown away with it."""
        try:
            fd = os.open(self._marker, os.O_RDWR)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StoreError(f"cannot open {self._marker}: {exc.strerror}") from exc
        try:
            if not self._lock_marker(fd):
                return  # another master is loading this file right now, or has just finished: it is not ours to end
            loading = os.pread(fd, 200, 0).decode(errors="replace").split(" ", 1)[0]
            if self._other_tables(loading):
                self._marker.unlink()
                log.warning(
                    "SQLite %s: an initial sync of %s was cut short; kept (other tables share the file)",
                    self.path,
                    loading,
                )
                return
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._marker.unlink(missing_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot discard the interrupted sync in {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)
        log.warning("SQLite %s: an initial sync was cut short; its partial copy is discarded, to sync again", self.path)

    def _lock_marker(self, fd: int) -> bool:
        """Lock the marker open at ``fd``; False when another process holds it, or when it is no longer the file at
        the marker's path (its load ended, and removed it, between our open and our lock)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            named = os.stat(self._marker)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def _other_tables(self, table: str) -> list[str]:
        """Tables of the file other than ``table`` (the one loading) and its meta table; [] when it cannot be read
        (a load cut short by a crash can leave it damaged: nothing in it can be kept then)."""
        if not self.path.exists():
            return []
        try:
            conn = sqlite3.connect(self.path)
            try:
                names = [n for (n,) in conn.execute(_TABLES).fetchall()]
            finally:
                conn.close()
        except sqlite3.Error:
            return []
        return _others(names, table)

    def _load_unsynced(self) -> None:
        """For the first load into an empty file: skip fsync until it ends, under a marker that says so.

        Without fsync a crash of the machine (not just of this process) could leave the file damaged. The load only
        ever fills an empty store from its peers, so a marker file, made durable first and locked while this process
        lives, says the file is disposable: the next open deletes it if the marker is still there and no live
        process holds it, and the sync starts again. :meth:`_end_unsynced` fsyncs everything, then removes it.
        Measured on the benchmark machine: ~0.4 s off a 1,000,000-entry sync (checkpoint fsyncs, ~10 ms per page).

        For the same reason the load keeps its rollback journal in memory instead of the write-ahead log when no
        other connection has the file open (the log is left as it is otherwise): every row and then the key are
        written once, into the file, instead of into the log and again into the file at each checkpoint. A bad page
        still rolls back (the journal holds the pages it changed); a crash mid-load can leave the file damaged,
        which the marker already covers. :meth:`_end_unsynced` returns the file to WAL before it fsyncs.
        """
        if _others([n for (n,) in self._fetch(_TABLES)], self.table):
            return  # other indexes share the file: it is never disposable
        fd = os.open(self._marker, os.O_RDWR | os.O_CREAT, 0o600)
        if not self._lock_marker(fd):
            os.close(fd)  # another process is loading this very file: leave durability as it is
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{self.table} initial sync by process {os.getpid()} in progress\n".encode())
            os.fsync(fd)
            _fsync_dir(self._marker.parent)
        except BaseException:
            os.close(fd)
            raise
        self._marker_fd = fd
        self.db.execute_sql("PRAGMA synchronous = OFF")
        self._journal("memory")

    def _journal(self, mode: str) -> None:
        """Switch the journal to ``mode``: ``memory`` for an unsynced load, if no other connection has the file open
        (it needs the file alone: it does not wait, and keeps WAL otherwise); ``wal`` when the load ends, waiting
        like any write, and raising StoreError if the file stays in another mode."""
        if mode == "memory":
            self.db.execute_sql("PRAGMA busy_timeout = 0")
            try:
                self.db.execute_sql("PRAGMA main.journal_mode = MEMORY")
            except (sqlite3.OperationalError, peewee.OperationalError) as exc:
                log.debug("%s: load keeps its write-ahead log: %s", self.describe(), exc)
            finally:
                self.db.execute_sql("PRAGMA busy_timeout = 10000")
            return
        now = str(self.db.execute_sql("PRAGMA main.journal_mode = WAL").fetchone()[0]).lower()
        if now != "wal":
            raise StoreError(f"{self.describe()}: cannot return to WAL after the initial sync (journal mode {now})")

    def _flush_behind(self) -> Callable[[], None] | None:
        """During an unsynced load, start writing the loaded rows to disk (fsync in a thread: it waits on the disk
        with the GIL released) while the key is built on the CPU, so that :meth:`_end_unsynced`'s own fsync, which
        the sync's end waits for, finds little left to write (~0.2 s less at 1,000,000 entries). It proves nothing
        by itself: durability is still :meth:`_end_unsynced`'s, whose errors are the ones reported. Returns what
        waits for the thread and closes its descriptor: call it once the key's transaction has ended, as closing any
        descriptor of the file drops every POSIX lock this process holds on it, SQLite's included."""
        if self._marker_fd < 0:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None

        def flush() -> None:
            with contextlib.suppress(OSError):
                os.fsync(fd)

        thread = threading.Thread(target=flush, name="overdrive-flush", daemon=True)
        thread.start()

        def done() -> None:
            thread.join()
            os.close(fd)

        return done

    def _end_unsynced(self) -> None:
        """Make the finished load durable (fsync the file and its log), then remove the marker."""
        if self._marker_fd < 0:
            return
        self._journal("wal")  # raises if it cannot: the marker then stays, and the next open discards the load
        self.db.execute_sql("PRAGMA synchronous = NORMAL")
        for suffix in ("", "-wal"):
            try:
                fd = os.open(f"{self.path}{suffix}", os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        self._marker.unlink(missing_ok=True)
        _fsync_dir(self._marker.parent)
        os.close(self._marker_fd)
        self._marker_fd = -1

    @_translated
    def _resume_load(self) -> None:
        """A bulk load cut short (a crash) leaves the table without its unique index: finish that load first."""
        self.db.connect(reuse_if_open=True)
        master = "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?"
        if self._fetch(master, ("table", self.table)) and not self._fetch(master, ("index", f"{self.table}_hkey")):
            self._loading = True
            self.end_load()

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
        return f"INSERT INTO {self.table} ({_COLS}) VALUES ({marks}) {self._conflict}"

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

    # -- bulk load into an empty store ---------------------------------------------------------------------------
    # A snapshot into an empty store is the one big write: inserting without the unique key and building it once
    # at the end is about 1.5x faster than indexed upserts (1,000,000 rows, see docs/benchmarks.md). The (origin,
    # seq) index stays, as snapshots come in that order and its entries only append (cheaper than building it). While
    # loading, every write is a plain INSERT (a key written twice is kept twice); the load ends before any read
    # that needs the indexes or the last-writer-wins result: duplicates are then resolved by (hlc, origin) and the
    # unique index rebuilt, so readers never see the difference (``count`` alone may over-count such a key
    # meanwhile).

    @_translated
    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        if not self._loading and (vector is not None or not self._begin_load(len(rows))):
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

    def _begin_load(self, rows: int) -> bool:
        """Start a bulk load if the store is empty and ``rows`` snapshot rows are coming; True if loading now."""
        if self._loading:
            return True
        if rows < LOAD_MIN_ROWS or self._fetch(f"SELECT 1 FROM {self.table} LIMIT 1"):
            return False
        with self.db.atomic():  # (origin, seq) stays: pages come in that order, so its entries only append
            for index in ("hkey", "key", "holder"):
                self.db.execute_sql(f"DROP INDEX IF EXISTS {self.table}_{index}")
        self._load_unsynced()
        self._loading = True
        log.info("%s: empty, bulk loading without indexes", self.describe())
        return True

    # -- snapshot pages: filled and loaded with SQL, rows never become Python objects -------------------------------

    @_gen_translated
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
                    f"INSERT INTO {_OUT}.t (rowid, {_COLS}) SELECT id, {_COLS} FROM {self.table} "
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

    @_translated
    def apply_page(self, data: bytes | memoryview, stale_before: int) -> tuple[int, int]:
        checked = PageCheck(data)  # in parallel with the insert below, which commits only if it passes
        conn = self.db.connection()
        attach(conn, _IN)
        try:
            try:
                conn.deserialize(data, name=_IN)
                check_schema(conn, _IN)  # before reading t: it must be the plain page table
                count = int(conn.execute(f"SELECT count(*) FROM {_IN}.t").fetchone()[0])
            except (ValueError, sqlite3.Error) as exc:
                checked.result()  # its ValueError, if it has one, says more
                raise ValueError(f"bad snapshot page: {exc}") from exc
            if not count:
                checked.result()
                return 0, 0
            keep = f"FROM {_IN}.t WHERE NOT (deleted = 1 AND hlc < ?)"
            try:  # a damaged page can pass the schema check and fail only when read: then the check says why
                loading = self._begin_load(count)
                try:
                    with self.db.atomic():
                        if loading:
                            conn.execute(f"INSERT INTO {self.table} ({_COLS}) SELECT {_COLS} {keep}", (stale_before,))
                        else:
                            conn.execute(
                                f"INSERT INTO {self.table} ({_COLS}) SELECT {_COLS} {keep} ORDER BY holder, name "
                                f"{self._conflict}",
                                (stale_before,),
                            )
                        won = int(conn.execute("SELECT changes()").fetchone()[0])
                        _rows, newest = checked.result()  # ValueError: rolled back
                        return won, newest
                except (sqlite3.IntegrityError, peewee.IntegrityError):
                    checked.result()  # a bad page (a NULL, say) first; else another process finished the load:
                    if not self._loading:
                        raise
                    self.end_load()  # (see _resume_load) upsert instead
                with self.db.atomic():
                    conn.execute(
                        f"INSERT INTO {self.table} ({_COLS}) SELECT {_COLS} {keep} ORDER BY holder, name "
                        f"{self._conflict}",
                        (stale_before,),
                    )
                    won = int(conn.execute("SELECT changes()").fetchone()[0])
                return won, checked.result()[1]
            except (sqlite3.DatabaseError, peewee.DatabaseError):
                checked.result()  # ValueError for a bad page (rolled back, nothing changed)
                raise  # the page is sound: a real store error
        finally:
            with contextlib.suppress(ValueError):
                checked.result()  # never leave a check running behind us
            conn.execute(f"DETACH DATABASE {_IN}")

    @_translated
    def end_load(self) -> None:
        """Resolve keys written twice during a bulk load and build the indexes (no-op when not loading)."""
        if not self._loading:
            return
        # SQLite sorts for CREATE INDEX with helper threads only once the keys outgrow the cache, in sorted runs
        # it merges: a smaller cache and two threads build a 1M-entry key in ~0.85 s instead of ~1.2 s
        self.db.execute_sql(f"PRAGMA cache_size = -{SORT_CACHE_KIB}")
        self.db.execute_sql(f"PRAGMA threads = {SORT_THREADS}")
        flushed = self._flush_behind()
        try:
            self._build_key()
        finally:
            if flushed is not None:
                flushed()
            self.db.execute_sql("PRAGMA threads = 0")
            self.db.execute_sql(f"PRAGMA cache_size = -{CACHE_KIB}")
        self._loading = False
        self._end_unsynced()
        log.info("%s: bulk load done, indexes built", self.describe())

    def _build_key(self) -> None:
        t = self.table
        with self.db.atomic():
            try:
                self.db.execute_sql(f"CREATE UNIQUE INDEX IF NOT EXISTS {t}_hkey ON {t} (holder, name)")
            except (sqlite3.IntegrityError, peewee.IntegrityError):
                self.db.execute_sql(
                    f"DELETE FROM {t} WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "
                    f"(PARTITION BY name, holder ORDER BY hlc DESC, origin DESC) AS n FROM {t}) WHERE n > 1)"
                )
                self.db.execute_sql(f"CREATE UNIQUE INDEX {t}_hkey ON {t} (holder, name)")
            for statement in self.ddl():
                self.db.execute_sql(statement)

    def get(self, holder: str, name: str) -> Record | None:
        self.end_load()
        return super().get(holder, name)

    def rows(self, batch: int = BATCH) -> Iterator[list[RecordRow]]:
        self.end_load()
        return super().rows(batch)

    def since(self, vector: Mapping[str, int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        self.end_load()
        return super().since(vector, batch)

    def bucket_rows(self, buckets: Sequence[int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        self.end_load()
        return super().bucket_rows(buckets, batch)

    def checksums(self) -> list[int]:
        self.end_load()
        return super().checksums()

    def holder_rows(self, holder: str) -> list[RecordRow]:
        self.end_load()
        return super().holder_rows(holder)

    def named_rows(self, holder: str, names: Sequence[str]) -> list[RecordRow]:
        self.end_load()
        return super().named_rows(holder, names)

    def purge(self, before_hlc: int) -> int:
        self.end_load()
        return super().purge(before_hlc)

    def set_meta(self, key: str, value: str) -> None:
        self.end_load()  # the end of a sync saves the vector
        super().set_meta(key, value)

    def find(
        self,
        name: str = "",
        *,
        glob: bool = False,
        content_hash: str | None = None,
        include_deleted: bool = False,
    ) -> Iterator[Record]:
        self.end_load()
        return super().find(name, glob=glob, content_hash=content_hash, include_deleted=include_deleted)

    def release(self) -> None:
        if not self._closed and not self.db.is_closed() and not self.db.in_transaction():
            self.db.close()

    def close(self) -> None:
        if not self._closed:
            try:
                self.end_load()
            except StoreError as exc:
                log.warning("%s", exc)
            if self._marker_fd >= 0:  # the load did not end durably: the marker stays, for the next open to discard
                os.close(self._marker_fd)
                self._marker_fd = -1
        super().close()


_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"


def _others(tables: Sequence[str], table: str) -> list[str]:
    """``tables`` less ``table``, its meta table and SQLite's own: those of other indexes (``?prefix=``)."""
    mine = (table, table.removesuffix("records") + "meta")
    return [t for t in tables if t not in mine and not t.startswith("sqlite_")]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class MySqlStore(SqlStore):
    """MySQL or MariaDB through pymysql; creates its tables on first use."""

    param = "%s"

    def mod(self, expr: str, n: int) -> str:
        return f"MOD({expr}, {n})"

    def __init__(self, database: str, *, user: str, password: str, host: str, port: int, prefix: str = "") -> None:
        self.where = f"{user}@{host}:{port}/{database}"
        db = peewee.MySQLDatabase(
            database,
            user=user,
            password=password,
            host=host,
            port=port,
            charset="utf8mb4",
            connect_timeout=5,
        )
        super().__init__(db, prefix)
        try:
            self._setup()
        except StoreError as exc:
            cause = exc.__cause__
            code = cause.args[0] if cause is not None and cause.args else None
            if code in (2003, 2005, 2006, 2013):
                raise StoreError(f"cannot reach MySQL at {host}:{port}: {cause}") from cause
            if code in (1044, 1045, 1049):
                raise StoreError(f"MySQL at {host}:{port} refused {self.where}: {cause}") from cause
            raise

    def upsert_sql(self, marks: str) -> str:
        wins = "VALUES(hlc) > hlc OR (VALUES(hlc) = hlc AND VALUES(origin) > origin)"
        # origin and hlc last: MySQL evaluates assignments left to right against the updated row
        order = ["size", "content_hash", "address", "mtime_ns", "seq", "deleted", "origin", "hlc"]
        sets = ", ".join(f"{c} = IF({wins}, VALUES({c}), {c})" for c in order)
        return f"INSERT INTO {self.table} ({_COLS}, kid) VALUES ({marks}, %s) ON DUPLICATE KEY UPDATE {sets}"

    def prepare(self, rows: Sequence[RecordRow]) -> Sequence[Sequence[object]]:
        # the unique key: (holder, name) is too long for an InnoDB index, so index a hash of it
        return [(*r, key_hex(r[3], r[0])) for r in rows]

    def ddl(self) -> list[str]:
        t = self.table
        return [
            f"CREATE TABLE IF NOT EXISTS {t} (id BIGINT AUTO_INCREMENT PRIMARY KEY, "
            "name VARCHAR(4096) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL, size BIGINT NOT NULL, "
            "content_hash CHAR(64) NOT NULL, holder CHAR(16) NOT NULL, "
            "address VARCHAR(300) NOT NULL, mtime_ns BIGINT NOT NULL, origin CHAR(16) NOT NULL, "
            "seq BIGINT NOT NULL, hlc BIGINT NOT NULL, deleted TINYINT NOT NULL, "
            "kid CHAR(32) NOT NULL, "
            f"UNIQUE KEY {t}_key (kid), KEY {t}_origin_seq (origin, seq), KEY {t}_name (name(191)), "
            f"KEY {t}_holder (holder)) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin",
            f"CREATE TABLE IF NOT EXISTS {self.meta} (k VARCHAR(64) PRIMARY KEY, v LONGTEXT NOT NULL) "
            "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        ]

    def describe(self) -> str:
        return f"MySQL {self.where}"
