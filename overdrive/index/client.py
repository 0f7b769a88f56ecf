"""Talking to the index from a program: :class:`IndexClient` (used by ``overdrive ls`` and ``overdrive fetch``).

API::

    client = IndexClient(bus, [Endpoint("127.0.0.1", 7771), ...], timeout=3.0)
    entries = client.lookup("lectures/week 1.mp4")            # exact name
    entries = client.lookup("*.mp4")                          # fnmatch glob (``*`` also matches "/")
    entries = client.lookup("week 1.mp4", content_hash="ab..")  # only copies with that BLAKE3 hash
    # names and patterns match whatever their Unicode normalisation: "résumé" finds a file saved as NFD
    for e in entries:      # Entry: name, size, content_hash, holder, address ("host:port"), mtime_ns, online
        ...
    client.register([FileInfo(...)], address="10.0.0.5:7772")   # "I (this bus's node id) now hold these"
    client.unregister(["old.mp4"], address="10.0.0.5:7772")
    status = client.status()              # protocol.Status of the master answering (digest=False: cheaper)
    client.close()                                            # or use it as a context manager

Any master will do: the client talks to the first that answers and moves on to the next one when a request times
out (:class:`~overdrive.errors.UnreachableError` once every master has failed; AuthError for a wrong password).
Records are always registered under the caller's own authenticated node id; a master refuses anything else.
Not thread-safe: one client per thread.
"""

from __future__ import annotations

import itertools
import logging
import time
import unicodedata
from collections.abc import Callable, Iterable, Sequence

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.kind import MASTER, WrongService, wrong_kind
from overdrive.bus.sockets import Bus
from overdrive.errors import AuthError, ProtocolError, StoreError, UnreachableError, WrongServiceError
from overdrive.files.model import FileInfo
from overdrive.index.patterns import glob_match
from overdrive.index.protocol import CODEC, Ack, Announce, Entry, Found, Lookup, Status, StatusQuery, size_batches

log = logging.getLogger(__name__)

SHOWN_REASON = 160
"""At most this much of why a master's reply was malformed goes into an error (the CLI escapes it)."""

__all__ = ["Entry", "IndexClient", "is_glob"]


def _name(f: FileInfo) -> str:
    return f.name


def _nfc(text: str) -> str:
    return text if text.isascii() else unicodedata.normalize("NFC", text)


POLL_SLICE = 0.25
"""Longest single wait for a reply, so a :attr:`IndexClient.check` runs often enough for a prompt Ctrl-C."""

MAX_PATTERN = 4096
"""Longest name or pattern a Lookup carries (characters); a master drops a longer one unanswered."""


def _spellings(name: str) -> list[str]:
    """``name`` as given, composed and decomposed (one entry when it is ASCII or already the same; a spelling a
    Lookup cannot carry is left out)."""
    if name.isascii():
        return [name]
    spellings = [name, unicodedata.normalize("NFC", name), unicodedata.normalize("NFD", name)]
    return list(dict.fromkeys(s for s in spellings if s == name or len(s) <= MAX_PATTERN))


def is_glob(pattern: str) -> bool:
    """True if ``pattern`` has fnmatch wildcards (``*``, ``?``, ``[``)."""
    return any(c in pattern for c in "*?[")


