"""The bulk load of a SQLite store: the first snapshot into an empty store, without its unique key.

A snapshot into an empty store is the one big write: inserting without the unique key and building it once at the
end is about 1.5x faster than indexed upserts (1,000,000 rows, see docs/benchmarks.md). The (origin, seq) index
stays, as snapshots come in that order and its entries only append (cheaper than building it). While loading,
every write is a plain INSERT (a key written twice is kept twice); the load ends before any read that needs the
indexes or the last-writer-wins result: duplicates are then resolved by (hlc, origin) and the unique index
rebuilt, so readers never see the difference (``count`` alone may over-count such a key meanwhile).

The load also skips fsync under a marker file (``index.db.loading``) that makes the half-written file disposable:
:func:`discard_interrupted_load` deletes it on the next open if the load never ended.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overdrive.errors import StoreError
from overdrive.index.stores.sql import peewee

if TYPE_CHECKING:
    from overdrive.index.stores.sqlite import SqliteStore

log = logging.getLogger(__name__)

LOAD_MIN_ROWS = 5000
"""An apply of at least this many rows (without a vector: snapshot rows) into an empty SQLite store bulk-loads."""
CACHE_KIB = 65536
"""SQLite's page cache, per connection."""
SORT_CACHE_KIB = 16384
SORT_THREADS = 2
"""Cache and helper threads while building the unique key after a bulk load."""
TABLES = "SELECT name FROM sqlite_master WHERE type = 'table'"


def marker_of(path: Path) -> Path:
    """The marker file that says ``path`` holds an unsynced load."""
    return path.with_name(path.name + ".loading")


