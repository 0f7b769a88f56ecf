"""Index stores: one interface (:class:`~overdrive.index.stores.base.Store`), three backends, one factory.

``open_store(url)`` picks the backend from a URL:

* ``None`` -- SQLite in the data directory (``index.db``);
* ``sqlite:///ABSOLUTE/PATH`` or ``sqlite://RELATIVE/PATH`` -- SQLite in WAL mode;
* ``mysql://USER:PASS@HOST[:PORT]/DB`` -- MySQL or MariaDB (tables are created on first use);
* ``memory://NAME`` -- in memory, nothing persists (tests);
* ``firestore://PROJECT?credentials=PATH`` -- Cloud Firestore; with ``FIRESTORE_EMULATOR_HOST`` set, the
  emulator and no credentials.

Every URL takes ``?prefix=NAME`` to put the tables/collections under a name prefix (several indexes, one database).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from overdrive import paths
from overdrive.errors import ConfigError
from overdrive.index.stores.base import BUCKETS, Store, Waiting

__all__ = ["BUCKETS", "Store", "default_url", "open_store", "redact", "sqlite_path"]


def default_url() -> str:
    """The URL of the default store: ``index.db`` in the data directory."""
    return f"sqlite://{(paths.data_dir() / 'index.db').resolve()}"


def redact(url: str) -> str:
    """The URL with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def sqlite_path(url: str | None) -> Path | None:
    """The database file a ``sqlite://`` URL (or None, the default store) names; None for other schemes."""
    text = url or default_url()
    scheme, sep, rest = text.partition("://")
    if scheme != "sqlite" or not sep:
        return None
    path = rest.split("?", 1)[0]
    if path.startswith("//"):
        path = path[1:]
    if not path or path == "/":
        raise ConfigError(f"database URL {text!r} names no file")
    return Path(unquote(path))


def open_store(url: str | None = None, *, waiting: Waiting | None = None) -> Store:
    """Open (and create if needed) the store ``url`` names; raise ConfigError/StoreError with one clear line.
    ``waiting`` hears one line when a database server (MySQL, Firestore) is slow to answer at start."""
    text = url or default_url()
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise ConfigError(f"database URL {text!r} needs a scheme: sqlite://, mysql:// or firestore://")
    query = parse_qs(urlsplit(text).query)
    prefix = query.get("prefix", [""])[0]
    if scheme == "memory":
        from overdrive.index.stores.memory import MemoryStore

        return MemoryStore(rest or "memory")
    if scheme == "sqlite":
        from overdrive.index.stores.sqlite import SqliteStore

        path = sqlite_path(text)
        assert path is not None
        return SqliteStore(path, prefix=prefix)
    if scheme == "mysql":
        from overdrive.index.stores.mysql import MySqlStore

        parts = urlsplit(text)
        database = parts.path.lstrip("/")
        if not parts.hostname or not database or not parts.username:
            raise ConfigError(f"MySQL URL {redact(text)!r} must look like mysql://USER:PASS@HOST:PORT/DB")
        try:
            port = parts.port or 3306
        except ValueError as exc:
            raise ConfigError(f"bad port in {redact(text)!r}") from exc
        return MySqlStore(
            database,
            user=unquote(parts.username),
            password=unquote(parts.password or ""),
            host=parts.hostname,
            port=port,
            prefix=prefix,
            waiting=waiting,
        )
    if scheme == "firestore":
        from overdrive.index.stores.firestore import FirestoreStore

        parts = urlsplit(text)
        if not parts.netloc:
            raise ConfigError(f"Firestore URL {text!r} must look like firestore://PROJECT?credentials=PATH")
        creds = query.get("credentials", [None])[0]
        return FirestoreStore(parts.netloc, credentials=creds, prefix=prefix, waiting=waiting)
    raise ConfigError(f"unknown database scheme {scheme!r} in {redact(text)!r}: use sqlite, mysql or firestore")
