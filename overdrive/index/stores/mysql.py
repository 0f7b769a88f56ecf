"""The MySQL or MariaDB store (``mysql://``), through peewee and pymysql."""

# ruff: noqa: S608 - table names come from a prefix checked against PREFIX_RE; values are always parameters
from __future__ import annotations

import socket
from collections.abc import Sequence

import pymysql

from overdrive.errors import StoreError
from overdrive.index.records import HOLDER, NAME, RecordRow, key_id
from overdrive.index.stores.base import NOTICE_AFTER, Waiting
from overdrive.index.stores.sql import COLS, SqlStore, peewee

if peewee.mysql is None:  # peewee was imported without its MySQL driver (see sql.py): hand it over
    peewee.mysql = pymysql


CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a MySQL server to accept a connection and send its greeting."""

IO_TIMEOUT = 60.0
"""Seconds one read or write on an open connection may take before the store fails instead of hanging."""


def expect_greeting(host: str, port: int, timeout: float = CONNECT_TIMEOUT, waiting: Waiting | None = None) -> None:
    """Check that ``host:port`` is a server that speaks first, as MySQL does, within ``timeout``: pymysql's own
    ``connect_timeout`` bounds only the TCP connect, so a port that accepts and never answers would hang it.
    ``waiting`` hears one line when the server has not answered within :data:`NOTICE_AFTER` seconds."""
    where = f"MySQL at {host}:{port}"
    first = min(timeout, NOTICE_AFTER) if waiting is not None else timeout
    try:
        try:
            _greeting(host, port, first)
        except TimeoutError:
            if waiting is None or first >= timeout:
                raise
            waiting(f"waiting for the MySQL server at {host}:{port} (up to {timeout:g} s)...")
            _greeting(host, port, timeout - first)
    except TimeoutError:
        raise StoreError(
            f"{where} did not answer within {timeout:g} s (is that port a MySQL server, and is it running?)"
        ) from None
    except socket.gaierror as exc:
        raise StoreError(f"cannot find the MySQL host {host!r}: DNS lookup failed ({exc.strerror})") from None
    except OSError as exc:
        raise StoreError(f"cannot reach {where}: {exc.strerror or exc}") from None


def _greeting(host: str, port: int, timeout: float) -> None:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        if not sock.recv(4):
            raise StoreError(
                f"MySQL at {host}:{port} closed the connection without a greeting: is that a MySQL server?"
            )


def key_hex(holder: str, name: str) -> str:
    """The unique key of (holder, name) as MySQL stores it: (holder, name) is too long for an InnoDB index."""
    return key_id(holder, name).hex()


class MySqlStore(SqlStore):
    """MySQL or MariaDB through pymysql; creates its tables on first use."""

    param = "%s"
    errors = (peewee.PeeweeException, pymysql.err.Error, OSError)

    def mod(self, expr: str, n: int) -> str:
        return f"MOD({expr}, {n})"

    def __init__(
        self,
        database: str,
        *,
        user: str,
        password: str,
        host: str,
        port: int,
        prefix: str = "",
        waiting: Waiting | None = None,
    ) -> None:
        self.where = f"{user}@{host}:{port}/{database}"
        db = peewee.MySQLDatabase(
            database,
            user=user,
            password=password,
            host=host,
            port=port,
            charset="utf8mb4",
            connect_timeout=CONNECT_TIMEOUT,
            read_timeout=IO_TIMEOUT,
            write_timeout=IO_TIMEOUT,
        )
        expect_greeting(host, port, waiting=waiting)
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
        return f"INSERT INTO {self.table} ({COLS}, kid) VALUES ({marks}, %s) ON DUPLICATE KEY UPDATE {sets}"

    def prepare(self, rows: Sequence[RecordRow]) -> Sequence[Sequence[object]]:
        return [(*r, key_hex(r[HOLDER], r[NAME])) for r in rows]

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