def others(tables: Sequence[str], table: str) -> list[str]:
    """``tables`` less ``table``, its meta table and SQLite's own: those of other indexes (``?prefix=``)."""
    mine = (table, table.removesuffix("records") + "meta")
    return [t for t in tables if t not in mine and not t.startswith("sqlite_")]


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock_marker(marker: Path, fd: int) -> bool:
    """Lock the marker open at ``fd``; False when another process holds it, or when it is no longer the file at
    the marker's path (its load ended, and removed it, between our open and our lock)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    try:
        named = os.stat(marker)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _other_tables(path: Path, table: str) -> list[str]:
    """Tables of the file other than ``table`` (the one loading) and its meta table; [] when it cannot be read
    (a load cut short by a crash can leave it damaged: nothing in it can be kept then)."""
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(path)
        try:
            names = [n for (n,) in conn.execute(TABLES).fetchall()]
        finally:
            conn.close()
    except sqlite3.Error:
        return []
    return others(names, table)


def discard_interrupted_load(path: Path) -> None:
    """Delete the copy an initial sync left half-written (see :meth:`BulkLoad.begin`), unless its master still runs
    or the file holds another index's tables (``?prefix=``), which are never thrown away with it."""
    marker = marker_of(path)
    try:
        fd = os.open(marker, os.O_RDWR)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"cannot open {marker}: {exc.strerror}") from exc
    try:
        if not lock_marker(marker, fd):
            return  # another master is loading this file right now, or has just finished: it is not ours to end
        loading = os.pread(fd, 200, 0).decode(errors="replace").split(" ", 1)[0]
        if _other_tables(path, loading):
            marker.unlink()
            log.warning(
                "SQLite %s: an initial sync of %s was cut short; kept (other tables share the file)", path, loading
            )
            return
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        marker.unlink(missing_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot discard the interrupted sync in {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)
    log.warning("SQLite %s: an initial sync was cut short; its partial copy is discarded, to sync again", path)


class BulkLoad:
    """The bulk-load state of one :class:`~overdrive.index.stores.sqlite.SqliteStore`: whether it is loading, and the
    marker it holds while the load is unsynced. Backend errors propagate; the store translates them."""

    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.db = store.db
        self.path = store.path
        self.marker = marker_of(store.path)
        self.marker_fd = -1
        self.active = False
        """True while loading: writes are plain INSERTs and the unique key is missing."""

    def _fetch(self, sql: str, params: Sequence[object] = ()) -> list[Any]:
        return list(self.db.execute_sql(sql, params).fetchall())

    def cut_short(self) -> bool:
        """True if a bulk load cut short (a crash) left the table without its unique index."""
        master = "SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?"
        table = self.store.table
        return bool(self._fetch(master, ("table", table))) and not self._fetch(master, ("index", f"{table}_hkey"))

    def begin(self, rows: int) -> bool:
        """Start a bulk load if the store is empty and ``rows`` snapshot rows are coming; True if loading now."""
        if self.active:
            return True
        table = self.store.table
        if rows < LOAD_MIN_ROWS or self._fetch(f"SELECT 1 FROM {table} LIMIT 1"):  # noqa: S608 - checked prefix
            return False
        with self.db.atomic():  # (origin, seq) stays: pages come in that order, so its entries only append
            for index in ("hkey", "key", "holder"):
                self.db.execute_sql(f"DROP INDEX IF EXISTS {table}_{index}")
        self._load_unsynced()
        self.active = True
        log.info("%s: empty, bulk loading without indexes", self.store.describe())
        return True

    def end(self) -> None:
        """Resolve keys written twice during the load and build the indexes (no-op when not loading)."""
        if not self.active:
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
        self.active = False
        self._end_unsynced()
        log.info("%s: bulk load done, indexes built", self.store.describe())

    def close(self) -> None:
        """Let go of the marker: a load that did not end durably leaves it, for the next open to discard."""
        if self.marker_fd >= 0:
            os.close(self.marker_fd)
            self.marker_fd = -1

    def _build_key(self) -> None:
        t = self.store.table
        with self.db.atomic():
            try:
                self.db.execute_sql(f"CREATE UNIQUE INDEX IF NOT EXISTS {t}_hkey ON {t} (holder, name)")
            except (sqlite3.IntegrityError, peewee.IntegrityError):
                self.db.execute_sql(
                    f"DELETE FROM {t} WHERE id IN (SELECT id FROM (SELECT id, ROW_NUMBER() OVER "  # noqa: S608
                    f"(PARTITION BY name, holder ORDER BY hlc DESC, origin DESC) AS n FROM {t}) WHERE n > 1)"
                )
                self.db.execute_sql(f"CREATE UNIQUE INDEX {t}_hkey ON {t} (holder, name)")
            for statement in self.store.ddl():
                self.db.execute_sql(statement)

    def _load_unsynced(self) -> None:
        """For the first load into an empty file: skip fsync until it ends, under a marker that says so.

        Without fsync a crash of the machine (not just of this process) could leave the file damaged. The load only
        ever fills an empty store from its peers, so a marker file, made durable first and locked while this process
        lives, says the file is disposable: the next open deletes it if the marker is still there and no live
        process holds it, and the sync starts again. :meth:`_end_unsynced` fsyncs everything, then removes it.
        That takes ~0.4 s off a 1,000,000-entry sync (checkpoint fsyncs, ~10 ms per page; docs/benchmarks.md).

        For the same reason the load keeps its rollback journal in memory instead of the write-ahead log when no
        other connection has the file open (the log is left as it is otherwise): every row and then the key are
        written once, into the file, instead of into the log and again into the file at each checkpoint. A bad page
        still rolls back (the journal holds the pages it changed); a crash mid-load can leave the file damaged,
        which the marker already covers. :meth:`_end_unsynced` returns the file to WAL before it fsyncs.
        """
        if others([n for (n,) in self._fetch(TABLES)], self.store.table):
            return  # other indexes share the file: it is never disposable
        fd = os.open(self.marker, os.O_RDWR | os.O_CREAT, 0o600)
        if not lock_marker(self.marker, fd):
            os.close(fd)  # another process is loading this very file: leave durability as it is
            return
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{self.store.table} initial sync by process {os.getpid()} in progress\n".encode())
            os.fsync(fd)
            _fsync_dir(self.marker.parent)
        except BaseException:
            os.close(fd)
            raise
        self.marker_fd = fd
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
                log.debug("%s: load keeps its write-ahead log: %s", self.store.describe(), exc)
            finally:
                self.db.execute_sql("PRAGMA busy_timeout = 10000")
            return
        now = str(self.db.execute_sql("PRAGMA main.journal_mode = WAL").fetchone()[0]).lower()
        if now != "wal":
            raise StoreError(
                f"{self.store.describe()}: cannot return to WAL after the initial sync (journal mode {now})"
            )

    def _flush_behind(self) -> Callable[[], None] | None:
        """During an unsynced load, start writing the loaded rows to disk (fsync in a thread: it waits on the disk
        with the GIL released) while the key is built on the CPU, so that :meth:`_end_unsynced`'s own fsync, which
        the sync's end waits for, finds little left to write (~0.2 s less at 1,000,000 entries). It proves nothing
        by itself: durability is still :meth:`_end_unsynced`'s, whose errors are the ones reported. Returns what
        waits for the thread and closes its descriptor: call it once the key's transaction has ended, as closing any
        descriptor of the file drops every POSIX lock this process holds on it, SQLite's included."""
        if self.marker_fd < 0:
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
        if self.marker_fd < 0:
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
        self.marker.unlink(missing_ok=True)
        _fsync_dir(self.marker.parent)
        os.close(self.marker_fd)
        self.marker_fd = -1
