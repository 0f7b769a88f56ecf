"""Snapshot pages: record rows packed as a small SQLite database image, for the bulk of a catch-up sync.

A 1,000,000-entry snapshot is too slow to move as Python objects on both sides (about 2 µs per row to read and
encode, and again to decode, validate and bind into the receiver's store). A page is instead the serialized image
(``sqlite3.Connection.serialize``) of an in-memory database holding one STRICT table, :data:`PAGE_TABLE`, of up to
a batch of rows. A SQLite sender fills it with one ``INSERT ... SELECT`` and a SQLite receiver loads it with
another, so the rows never become Python objects; any other store reads and writes pages through a private
in-memory connection (:func:`encode_page` / :func:`decode_page`).

A page comes from a peer, so it is checked before anything is read from it (:func:`check_page`):

* its schema must be exactly :data:`PAGE_TABLE` (no views, triggers, indexes or other tables);
* ``PRAGMA quick_check`` must pass: the file structure is sound, every value has its column's type (STRICT) and
  satisfies the column's CHECK (non-negative sizes, seqs and HLCs, lengths of hashes, ids and names, 0/1 flags);
* names, content hashes, holders and origins are validated in Python exactly as :func:`validate_rows` does, on
  ``group_concat`` strings (which also rejects text that is not UTF-8).

Anything else raises ProtocolError: the page is dropped and counted like any malformed message.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Sequence

from overdrive.errors import ProtocolError
from overdrive.index.records import (
    _BASE32_BYTES,
    _HEX_BYTES,
    RecordRow,
    check_peer_name,
    names_need_a_closer_look,
    only,
)

PAGE_TABLE = (
    "CREATE TABLE t (name TEXT NOT NULL CHECK (length(CAST(name AS BLOB)) BETWEEN 1 AND 4096), "
    "size INTEGER NOT NULL CHECK (size >= 0), content_hash TEXT NOT NULL CHECK (length(content_hash) = 64), "
    "holder TEXT NOT NULL CHECK (length(holder) = 16), "
    "address TEXT NOT NULL CHECK (length(address) BETWEEN 3 AND 300), mtime_ns INTEGER NOT NULL, "
    "origin TEXT NOT NULL CHECK (length(origin) = 16), seq INTEGER NOT NULL CHECK (seq >= 0), "
    "hlc INTEGER NOT NULL CHECK (hlc >= 0), deleted INTEGER NOT NULL CHECK (deleted IN (0, 1))) STRICT"
)
"""The one table of a page (its rowids are the sender's; receivers ignore them)."""
PAGE_COLUMNS = "name, size, content_hash, holder, address, mtime_ns, origin, seq, hlc, deleted"
PAGE_BYTES = 32 << 20
"""Largest page a sender makes (names of up to 4 KiB make some rows big): below the message's payload limit."""
_SUMMARY = (
    "SELECT count(*), group_concat(name, ?), group_concat(content_hash, ''), group_concat(holder, ''), "
    "group_concat(origin, ''), max(hlc), group_concat(DISTINCT address) FROM {schema}.t"
)
"""Everything Python checks, as a few long strings (reading the names and addresses also checks their UTF-8)."""


def check_schema(conn: sqlite3.Connection, schema: str) -> None:
    """Raise ProtocolError unless the page deserialized as ``schema`` holds exactly :data:`PAGE_TABLE` (so reading
    ``t`` reads a plain table: no view or trigger of the sender's runs here)."""
    try:
        objects = conn.execute(f"SELECT type, name, tbl_name, sql FROM {schema}.sqlite_master").fetchall()  # noqa: S608
    except sqlite3.Error as exc:
        raise ProtocolError(f"bad snapshot page: {exc}") from exc
    if objects != [("table", "t", "t", PAGE_TABLE)]:
        raise ProtocolError("a snapshot page must hold exactly the page table")


def check_page(conn: sqlite3.Connection, schema: str) -> tuple[int, int]:
    """Validate the page deserialized as ``schema`` on ``conn``; return (rows, largest hlc) or raise ProtocolError."""
    check_schema(conn, schema)
    try:
        problems = conn.execute(f"PRAGMA {schema}.quick_check(1)").fetchall()
        if problems != [("ok",)]:
            raise ProtocolError(f"bad snapshot page: {problems[0][0] if problems else 'no check result'}")
        count, names, hashes, holders, origins, newest, _addresses = conn.execute(
            _SUMMARY.format(schema=schema), ("\n",)
        ).fetchone()
        if not count:
            return 0, 0
        if names_need_a_closer_look("\n" + names + "\n"):
            for (name,) in conn.execute(f"SELECT name FROM {schema}.t"):  # noqa: S608 - exact check, one by one
                check_peer_name(name)
    except sqlite3.Error as exc:  # not a database, not UTF-8 text, ...
        raise ProtocolError(f"bad snapshot page: {exc}") from exc
    if not only(hashes, _HEX_BYTES):
        raise ProtocolError("content hash must be 64 lowercase hex characters")
    if not only(holders + origins, _BASE32_BYTES):
        raise ProtocolError("holder and origin must be 16 lowercase base32 characters")
    return int(count), int(newest)


def deserialize(conn: sqlite3.Connection, data: bytes | memoryview, name: str = "main") -> None:
    """Load a peer's page image as schema ``name``; ProtocolError if SQLite refuses it (sqlite3 raises
    MemoryError, not sqlite3.Error, for an empty image)."""
    try:
        conn.deserialize(data, name=name)
    except (sqlite3.Error, MemoryError) as exc:
        raise ProtocolError(f"bad snapshot page: {exc or 'empty image'}") from exc


def check_image(data: bytes | memoryview) -> tuple[int, int]:
    """:func:`check_page` on a private in-memory connection (safe to run in another thread)."""
    conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    try:
        deserialize(conn, data)
        return check_page(conn, "main")
    finally:
        conn.close()


class PageCheck:
    """:func:`check_image` in its own short-lived thread: SQLite releases the GIL, so a receiver can check a page
    on one core while it loads the same page (in a transaction it commits only if the check passes) on another.
    ``data`` is read in place (deserializing copies it): the caller keeps it alive and unchanged until :meth:`result`
    returns, as ``apply_page`` does with the received frame."""

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = data
        self._result: tuple[int, int] | None = None
        self._error: Exception | None = None
        self._thread = threading.Thread(target=self._run, name="overdrive-page-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._result = check_image(self._data)
        except Exception as exc:  # noqa: BLE001 - re-raised by result(): a bad page, or a bug of ours
            self._error = exc

    def result(self) -> tuple[int, int]:
        """(rows, largest hlc) once the check is done; raise its ProtocolError if the page is bad."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError("the snapshot page check ended without a result")
        return self._result


def attach(conn: sqlite3.Connection, schema: str) -> None:
    """Attach an empty in-memory database as ``schema`` on ``conn`` (outside any transaction), first detaching
    one left there by an earlier failure."""
    if any(row[1] == schema for row in conn.execute("PRAGMA database_list")):
        conn.execute(f"DETACH DATABASE {schema}")
    conn.execute(f"ATTACH DATABASE ':memory:' AS {schema}")


def new_page(conn: sqlite3.Connection, schema: str) -> None:
    """Attach an empty in-memory page as ``schema`` on ``conn`` (outside any transaction)."""
    attach(conn, schema)
    conn.execute(PAGE_TABLE.replace("CREATE TABLE t", f"CREATE TABLE {schema}.t", 1))


def encode_page(rows: Sequence[RecordRow]) -> bytes:
    """A page holding ``rows`` (for stores that cannot fill one with SQL)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute(PAGE_TABLE)
        conn.execute("BEGIN")
        conn.executemany(f"INSERT INTO t ({PAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)  # noqa: S608
        conn.execute("COMMIT")
        return conn.serialize()
    finally:
        conn.close()


def decode_page(data: bytes | memoryview) -> list[RecordRow]:
    """The validated rows of a page (for stores that cannot load one with SQL); raise ProtocolError if it is bad."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        deserialize(conn, data)
        check_page(conn, "main")
        try:
            found = conn.execute(f"SELECT {PAGE_COLUMNS} FROM t ORDER BY rowid").fetchall()  # noqa: S608
        except sqlite3.Error as exc:
            raise ProtocolError(f"bad snapshot page: {exc}") from exc
        return [(*r[:9], r[9] == 1) for r in found]
    finally:
        conn.close()
