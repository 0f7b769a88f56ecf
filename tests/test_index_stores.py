"""One store test suite, run against every backend: SQLite, MySQL (real MariaDB) and Firestore (emulator)."""

from __future__ import annotations

import fcntl
import itertools
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from overdrive.errors import ConfigError, ProtocolError, StoreError
from overdrive.index.pages import PAGE_COLUMNS, PAGE_TABLE, decode_page, encode_page
from overdrive.index.records import RecordRow, decode_rows, encode_rows
from overdrive.index.stores import BUCKETS, Store, open_store, sqlite_load
from overdrive.index.stores.base import row_checksums
from overdrive.index.stores.memory import MemoryStore
from overdrive.index.stores.sqlite import SqliteStore

HOLDER = "holderaaaaaaaaaa"
OTHER = "holderbbbbbbbbbb"
ORIGIN = "originaaaaaaaaaa"
ORIGIN2 = "originbbbbbbbbbb"
_prefixes = itertools.count()
HLC0 = 1_790_000_000_000 << 16  # realistic stamps and mtimes are above 2**53
MTIME = 1_790_000_000_123_456_789


def row(
    name: str,
    *,
    holder: str = HOLDER,
    origin: str = ORIGIN,
    seq: int = 1,
    hlc: int = 100,
    deleted: bool = False,
    size: int = 1,
) -> RecordRow:
    return (name, size, f"{size:064x}", holder, "127.0.0.1:7772", MTIME, origin, seq, HLC0 + hlc, deleted)


