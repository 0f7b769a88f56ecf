"""Cloud Firestore store through firebase-admin (also runs against the ``@firestore-emulator/server`` emulator).

Each record is a document in ``{prefix}records`` whose id is a hash of (holder, name); settings live in
``{prefix}meta``. Only operations the third-party emulator implements are used: queries (streamed), batched
commits and single-document reads. Last-writer-wins is decided here (read the current versions, write the
winners in one batch): a store belongs to one master, which is its only writer.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import firebase_admin
from firebase_admin import credentials as fb_credentials
from firebase_admin import firestore
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud.firestore_v1.base_query import FieldFilter

from overdrive.errors import ConfigError, StoreError
from overdrive.index.records import CONTENT_HASH, DELETED, HLC, HOLDER, NAME, ORIGIN, SEQ, Record, RecordRow
from overdrive.index.stores.base import (
    BATCH,
    BUCKETS,
    COLUMNS,
    NOTICE_AFTER,
    Store,
    Waiting,
    check_prefix,
    encode_vector,
    row_checksums,
    to_record,
    wins,
)

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds the first read may take before the store is reported unreachable."""

WRITE_BATCH = 400
"""Firestore commits at most 500 writes; stay below."""


def doc_id(holder: str, name: str) -> str:
    return hashlib.blake2b(f"{holder}/{name}".encode(), digest_size=16).hexdigest()


_BIG = ("size", "mtime_ns", "hlc")
"""Fields that can exceed 2**53: stored as decimal strings, because the emulator (JavaScript numbers) fails on
larger integers. Nothing queries them by range; last-writer-wins is decided here."""


def _row(data: Mapping[str, Any]) -> RecordRow:
    return tuple(int(data[c]) if c in _BIG else data[c] for c in COLUMNS)  # type: ignore[return-value]


def _doc(row: RecordRow) -> dict[str, Any]:
    doc = {c: (str(v) if c in _BIG else v) for c, v in zip(COLUMNS, row, strict=True)}
    doc["bucket"] = int(row[SEQ]) % BUCKETS
    return doc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _certificate(path: str) -> Any:
    """The service account credentials in the JSON file ``path``; a missing or unusable file is a ConfigError."""
    try:
        return fb_credentials.Certificate(path)
    except OSError as exc:
        raise ConfigError(f"Firestore credentials file {path}: {exc.strerror}") from None
    except ValueError as exc:  # not JSON, or not a service account key
        reason = " ".join(str(exc).split())
        raise ConfigError(f"Firestore credentials file {path} is not a service account key: {reason}") from None