class IndexClient:
    """Request/reply access to any live master of the index."""

    def __init__(
        self, bus: Bus, masters: Sequence[Endpoint], *, timeout: float = 3.0, check: Callable[[], None] | None = None
    ) -> None:
        if not masters:
            raise ValueError("IndexClient needs at least one master endpoint")
        self.bus = bus
        self.masters = list(masters)
        self.timeout = timeout
        self.check = check
        """Called at least every :data:`POLL_SLICE` s while waiting for a reply, and before each connection: a
        command's Ctrl-C check (:func:`overdrive.interrupts.deferred`), which raises to stop the wait."""
        self._refs = itertools.count(1)
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]
        self._current = 0

    def __enter__(self) -> IndexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    @property
    def master(self) -> Endpoint:
        """The master currently in use."""
        return self.masters[self._current]

    def lookup(
        self, name_or_pattern: str = "", content_hash: str | None = None, *, include_deleted: bool = False
    ) -> list[Entry]:
        """Entries for an exact name, or for a glob pattern (see :func:`is_glob`); "" lists everything."""
        glob = is_glob(name_or_pattern)
        found: dict[tuple[str, str, str], Entry] = {}
        # the same name can be stored composed (NFC, as typed) or decomposed (NFD, as macOS saves it): ask for both
        for spelling in _spellings(name_or_pattern):
            entries: list[Entry] = []

            def ask(ref: int, spelling: str = spelling, entries: list[Entry] = entries) -> Lookup:
                entries.clear()
                return Lookup(
                    ref=ref,
                    name=spelling,
                    glob=glob,
                    content_hash=content_hash,
                    include_deleted=include_deleted,
                )

            def take(reply: object, entries: list[Entry] = entries) -> bool:
                if not isinstance(reply, Found):
                    return False
                entries.extend(reply.entries)
                return reply.done

            self._request(ask, take)
            for e in entries:
                found[(e.name, e.holder, e.content_hash)] = e
        result = list(found.values())
        wanted = _nfc(name_or_pattern)
        if glob:  # never trust a master's filtering for what we show
            result = [e for e in result if glob_match(_nfc(e.name), wanted)]
        elif name_or_pattern:
            result = [e for e in result if _nfc(e.name) == wanted]
        return sorted(result, key=lambda e: (e.name, e.holder))

    def register(
        self,
        files: Iterable[FileInfo],
        address: str,
        *,
        removed: Iterable[str] = (),
        full: bool = False,
    ) -> int:
        """Tell the index this node holds ``files`` (and no longer ``removed``); returns versions stamped.

        ``full=True`` means "this is everything I share": entries of this node not listed are deleted.
        """
        infos = size_batches(list(files), _name)
        gone = size_batches(list(removed), str)
        sync = next(self._refs) if full else 0
        chunks = max(1, len(infos), len(gone))
        applied = 0
        for i in range(chunks):
            part = infos[i] if i < len(infos) else []
            drop = gone[i] if i < len(gone) else []
            final = i == chunks - 1
            result: list[Ack] = []

            def ask(ref: int, part: list[FileInfo] = part, drop: list[str] = drop, final: bool = final) -> Announce:
                return Announce(
                    ref=ref,
                    holder=self.bus.node_id,
                    address=address,
                    files=part,
                    removed=drop,
                    full=full,
                    sync=sync,
                    final=final,
                )

            def take(reply: object, result: list[Ack] = result) -> bool:
                if isinstance(reply, Ack):
                    result.append(reply)
                    return True
                return False

            self._request(ask, take, retry=not full)
            ack = result[-1]
            if not ack.ok:
                raise StoreError(f"master {self.master.display} refused the registration: {ack.error}")
            applied += ack.applied
        return applied

    def unregister(self, names: Iterable[str], address: str) -> int:
        """Tell the index this node no longer holds ``names``."""
        return self.register([], address, removed=names)

    def status(self, *, digest: bool = True) -> Status:
        """The answering master's :class:`~overdrive.index.protocol.Status` (``digest=False``: cheaper)."""
        result: list[Status] = []

        def take(reply: object) -> bool:
            if isinstance(reply, Status):
                result.append(reply)
                return True
            return False

        self._request(lambda ref: StatusQuery(ref=ref, digest=digest), take)
        return result[-1]

    # -- transport ---------------------------------------------------------------------------------------------

    def _connect(self) -> zmq.Socket:  # type: ignore[type-arg]
        if self._sock is None:
            sock = self.bus.client(zmq.DEALER)
            try:
                # a refused connection means no master there now: try the next at once (a dead first master
                # cost every `ls`, `fetch` and `share` start the whole timeout)
                self.bus.connect(sock, self.master, timeout=self.timeout, patient=False)
            except BaseException:
                sock.close(linger=0)
                raise
            self._sock = sock
        return self._sock

    def _next_master(self) -> None:
        self.close()
        self._current = (self._current + 1) % len(self.masters)

    def _request(self, ask: object, take: object, *, retry: bool = True) -> None:
        """Send ``ask(ref)`` to a master; feed replies with that ref to ``take`` until it returns True."""
        assert callable(ask) and callable(take)
        failures: list[str] = []
        auth_failure: AuthError | None = None
        auth_failures = 0
        for _attempt in range(len(self.masters)):
            if self.check is not None:
                self.check()
            try:
                sock = self._connect()
            except AuthError as exc:
                auth_failure = exc
                auth_failures += 1
                failures.append(str(exc))
                self._next_master()
                continue
            except (UnreachableError, WrongServiceError) as exc:  # another master may answer
                if isinstance(exc, WrongServiceError) and len(self.masters) == 1:
                    raise  # said as it is: "that is a stream, not a master"
                failures.append(str(exc))
                self._next_master()
                continue
            ref = next(self._refs)
            sock.send_multipart(CODEC.encode(ask(ref)))
            deadline = time.monotonic() + self.timeout
            malformed = ""  # the last undecodable reply, said once in the error rather than logged per reply
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    failures.append(f"{self.master.display} did not answer within {self.timeout:g} s{malformed}")
                    break
                ready = sock.poll(int(min(remaining, POLL_SLICE) * 1000) + 1)
                if self.check is not None:
                    self.check()
                if not ready:
                    continue
                try:
                    reply, _ = CODEC.decode(sock.recv_multipart())
                except ProtocolError as exc:
                    log.debug("dropping malformed reply from %s: %s", self.master.display, exc)
                    malformed = f" (it sent a malformed reply: {str(exc)[:SHOWN_REASON]})"
                    continue
                if isinstance(reply, WrongService):  # a share (or another overdrive service) answered
                    wrong = WrongServiceError(wrong_kind(self.master.display, reply.kind, MASTER))
                    if len(self.masters) == 1:
                        raise wrong
                    failures.append(str(wrong))
                    break
                if getattr(reply, "ref", None) != ref:
                    continue
                deadline = time.monotonic() + self.timeout
                if take(reply):
                    return
            self._next_master()
            if not retry:
                break
        if auth_failure is not None and auth_failures == len(failures):
            raise auth_failure if len(failures) == 1 else AuthError("; ".join(failures))
        raise UnreachableError("no index master answered: " + "; ".join(failures))