def _url(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> str:
    """The URL of a new store of ``backend`` (starting the service it needs)."""
    prefix = f"t{next(_prefixes)}_"
    if backend == "sqlite":
        return f"sqlite://{tmp_path / 'index.db'}"
    if backend == "mysql":
        return f"{request.getfixturevalue('mariadb').url}?prefix={prefix}"
    if backend == "firestore":
        request.getfixturevalue("firestore")
        return f"firestore://overdrive-test?prefix={prefix}"
    return "memory://test"


@pytest.fixture(params=["sqlite", "mysql", "firestore", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    opened = open_store(_url(request, request.param, tmp_path))
    yield opened
    opened.close()


def test_apply_is_last_writer_wins_in_any_order(store: Store) -> None:
    old, new = row("a", seq=1, hlc=100, size=1), row("a", origin=ORIGIN2, seq=1, hlc=200, size=2)
    tie = row("a", origin=ORIGIN, seq=2, hlc=200, size=3)  # same hlc, smaller origin: loses to `new`
    assert store.apply([new]) == 1
    store.apply([old, tie])
    got = store.get(HOLDER, "a")
    assert got is not None and got.size == 2 and got.origin == ORIGIN2
    assert store.apply([new]) == 0 or store.get(HOLDER, "a") == got  # idempotent


def test_keys_are_holder_and_name_and_names_are_exact(store: Store) -> None:
    names = ["Lectures/Week 1.mp4", "lectures/week 1.mp4", "日本語/ファイル.txt", "deep/" * 50 + "x"]
    store.apply([row(n, seq=i + 1) for i, n in enumerate(names)] + [row(names[0], holder=OTHER, seq=9)])
    assert store.count() == 5
    assert sorted(r.holder for r in store.find(names[0])) == [HOLDER, OTHER]
    assert [r.name for r in store.find(names[1])] == [names[1]]
    assert [r.name for r in store.find("*.txt", glob=True)] == ["日本語/ファイル.txt"]
    assert [r.name for r in store.find(names[3], content_hash=f"{1:064x}")] == [names[3]]
    assert list(store.find(names[3], content_hash="f" * 64)) == []


def test_tombstones_hide_entries_and_are_purged(store: Store) -> None:
    store.apply([row("a", seq=1, hlc=100), row("b", seq=2, hlc=100)])
    store.apply([row("a", seq=3, hlc=150, deleted=True)])
    assert store.count() == 1
    assert list(store.find("a")) == []
    assert [r.deleted for r in store.find("a", include_deleted=True)] == [True]
    assert store.purge(before_hlc=HLC0 + 160) == 1
    assert store.get(HOLDER, "a") is None and store.get(HOLDER, "b") is not None


def test_vector_is_saved_with_the_batch_and_meta_persists(store: Store) -> None:
    store.apply([row("a")], {ORIGIN: 1, ORIGIN2: 7})
    assert store.load_vector() == {ORIGIN: 1, ORIGIN2: 7}
    store.set_meta("origin", ORIGIN)
    assert store.get_meta("origin") == ORIGIN
    assert store.get_meta("missing") is None


def test_since_returns_rows_above_the_vector_in_batches(store: Store) -> None:
    rows = [row(f"f{i}", seq=i + 1, hlc=1000 + i) for i in range(50)]
    rows += [row(f"g{i}", origin=ORIGIN2, seq=i + 1, hlc=2000 + i) for i in range(20)]
    store.apply(rows)
    batches = list(store.since({ORIGIN: 45, ORIGIN2: 0}, batch=7))
    assert all(len(b) <= 7 for b in batches)
    got = sorted(r[0] for b in batches for r in b)
    assert got == sorted([f"f{i}" for i in range(45, 50)] + [f"g{i}" for i in range(20)])
    everything = [r for b in store.since({}, batch=16) for r in b]
    assert len(everything) == 70
    assert sorted(decode_rows(encode_rows(everything))) == sorted(rows)  # rows go on the wire as they come out
    assert sorted(r[0] for b in store.rows(batch=9) for r in b) == sorted(r[0] for r in rows)


def test_checksums_match_between_stores_with_the_same_versions(store: Store) -> None:
    rows = [row(f"f{i}", seq=i + 1, hlc=1000 + i, deleted=i % 5 == 0) for i in range(300)]
    store.apply(rows[::-1])
    sums = store.checksums()
    assert len(sums) == BUCKETS
    assert sums == row_checksums(rows)
    store.apply([row("f7", seq=999, hlc=5000)])
    changed = [i for i, (a, b) in enumerate(zip(sums, store.checksums(), strict=True)) if a != b]
    assert changed == sorted({8 % BUCKETS, 999 % BUCKETS})  # f7 had seq 8
    repaired = [r for b in store.bucket_rows(changed) for r in b]
    assert {r[7] % BUCKETS for r in repaired} <= set(changed) and any(r[0] == "f7" for r in repaired)


def test_holder_rows_and_describe(store: Store) -> None:
    store.apply([row("a", seq=1), row("b", holder=OTHER, seq=2)])
    assert [r[0] for r in store.holder_rows(OTHER)] == ["b"]
    store.apply([row(f"n{i}", holder=OTHER, seq=10 + i) for i in range(700)])
    wanted = [f"n{i}" for i in range(0, 700, 3)] + ["missing", "a"]
    assert sorted(r[0] for r in store.named_rows(OTHER, wanted)) == sorted(wanted[:-2])
    text = store.describe()
    assert text and "password" not in text.lower()


_SQL_MODULES = ["peewee", "pymysql", "overdrive.index.stores.sql"]
_FIRESTORE_MODULES = ["firebase_admin", "google.cloud.firestore", "overdrive.index.stores.firestore"]


@pytest.mark.parametrize(
    ("backend", "foreign"),
    [
        ("sqlite", ["pymysql", "MySQLdb", "overdrive.index.stores.mysql", *_FIRESTORE_MODULES]),
        ("mysql", ["overdrive.index.stores.sqlite", *_FIRESTORE_MODULES]),
        ("firestore", _SQL_MODULES),
        ("memory", [*_SQL_MODULES, *_FIRESTORE_MODULES]),
    ],
)
def test_a_store_imports_only_its_own_backend(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, foreign: list[str]
) -> None:
    # a master loads the driver of the store it uses, not every backend's (a fresh interpreter: this one has them)
    url = _url(request, backend, tmp_path)
    code = textwrap.dedent(
        """
        import sys
        from overdrive.index.stores import open_store
        with open_store(sys.argv[1]) as store:
            store.apply([("a", 1, "0" * 64, "holderaaaaaaaaaa", "127.0.0.1:7772", 1, "originaaaaaaaaaa", 1, 1, False)])
            assert store.get("holderaaaaaaaaaa", "a") is not None
        print(" ".join(name for name in sys.argv[2:] if name in sys.modules), flush=True)
        if sys.argv[1].startswith("sqlite:"):  # a MySQL store opened afterwards still gets the driver peewee skipped
            from overdrive.index.stores.mysql import MySqlStore
            import peewee
            assert peewee.mysql is sys.modules["pymysql"]
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", code, url, *foreign], cwd=root, capture_output=True, text=True, check=False
    )
    assert done.stdout.split() == [], "imported another backend's modules"
    assert done.returncode == 0, done.stderr


def test_bad_urls_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="scheme"):
        open_store("postgres://x/y")
    with pytest.raises(ConfigError):
        open_store("index.db")
    with pytest.raises(StoreError, match=r"cannot reach MySQL at 127\.0\.0\.1:1\b"):
        open_store("mysql://u:secret@127.0.0.1:1/db")
    try:
        open_store("mysql://u:secret@127.0.0.1:1/db")
    except StoreError as exc:
        assert "secret" not in str(exc)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(StoreError):
        open_store(f"sqlite://{blocker}/sub/index.db")


def test_sqlite_data_survives_reopening(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'x.db'}"
    with open_store(url) as first:
        first.apply([row("kept")], {ORIGIN: 1})
    with open_store(url) as second:
        assert second.get(HOLDER, "kept") is not None and second.load_vector() == {ORIGIN: 1}


def _snapshot_batches() -> list[list[RecordRow]]:
    """Snapshot-sized batches (big enough for SQLite's bulk load) in which some keys come twice, in any order."""
    first = [row(f"bulk/{i}", seq=i + 1, hlc=100 + i, size=i % 7) for i in range(6000)]
    # a newer version of bulk/3, an older one of bulk/4 (loses), a same-hlc bigger origin for bulk/5 (wins)
    again = [
        row("bulk/3", origin=ORIGIN2, seq=1, hlc=10_000, size=50),
        row("bulk/4", origin=ORIGIN2, seq=2, hlc=1, size=51),
        row("bulk/5", origin=ORIGIN2, seq=3, hlc=105, size=52, deleted=True),
    ] + [row(f"more/{i}", origin=ORIGIN2, seq=10 + i, hlc=50) for i in range(5000)]
    return [first, again]


def test_sqlite_bulk_load_into_empty_store_is_last_writer_wins(tmp_path: Path) -> None:
    reference = open_store("memory://")
    with open_store(f"sqlite://{tmp_path / 'bulk.db'}") as store:
        for batch in _snapshot_batches():
            store.apply(batch)
            reference.apply(batch)
        store.apply([row("live", seq=99, hlc=20_000)], {ORIGIN: 99})  # a live update during the load
        reference.apply([row("live", seq=99, hlc=20_000)], {ORIGIN: 99})
        assert store.checksums() == reference.checksums()
        assert store.count() == reference.count() == 11_000
        got = store.get(HOLDER, "bulk/3")
        assert got is not None and got.size == 50
        got = store.get(HOLDER, "bulk/4")
        assert got is not None and got.size == 4
        got = store.get(HOLDER, "bulk/5")
        assert got is not None and got.deleted
        # the indexes are back: later writes are upserts again
        store.apply([row("bulk/6", origin=ORIGIN2, seq=20_000, hlc=30_000, size=60)])
        got = store.get(HOLDER, "bulk/6")
        assert got is not None and got.size == 60
        assert store.count() == 11_000


def _journal(store: Store) -> str:
    return str(store.db.execute_sql("PRAGMA main.journal_mode").fetchone()[0])  # type: ignore[attr-defined]


def test_sqlite_first_load_journals_in_memory_and_ends_in_wal(tmp_path: Path) -> None:
    # As a master does: the store is opened (and read) in one thread, released, and loaded by the master's thread.
    reference = open_store("memory://")
    with open_store(f"sqlite://{tmp_path / 'journal.db'}") as store:
        store.load_vector()
        store.release()
        seen: list[str] = []

        def load() -> None:
            for batch in _snapshot_batches():
                store.apply_page(encode_page(batch), 0)
                reference.apply(batch)
                seen.append(_journal(store))
            for page in _bad_pages():  # a bad page mid-load rolls back in full, with the journal in memory
                before = store.db.execute_sql("SELECT count(*), sum(size) FROM records").fetchone()  # type: ignore[attr-defined]
                with pytest.raises(ProtocolError):
                    store.apply_page(page, 0)
                after = store.db.execute_sql("SELECT count(*), sum(size) FROM records").fetchone()  # type: ignore[attr-defined]
                assert after == before
            store.end_load()  # type: ignore[attr-defined]
            seen.append(_journal(store))

        loader = threading.Thread(target=load)
        loader.start()
        loader.join()
        assert seen == ["memory", "memory", "wal"]
        assert store.checksums() == reference.checksums()
        assert store.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # type: ignore[attr-defined]
    with open_store(f"sqlite://{tmp_path / 'journal.db'}") as again:
        assert _journal(again) == "wal" and again.count() == 11_000 - 1


def test_sqlite_first_load_keeps_wal_while_another_connection_is_open(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'busy.db'}"
    with open_store(url) as store, open_store(url) as other:
        assert other.count() == 0  # its connection stays open
        store.apply_page(encode_page(_snapshot_batches()[0]), 0)
        assert store.load.active and _journal(store) == "wal"  # type: ignore[attr-defined]
        store.end_load()  # type: ignore[attr-defined]
        assert store.count() == other.count() == 6000


def test_sqlite_first_load_keeps_its_file_locked_while_it_flushes_behind(tmp_path: Path) -> None:
    # The thread that fsyncs the loaded file while the key is built opened and closed its own descriptor of it; a
    # close drops every POSIX lock this process holds on the file, SQLite's too (and with the journal in memory the
    # load's write lock is on the file itself): another process could then write into the half-built file.
    path = tmp_path / "locked.db"
    held: list[bool] = []
    with open_store(f"sqlite://{path}") as store:
        assert isinstance(store, SqliteStore)
        build = store.load._build_key

        def build_while_another_process_tries_to_write() -> None:
            with store.db.atomic():
                store.db.execute_sql(f"DELETE FROM {store.table} WHERE 0")  # a write transaction: the file is locked
                for thread in threading.enumerate():
                    if thread.name == "overdrive-flush":
                        thread.join()
                other = "import sqlite3, sys; sqlite3.connect(sys.argv[1], timeout=0).execute('BEGIN IMMEDIATE')"
                tried = subprocess.run(
                    [sys.executable, "-c", other, str(path)], capture_output=True, timeout=60, check=False
                )
                held.append(b"database is locked" in tried.stderr)
            build()

        store.apply_page(encode_page(_snapshot_batches()[0]), 0)
        assert _journal(store) == "memory"
        with mock.patch.object(store.load, "_build_key", build_while_another_process_tries_to_write):
            store.end_load()
    assert held == [True], "another process could write while the load held the file"


def test_sqlite_bulk_load_cut_short_is_finished_on_reopening(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'cut.db'}"
    store = open_store(url)
    for batch in _snapshot_batches():
        store.apply(batch)
    store.db.close()  # type: ignore[attr-defined]  # a crash: no end of load
    with open_store(url) as again:
        got = again.get(HOLDER, "bulk/3")
        assert got is not None and got.size == 50
        assert again.count() == 11_000 - 1  # bulk/5 is a tombstone


def test_sqlite_bulk_load_finished_by_another_opener_keeps_working(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'shared.db'}"
    first, second = _snapshot_batches()
    with open_store(url) as loading:
        loading.apply(first)
        with open_store(url) as other:  # e.g. `overdrive doctor` while a master loads: builds the indexes
            assert other.count() == 6000
        loading.apply(second)  # bulk/3..5 again: now an upsert, not a duplicate
        got = loading.get(HOLDER, "bulk/3")
        assert got is not None and got.size == 50
        assert loading.count() == 11_000 - 1


def test_sqlite_lookups_by_holder_or_name_use_the_unique_key(tmp_path: Path) -> None:
    """(holder, name) is SQLite's only key besides (origin, seq): a lookup by name alone seeks it once per holder
    (a loose index scan) instead of reading the whole table."""
    with open_store(f"sqlite://{tmp_path / 'plan.db'}") as store:
        store.apply([row(f"f{i}", holder=h) for i in range(50) for h in (HOLDER, OTHER)])
        assert sorted(r.holder for r in store.find("f7")) == [HOLDER, OTHER]
        assert len(store.holder_rows(OTHER)) == 50
        db = store.db  # type: ignore[attr-defined]
        by_name = db.execute_sql(f"EXPLAIN QUERY PLAN SELECT * FROM records WHERE {store._by_name}", ("f7",))  # type: ignore[attr-defined]
        plan = " / ".join(r[-1] for r in by_name.fetchall())
        assert "SCAN records" not in plan and "INDEX records_hkey (holder=? AND name=?)" in plan, plan
        by_holder = db.execute_sql("EXPLAIN QUERY PLAN SELECT * FROM records WHERE holder = ?", (OTHER,))
        assert "INDEX records_hkey (holder=?)" in by_holder.fetchall()[0][-1]


def test_sqlite_database_of_the_earlier_layout_is_migrated(tmp_path: Path) -> None:
    """Earlier versions keyed (name, holder) and indexed holder apart: opening such a file rebuilds the key."""
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE records (id INTEGER PRIMARY KEY, name TEXT NOT NULL, size INTEGER NOT NULL, "
        "content_hash TEXT NOT NULL, holder TEXT NOT NULL, address TEXT NOT NULL, mtime_ns INTEGER NOT NULL, "
        "origin TEXT NOT NULL, seq INTEGER NOT NULL, hlc INTEGER NOT NULL, deleted INTEGER NOT NULL);"
        "CREATE UNIQUE INDEX records_key ON records (name, holder);"
        "CREATE INDEX records_origin_seq ON records (origin, seq);"
        "CREATE INDEX records_holder ON records (holder);"
        "CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);"
    )
    conn.executemany(
        f"INSERT INTO records ({PAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", [row("a"), row("b")]
    )
    conn.commit()
    conn.close()
    with open_store(f"sqlite://{path}") as store:
        store.apply([row("a", hlc=200, size=9)])  # an upsert on the rebuilt key
        got = store.get(HOLDER, "a")
        assert got is not None and got.size == 9 and store.count() == 2
    indexes = sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
    assert sorted(i for (i,) in indexes if not i.startswith("sqlite_")) == ["records_hkey", "records_origin_seq"]


# -- snapshot pages ----------------------------------------------------------------------------------------------


def _page_rows() -> list[RecordRow]:
    rows = [row(f"f{i}", seq=i + 1, hlc=1000 + i, deleted=i % 9 == 0) for i in range(50)]
    rows += [row(f"g{i}", origin=ORIGIN2, seq=i + 1, hlc=2000 + i) for i in range(20)]
    rows += [row("日本語/ファイル.txt", seq=51, hlc=3000), row("line\nbreak", seq=52, hlc=3001)]
    return [*rows, row("a" * 4000, holder=OTHER, seq=53, hlc=3002, size=2**62)]


def test_snapshot_pages_round_trip_between_any_stores(store: Store, tmp_path: Path) -> None:
    rows = _page_rows()
    with open_store(f"sqlite://{tmp_path / 'source.db'}") as source:
        source.apply(rows)
        pages = list(source.since_pages({ORIGIN: 45, ORIGIN2: 0}, batch=7))
        got = sorted(r[0] for page in pages for r in decode_page(page))
        wanted = [f"f{i}" for i in range(45, 50)] + [f"g{i}" for i in range(20)] + [r[0] for r in rows[-3:]]
        assert got == sorted(wanted)
        for page in source.since_pages({OTHER: 0}, batch=16):  # a vector that covers nothing: every row
            store.apply_page(page, 0)
        assert store.checksums() == source.checksums() == row_checksums(rows)
    copy = MemoryStore()
    for page in store.since_pages({}, batch=10):  # this backend's pages, read by another backend
        assert copy.apply_page(memoryview(page), 0)[0] > 0
    assert sorted(copy.data.values()) == sorted(rows)


def test_snapshot_pages_skip_stale_tombstones_and_report_the_newest_stamp(store: Store) -> None:
    rows = [row("gone", seq=1, hlc=10, deleted=True), row("kept", seq=2, hlc=20, deleted=True), row("x", seq=3)]
    assert store.apply_page(encode_page(rows), HLC0 + 15) == (2, HLC0 + 100)
    assert store.get(HOLDER, "gone") is None
    got = store.get(HOLDER, "kept")
    assert got is not None and got.deleted


def _forged_page(value_sql: str) -> bytes:
    """A page whose schema text says STRICT with CHECKs but whose one row breaks them."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(f"CREATE TABLE t ({PAGE_COLUMNS})")  # no types, no constraints
    conn.execute(f"INSERT INTO t ({PAGE_COLUMNS}) VALUES ({value_sql})")
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 't'", (PAGE_TABLE,))
    conn.execute("PRAGMA writable_schema = OFF")
    return conn.serialize()


def _bad_pages() -> list[bytes]:
    good = row("ok")
    extra = sqlite3.connect(":memory:", isolation_level=None)
    extra.deserialize(encode_page([good]))
    extra.execute("CREATE VIEW v AS SELECT 1")
    fields = "'{name}', {size}, '" + "a" * 64 + "', '" + HOLDER + "', '1.2.3.4:5', 1, '" + ORIGIN + "', 1, 1, 0"
    return [
        b"not a database at all" * 10,
        encode_page([good])[:1000],  # cut short
        extra.serialize(),
        encode_page([good, ("../escape", *good[1:])]),
        encode_page([("a\x00b", *good[1:])]),
        encode_page([("/abs", *good[1:])]),
        encode_page([("a\\b", *good[1:])]),
        encode_page([(*good[:2], "Z" * 64, *good[3:])]),
        encode_page([(*good[:3], "HOLDERAAAAAAAAAA", *good[4:])]),
        encode_page([(*good[:6], "origin!aaaaaaaaa", *good[7:])]),
        _forged_page(fields.format(name="x", size="'text in an integer column'")),
        _forged_page(fields.format(name="x", size="-5")),
        _forged_page(fields.format(name="x", size="1.5")),
        _forged_page(fields.replace("'{name}'", "CAST(x'ff41' AS TEXT)").format(size=1)),  # not UTF-8
        _forged_page(fields.replace("'{name}'", "x'41'").format(size=1)),  # a blob
        _forged_page(fields.replace("'{name}'", "NULL").format(size=1)),
    ]


def test_bad_snapshot_pages_are_refused_and_change_nothing(store: Store) -> None:
    store.apply([row("before")])
    sums = store.checksums()
    for page in _bad_pages():
        with pytest.raises(ProtocolError, match=r"page|name|hash|holder"):
            store.apply_page(page, 0)
        with pytest.raises(ProtocolError):
            decode_page(page)
    assert store.checksums() == sums
    store.apply_page(encode_page([row("after", seq=2)]), 0)  # still works afterwards
    assert store.get(HOLDER, "after") is not None


def test_sqlite_bulk_load_from_pages_is_last_writer_wins(tmp_path: Path) -> None:
    reference = open_store("memory://")
    with open_store(f"sqlite://{tmp_path / 'bulk.db'}") as store:
        for batch in _snapshot_batches():
            assert store.apply_page(encode_page(batch), 0)[0] == len(batch)
            reference.apply(batch)
        assert store.load.active  # type: ignore[attr-defined]
        assert store.checksums() == reference.checksums()
        got = store.get(HOLDER, "bulk/3")
        assert got is not None and got.size == 50
        assert store.count() == reference.count() == 11_000 - 1  # bulk/5 is a tombstone
        assert [r for p in store.since_pages({ORIGIN: 10**6, ORIGIN2: 5000}) for r in decode_page(p)] == [
            r for r in _snapshot_batches()[1] if r[7] > 5000
        ]


def test_an_initial_sync_cut_short_is_discarded_and_starts_again(tmp_path: Path) -> None:
    # The first load into an empty file skips fsync under a marker; a process that dies mid-load (as kill -9 or a
    # machine crash would leave it) leaves the marker, and the next open must start from an empty file.
    db = tmp_path / "cut.db"
    code = textwrap.dedent(
        f"""
        import os
        from overdrive.index.pages import encode_page
        from overdrive.index.stores import open_store
        from tests.test_index_stores import _snapshot_batches
        store = open_store({f"sqlite://{db}"!r})
        store.apply_page(encode_page(_snapshot_batches()[0]), 0)
        assert store.load.active and store.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 0
        os._exit(0)  # mid-load: no end, no close
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    marker = tmp_path / "cut.db.loading"
    assert marker.exists() and db.exists()
    with open_store(f"sqlite://{db}") as store:
        assert store.count() == 0 and not marker.exists()
        for batch in _snapshot_batches():  # the sync starts again, and this time ends
            store.apply_page(encode_page(batch), 0)
        store.end_load()  # type: ignore[attr-defined]
        assert store.count() == 11_000 - 1
        assert not marker.exists()
        assert store.db.execute_sql("PRAGMA synchronous").fetchone()[0] == 1  # type: ignore[attr-defined]
    with open_store(f"sqlite://{db}") as store:
        assert store.count() == 11_000 - 1  # a finished load is kept


def test_a_load_still_running_in_another_process_is_left_alone(tmp_path: Path) -> None:
    db = tmp_path / "busy.db"
    with open_store(f"sqlite://{db}") as store:
        store.apply([row("a")])
    fd = os.open(tmp_path / "busy.db.loading", os.O_RDWR | os.O_CREAT)
    try:
        os.write(fd, b"records initial sync by process 1 in progress\n")
        fcntl.flock(fd, fcntl.LOCK_EX)  # as the master loading this file holds it
        with open_store(f"sqlite://{db}") as store:
            assert store.count() == 1
    finally:
        os.close(fd)
    with open_store(f"sqlite://{db}") as store:  # its holder is gone: a stale marker
        assert store.count() == 0


def test_a_load_cut_short_never_takes_another_index_of_the_file(tmp_path: Path) -> None:
    # ?prefix= puts several indexes in one file: one of them loading must not make the others disposable (the
    # discard deleted the whole file, a finished index with it)
    db = tmp_path / "shared.db"
    with open_store(f"sqlite://{db}?prefix=a_") as kept:
        kept.apply([row("precious")])
    code = textwrap.dedent(
        f"""
        import os
        from overdrive.index.pages import encode_page
        from overdrive.index.stores import open_store
        from tests.test_index_stores import _snapshot_batches
        store = open_store({f"sqlite://{db}?prefix=b_"!r})
        store.apply_page(encode_page(_snapshot_batches()[0]), 0)
        assert store.load.active
        os._exit(0)  # mid-load: no end, no close
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    with open_store(f"sqlite://{db}?prefix=a_") as kept:
        assert [r.name for r in kept.find()] == ["precious"]
    # a marker left by a load that began when the file held only its own tables (another index came later)
    (tmp_path / "shared.db.loading").write_text("b_records initial sync by process 1 in progress\n")
    with open_store(f"sqlite://{db}?prefix=a_") as kept:
        assert [r.name for r in kept.find()] == ["precious"]
    assert not (tmp_path / "shared.db.loading").exists()


def test_a_load_that_ends_while_another_process_opens_the_file_is_kept(tmp_path: Path) -> None:
    # the opener finds the marker, then the loader ends (removes the marker, drops its lock) before the opener
    # locks it: the lock it gets is on a marker that is gone, and the finished file must stay
    db = tmp_path / "race.db"
    loader = open_store(f"sqlite://{db}")
    try:
        for batch in _snapshot_batches():
            loader.apply_page(encode_page(batch), 0)
        assert loader.load.active  # type: ignore[attr-defined]
        real = sqlite_load.fcntl.flock

        def flock(fd: int, operation: int) -> None:
            loader.end_load()  # type: ignore[attr-defined]
            real(fd, operation)

        with mock.patch.object(sqlite_load.fcntl, "flock", flock), open_store(f"sqlite://{db}") as opener:
            assert opener.count() == 11_000 - 1
    finally:
        loader.close()
    with open_store(f"sqlite://{db}") as store:
        assert store.count() == 11_000 - 1


def test_a_load_that_cannot_end_releases_its_marker_on_close(tmp_path: Path) -> None:
    db = tmp_path / "stuck.db"
    store = open_store(f"sqlite://{db}")
    for batch in _snapshot_batches():
        store.apply_page(encode_page(batch), 0)
    assert store.load.marker_fd >= 0  # type: ignore[attr-defined]
    with mock.patch.object(sqlite_load.BulkLoad, "_build_key", side_effect=sqlite3.OperationalError("disk I/O error")):
        store.close()  # the failure is logged; the marker's descriptor (and its lock) must not outlive the store
    fd = os.open(tmp_path / "stuck.db.loading", os.O_RDWR)  # not made durable: the next open starts again
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError while a descriptor of the store holds it
    finally:
        os.close(fd)
    with open_store(f"sqlite://{db}") as again:
        assert again.count() == 0


def test_sqlite_pages_survive_a_page_left_attached(tmp_path: Path) -> None:
    with open_store(f"sqlite://{tmp_path / 'left.db'}") as store:
        conn = store.db.connection()  # type: ignore[attr-defined]
        conn.execute("ATTACH DATABASE ':memory:' AS overdrive_page_in")  # as if an earlier load died midway
        conn.execute("ATTACH DATABASE ':memory:' AS overdrive_page_out")
        store.apply_page(encode_page([row("a")]), 0)
        assert [r[0] for p in store.since_pages({}) for r in decode_page(p)] == ["a"]
        assert [r[1] for r in conn.execute("PRAGMA database_list")] == ["main"]
        assert conn.execute("PRAGMA ignore_check_constraints").fetchone()[0] == 0  # only while a page fills


@pytest.mark.parametrize("empty", [True, False], ids=["bulk-load", "upsert"])
def test_damaged_snapshot_pages_are_refused_not_store_errors(tmp_path: Path, empty: bool) -> None:
    """Bytes flipped inside a page's records (the schema intact) must give ProtocolError, never a store error: a
    master drops and counts a ProtocolError, but a StoreError would end it."""
    rows = [row(f"dir/file{i}.txt", seq=i + 1, hlc=100 + i) for i in range(50)]
    good = encode_page(rows)
    rng = random.Random(7)
    refused = 0
    with open_store(f"sqlite://{tmp_path / 'fuzz.db'}") as store:
        if not empty:
            store.apply(rows[:1])
        for _ in range(150):
            page = bytearray(good)
            for _ in range(2):
                page[rng.randrange(4096, len(page))] = rng.randrange(256)  # past the schema page
            try:
                store.apply_page(bytes(page), 0)
            except ProtocolError:
                refused += 1
        assert refused > 0
        store.apply_page(encode_page([row("after", seq=999)]), 0)  # the store still works
        assert store.get(HOLDER, "after") is not None