class FirestoreStore(Store):
    """Records in Cloud Firestore (or its emulator when FIRESTORE_EMULATOR_HOST is set)."""

    def __init__(
        self, project: str, *, credentials: str | None = None, prefix: str = "", waiting: Waiting | None = None
    ) -> None:
        check_prefix(prefix, "collection")
        self.project = project
        self.emulator = os.environ.get("FIRESTORE_EMULATOR_HOST", "")
        self.prefix = prefix
        self._errors: tuple[type[BaseException], ...] = (gexc.GoogleAPIError, ValueError, OSError)
        if credentials:
            cred: Any = _certificate(credentials)
        elif self.emulator:
            cred = _AnonymousCredential()
        else:
            raise StoreError("firestore:// needs ?credentials=PATH (a service account JSON) or FIRESTORE_EMULATOR_HOST")
        name = f"overdrive-{project}-{prefix}-{id(self):x}"
        try:
            self._app = firebase_admin.initialize_app(cred, {"projectId": project}, name=name)
            self.client = firestore.client(self._app)
        except (ValueError, OSError) as exc:
            raise StoreError(f"cannot open Firestore project {project}: {exc}") from exc
        self.records = self.client.collection(f"{prefix}records")
        self.meta = self.client.collection(f"{prefix}meta")
        self._closed = False
        self._probe(waiting)

    def _probe(self, waiting: Waiting | None) -> None:
        """One read, bounded and not retried, so a server that is down or never answers is one clear error within
        :data:`CONNECT_TIMEOUT` seconds instead of minutes of silent retries. ``waiting`` hears one line when it
        has not answered within :data:`NOTICE_AFTER` seconds (the read is then made again, for the rest)."""
        first = NOTICE_AFTER if waiting is not None else CONNECT_TIMEOUT
        try:
            try:
                self.meta.document("probe").get(timeout=first, retry=None)
            except gexc.DeadlineExceeded:
                if waiting is None:
                    raise
                waiting(f"waiting for {self.describe()} (up to {CONNECT_TIMEOUT:g} s)...")
                self.meta.document("probe").get(timeout=CONNECT_TIMEOUT - first, retry=None)
        except gexc.DeadlineExceeded:
            self.close()
            raise StoreError(f"{self.describe()} did not answer within {CONNECT_TIMEOUT:g} s") from None
        except gexc.ServiceUnavailable as exc:
            self.close()
            raise StoreError(f"cannot reach {self.describe()}: {_first_line(exc)}") from None
        except self._errors as exc:
            self.close()
            raise StoreError(f"{self.describe()}: {_first_line(exc)}") from exc

    def _call(self, fn: Any) -> Any:
        try:
            return fn()
        except self._errors as exc:
            raise StoreError(f"{self.describe()}: {exc}") from exc

    def _stream(self, query: Any) -> Iterator[RecordRow]:
        try:
            for snap in query.stream():
                yield _row(snap.to_dict())
        except self._errors as exc:
            raise StoreError(f"{self.describe()}: {exc}") from exc

    def _batched(self, rows: Iterator[RecordRow], batch: int) -> Iterator[list[RecordRow]]:
        out: list[RecordRow] = []
        for row in rows:
            out.append(row)
            if len(out) >= batch:
                yield out
                out = []
        if out:
            yield out

    def apply(self, rows: Sequence[RecordRow], vector: Mapping[str, int] | None = None) -> int:
        changed = 0
        latest: dict[str, RecordRow] = {}
        for row in rows:  # the batch itself may hold several versions of one key
            key = doc_id(str(row[HOLDER]), str(row[NAME]))
            if key not in latest or wins(row, latest[key]):
                latest[key] = row
        keys = list(latest)
        for start in range(0, max(len(keys), 1), WRITE_BATCH):
            chunk = keys[start : start + WRITE_BATCH]
            refs = [self.records.document(k) for k in chunk]
            snaps = self._call(lambda refs=refs: list(self.client.get_all(refs)))
            current = {snap.id: snap.to_dict() for snap in snaps if snap.exists}
            batch = self.client.batch()
            for key, ref in zip(chunk, refs, strict=True):
                row = latest[key]
                old = current.get(key)
                if old is not None and not wins(row, _row(old)):
                    continue
                batch.set(ref, _doc(row))
                changed += 1
            if vector is not None and start + WRITE_BATCH >= len(keys):
                batch.set(self.meta.document("vector"), {"v": encode_vector(vector)})
            self._call(batch.commit)
        return changed

    def get(self, holder: str, name: str) -> Record | None:
        snap = self._call(lambda: self.records.document(doc_id(holder, name)).get())
        return to_record(_row(snap.to_dict())) if snap.exists else None

    def rows(self, batch: int = BATCH) -> Iterator[list[RecordRow]]:
        yield from self._batched(self._stream(self.records), batch)

    def since(self, vector: Mapping[str, int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        floor = min(vector.values(), default=0) if vector else 0
        query = self.records.where(filter=FieldFilter("seq", ">", floor)) if floor else self.records
        wanted = (r for r in self._stream(query) if int(r[SEQ]) > vector.get(str(r[ORIGIN]), 0))  # type: ignore[call-overload]
        yield from self._batched(wanted, batch)

    def bucket_rows(self, buckets: Sequence[int], batch: int = BATCH) -> Iterator[list[RecordRow]]:
        wanted = sorted({int(b) % BUCKETS for b in buckets})
        for start in range(0, len(wanted), 10):  # "in" takes up to 10 values on older servers
            query = self.records.where(filter=FieldFilter("bucket", "in", wanted[start : start + 10]))
            yield from self._batched(self._stream(query), batch)

    def checksums(self) -> list[int]:
        return row_checksums(self._stream(self.records))

    def holder_rows(self, holder: str) -> list[RecordRow]:
        return list(self._stream(self.records.where(filter=FieldFilter("holder", "==", holder))))

    def purge(self, before_hlc: int) -> int:
        doomed = [
            doc_id(str(r[HOLDER]), str(r[NAME]))
            for r in self._stream(self.records.where(filter=FieldFilter("deleted", "==", True)))
            if int(r[HLC]) < before_hlc  # type: ignore[call-overload]
        ]
        for start in range(0, len(doomed), WRITE_BATCH):
            batch = self.client.batch()
            for key in doomed[start : start + WRITE_BATCH]:
                batch.delete(self.records.document(key))
            self._call(batch.commit)
        return len(doomed)

    def get_meta(self, key: str) -> str | None:
        snap = self._call(lambda: self.meta.document(key).get())
        return str(snap.to_dict()["v"]) if snap.exists else None

    def set_meta(self, key: str, value: str) -> None:
        self._call(lambda: self.meta.document(key).set({"v": value}))

    def count(self) -> int:
        return sum(1 for _ in self._stream(self.records.where(filter=FieldFilter("deleted", "==", False))))

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
        for row in self._stream(self.records.where(filter=FieldFilter("name", "==", name))):
            if (content_hash is None or row[CONTENT_HASH] == content_hash) and (include_deleted or not row[DELETED]):
                yield to_record(row)

    def describe(self) -> str:
        where = f"emulator {self.emulator}" if self.emulator else "Google Cloud"
        return f"Firestore project {self.project} ({where})"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.client.close()
        except Exception as exc:  # noqa: BLE001 - closing is best effort
            log.debug("closing Firestore client: %s", exc)
        firebase_admin.delete_app(self._app)


class _AnonymousCredential(fb_credentials.Base):  # type: ignore[misc]
    """Anonymous google-auth credentials: the emulator does not authenticate."""

    def get_credential(self) -> AnonymousCredentials:
        return AnonymousCredentials()  # type: ignore[no-untyped-call]
