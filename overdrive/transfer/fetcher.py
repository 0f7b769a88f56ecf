"""Fetching one file from one or more holders: the socket shell around :class:`FetchSession` and :class:`PartialFile`.

:func:`fetch` connects ``connections`` DEALERs to every holder (CURVE handshake checked, so a wrong password fails
fast), opens the file on each, agrees on one :class:`Plan` (same hash, size, chunking and checksum table; those steps
are :mod:`overdrive.transfer.holders`), resumes from ``NAME.part`` if one is there, then runs the session's window
until every chunk is on disk, verifies the whole file and moves it into place. Holders that disconnect (socket
monitor), time out, or say the file changed drop out and the others take their chunks; when none is left the
partial file is kept for a later resume. Only holders that prove to be a node the index names are used
(:mod:`~overdrive.transfer.proof`); when the holders serve different chunk tables (a different chunking, or one that
lies), the one most serve is followed, and if its bytes do not hash to the content hash its holders are dropped as
impostors and the fetch starts over with the next table's holders. Opening is bounded by the same timeout as any
request, except for a holder that says ``Working`` (see :func:`~overdrive.transfer.holders.open_budget`)."""

from __future__ import annotations

import logging
import os
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from overdrive.bus.address import Endpoint
from overdrive.bus.sockets import Bus
from overdrive.errors import ConfigError, IntegrityError, ProtocolError, TransferError, UnsafePathError
from overdrive.files import names
from overdrive.files.model import hash_file, never
from overdrive.transfer import allocator
from overdrive.transfer.holders import (
    IDLE_POLL_MS,
    IMPOSTOR,
    Conn,
    Wanted,
    close_all,
    connect_all,
    failed_reason,
    open_all,
    stall_error,
)
from overdrive.transfer.partial import PartialFile, part_path
from overdrive.transfer.protocol import CODEC, DEFAULT_CHUNK, Chunk, Failed, Read
from overdrive.transfer.session import FetchConfig, FetchSession, Plan, SessionStats

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""Called with (bytes done, total bytes) as chunks land."""

CONNECTIONS = 1
"""Connections per holder by default. On 2 cores a second connection gains CURVE ~6-8 % (within the noise) but
lets the fetcher's peak RSS grow with file size (~95 MB at 4 GiB against ~83 MB); ``--connections 2`` is there for
machines with cores to spare (docs/benchmarks.md)."""
MAX_CONNECTIONS = 4
IO_THREADS = 2
"""Most libzmq I/O threads of the fetch's own context: one per connection to a holder, up to 2."""
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_DRAIN = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class FetchRequest:
    """What to fetch, from whom, and where to put it."""

    name: str
    sources: tuple[Endpoint, ...]
    dest_dir: Path
    content_hash: str = ""
    """Version wanted; "" takes whatever version the first holder serves."""
    chunk_size: int = 0
    config: FetchConfig = field(default_factory=FetchConfig)
    open_timeout: float = 0.0
    """Seconds to wait for a holder's answer to Open; 0 = ``config.request_timeout`` (``--timeout``). A holder that
    says ``Working`` gets more: see :func:`~overdrive.transfer.holders.open_budget`."""
    connect_timeout: float = 3.0
    connections: int = CONNECTIONS
    """Connections to each holder; the holder's window (``config.window``) is split between them."""
    size: int = 0
    """The file's size when known (the index says it): a holder's ``Working`` notice buys time for no bigger a file."""
    holders: Mapping[Endpoint, frozenset[str]] = field(default_factory=dict)
    """Node ids the index names as holders at each source: the one there must prove to be one of them. A source
    not in it (an address the user gave) must prove an identity, whichever."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("no holder to fetch from")
        check_connections(self.connections)
        if self.content_hash and not _HASH_RE.match(self.content_hash):
            raise ConfigError(f"--hash must be 64 lowercase hex characters (BLAKE3), not {self.content_hash!r}")


def check_connections(connections: int) -> None:
    """Refuse a connection count out of range (the CLI calls it before asking any master)."""
    if not 1 <= connections <= MAX_CONNECTIONS:
        raise ConfigError(f"--connections must be 1..{MAX_CONNECTIONS}, not {connections}")


@dataclass
class FetchResult:
    """The outcome of a successful fetch (what ``overdrive fetch --json`` prints)."""

    name: str
    path: str
    bytes: int
    seconds: float
    mb_per_s: float
    hash: str
    sources: list[str]
    already_present: bool = False
    resumed_chunks: int = 0
    bytes_received: int = 0
    stats: SessionStats = field(default_factory=SessionStats)


def fetch(
    bus: Bus,
    request: FetchRequest,
    progress: ProgressFn | None = None,
    *,
    cancel: Callable[[], None] = never,
    connecting: Connecting | None = None,
) -> FetchResult:
    """Fetch ``request.name`` into ``request.dest_dir``; raise an OverdriveError subclass on failure.

    ``cancel`` is called at every safe point of the loops and between blocks of hashing; it stops the fetch by
    raising (a program's Ctrl-C check, say :func:`overdrive.interrupts.deferred`'s). The fetch installs no signal
    handler: a program that wants Ctrl-C during the holders' handshakes too passes the same ``connecting`` it gave
    the signal handler. The data connections use ``bus``'s security in a context of their own (:data:`IO_THREADS`),
    destroyed on return.
    """
    context: zmq.Context = zmq.Context(io_threads=min(request.connections, IO_THREADS))  # type: ignore[type-arg]
    try:
        return _fetch(Bus(bus.security, context), request, progress, cancel, connecting or Connecting())
    finally:
        context.destroy(linger=0)


def _fetch(
    bus: Bus, request: FetchRequest, progress: ProgressFn | None, check: Callable[[], None], connecting: Connecting
) -> FetchResult:
    started = time.monotonic()
    allocator.tune()
    names.check_name(request.name)
    dest_dir = Path(request.dest_dir)
    try:
        _check_folder(dest_dir)
        dest = names.destination(dest_dir, request.name, create=False)  # folders are made only before writing
    except OSError as exc:  # a folder on the way that cannot be looked into (EACCES): said like the rest
        where = f"{exc.filename}: " if exc.filename and exc.filename != str(dest_dir) else ""
        raise ConfigError(f"cannot put files in {dest_dir}: {where}{exc.strerror}") from None
    chunk_size = request.chunk_size
    state = PartialFile(dest, request.name).saved_state()
    if not chunk_size and state is not None and request.content_hash in ("", state.content_hash):
        chunk_size = state.chunk_size
    # a stop comes at a loop's check, never inside the writer's queue; while connecting, at once (see Connecting)
    partial = PartialFile(dest, request.name, check)
    return _transfer(bus, request, progress, check, started, partial, chunk_size, connecting)


class Connecting:
    """An ``on_signal`` for :func:`overdrive.interrupts.deferred` around a fetch: while :attr:`now` is set (only
    around ``Bus.connect``, which waits up to ``connect_timeout`` for each holder's handshake and has no check of its
    own), Ctrl-C raises KeyboardInterrupt from the handler, in that wait. Nothing there can be left half-done: no
    file, no queue, and the fetch's context closes the sockets."""

    def __init__(self) -> None:
        self.now = False

    def __call__(self) -> None:
        if self.now:
            self.now = False
            raise KeyboardInterrupt


def _transfer(
    bus: Bus,
    request: FetchRequest,
    progress: ProgressFn | None,
    check: Callable[[], None],
    started: float,
    partial: PartialFile,
    chunk_size: int,
    connecting: Connecting,
) -> FetchResult:
    dest_dir = Path(request.dest_dir)
    dest = partial.dest
    connecting.now = True
    try:
        conns = connect_all(bus, request.sources, request.connections, request.connect_timeout)
    finally:
        connecting.now = False
    for conn in conns:
        conn.holders = request.holders.get(conn.endpoint, frozenset())
    check()
    try:
        timeout = request.open_timeout or request.config.request_timeout
        want = Wanted(request.name, request.content_hash, request.size, chunk_size, timeout)
        plans = open_all(conns, want, check, bus.security.identity)
        plan = plans[0]
        present = _present_copy(dest, plan, check)
        if present is not None:
            seconds = time.monotonic() - started
            return FetchResult(
                name=request.name,
                path=str(present),
                bytes=plan.size,
                seconds=seconds,
                mb_per_s=0.0,
                hash=plan.content_hash,
                sources=[],
                already_present=True,
            )
        _check_space(request.name, dest, plan.size)
        _make_folders(dest_dir, request.name, dest)
        for attempt, plan in enumerate(plans):
            usable = [c for c in conns if c.plan == plan]
            if attempt:
                partial = PartialFile(dest, request.name, check)  # the last one was discarded: start afresh
            session = _session(request, plan, usable, partial)
            resumed = session.done_chunks
            try:
                _run(session, usable, partial, progress, check)
            except BaseException:
                partial.save_state(session.done_ranges(), force=True)
                partial.close()
                raise
            try:
                final = partial.finish()
                break
            except IntegrityError as exc:
                liars = ", ".join(dict.fromkeys(c.endpoint.display for c in usable))
                if attempt == len(plans) - 1:
                    raise IntegrityError(f"{exc} (from {liars}: {IMPOSTOR})") from None
                log.warning(
                    "holder %s is %s (sent bytes that are not %r); going on with the others",
                    liars,
                    IMPOSTOR,
                    request.name,
                )
    finally:
        partial.close()  # a no-op after finish(); else (stopped or failed before or in the loop) NAME.part's descriptor
        close_all(conns)
    seconds = time.monotonic() - started
    received = session.stats.bytes_received
    return FetchResult(
        name=request.name,
        path=str(final),
        bytes=plan.size,
        seconds=seconds,
        mb_per_s=received / seconds / 1e6 if seconds > 0 else 0.0,
        hash=plan.content_hash,
        sources=list(
            dict.fromkeys(  # an empty file has no chunks: the holders that opened it are its sources
                c.endpoint.display for c in usable if session.received_by(c.label) or not plan.chunks
            )
        ),
        resumed_chunks=resumed,
        bytes_received=received,
        stats=session.stats,
    )


def _session(request: FetchRequest, plan: Plan, usable: Sequence[Conn], partial: PartialFile) -> FetchSession:
    """A session following ``plan`` from ``usable``, resumed from what ``partial`` holds of it."""
    done = partial.open(plan)
    window = request.config.window  # per holder: split over its connections, and never capped below it
    max_inflight = max(request.config.max_inflight, window)
    config = replace(
        request.config,
        window=-(-window // request.connections),
        max_inflight=max_inflight,
        # the bytes the user's window and chunk size imply stay allowed; bigger chunks than those (the holder's
        # choice) mean fewer requests in flight, not more memory
        max_inflight_bytes=max(request.config.max_inflight_bytes, max_inflight * (request.chunk_size or DEFAULT_CHUNK)),
    )
    return FetchSession(plan, [c.label for c in usable], done, config)


def _check_folder(dest_dir: Path) -> None:
    """A destination that cannot be a folder is the user's mistake, said before any holder is asked."""
    folder = dest_dir
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the first part that exists must be a folder (the rest is made when writing)
    if not folder.is_dir():
        raise ConfigError(f"cannot put files in {dest_dir}: {folder} is not a folder")


def _check_space(name: str, dest: Path, size: int) -> None:
    """Refuse to start a fetch that cannot fit: the file's size (less what its partial file already holds)
    against the free space of the filesystem it goes to. A holder's claimed size costs nothing before this."""
    part = part_path(dest)
    try:
        have = part.lstat().st_blocks * 512 if part.is_file() and not part.is_symlink() else 0
    except OSError:
        have = 0
    folder = dest.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return  # cannot tell: the writes will say
    if st.f_blocks == 0:
        return  # not a disk (/proc, /sys): making the folder or writing will say what is wrong
    free = st.f_bavail * st.f_frsize
    if size - have > free:
        raise TransferError(
            f"not enough free space for {name!r} in {folder}: it needs {_size(size - have)}, {_size(free)} is free"
        )


def _size(n: int) -> str:
    value = float(n)
    for unit in ("KB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            return f"{value:.1f} {unit}" if n >= 1000 else f"{n} bytes"
    return f"{n} bytes"


def _make_folders(dest_dir: Path, name: str, dest: Path) -> None:
    """Create ``dest_dir`` and ``name``'s sub-folders, checked again like before; it must still land at ``dest``."""
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        made = names.destination(dest_dir, name)
    except OSError as exc:
        raise TransferError(f"cannot create the folder for {dest}: {exc.strerror}") from exc
    if made != dest:
        raise UnsafePathError(f"{name!r}: its destination folder changed during the fetch; refusing to write")


def _present_copy(dest: Path, plan: Plan, check: Callable[[], None]) -> Path | None:
    """``dest``, or one of the ``name (N).ext`` copies an earlier "keep both" made, if it holds this version."""
    for path in names.copies(dest):
        try:
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and st.st_size == plan.size and hash_file(path, check) == plan.content_hash:
                return path
        except OSError:
            continue
    return None


def _run(
    session: FetchSession,
    conns: Sequence[Conn],
    partial: PartialFile,
    progress: ProgressFn | None,
    check: Callable[[], None],
) -> None:
    by_label = {c.label: c for c in conns}
    poller = zmq.Poller()
    for conn in conns:
        poller.register(conn.sock, zmq.POLLIN)
        if conn.monitor is not None:
            poller.register(conn.monitor, zmq.POLLIN)
    total = session.plan.size
    if progress:
        progress(session.done_bytes, total)
    timeout_ms = 50 if session.config.rate_limit else IDLE_POLL_MS
    while not session.finished:
        check()
        if session.stalled:
            raise stall_error(session, partial.name)
        now = time.monotonic()
        for label, index in session.requests(now):
            conn = by_label[label]
            try:
                conn.sock.send_multipart(CODEC.encode(Read(tid=conn.tid, index=index)), zmq.NOBLOCK)
            except zmq.Again:
                session.fail(label, "send queue full")
        events = dict(poller.poll(2 if partial.unwritten else timeout_ms))
        for conn in conns:
            if conn.sock in events:
                _drain(session, conn, partial)
            if conn.monitor is not None and conn.monitor in events:
                while conn.monitor.poll(0):
                    if recv_monitor_message(conn.monitor)["event"] == zmq.EVENT_DISCONNECTED:
                        session.fail(conn.label, "disconnected")
        for index in partial.take_written():
            session.written(index)
        now = time.monotonic()
        session.check_timeouts(now)
        if partial.state_due(now):
            partial.save_state(session.done_ranges(), now)
        if progress:
            progress(session.done_bytes, total)


def _drain(session: FetchSession, conn: Conn, partial: PartialFile) -> None:
    for _ in range(_DRAIN):
        try:
            frames = conn.sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
        try:
            msg, payload = CODEC.decode(frames)
        except ProtocolError as exc:
            session.stats.unexpected += 1
            log.debug("malformed reply from %s: %s", conn.label, exc)
            continue
        if isinstance(msg, Chunk) and msg.tid == conn.tid:
            if msg.index < session.plan.chunks and session.received(conn.label, msg.index, payload[0]):
                partial.write(msg.index, payload[0])
            elif msg.index >= session.plan.chunks:
                session.stats.unexpected += 1
        elif isinstance(msg, Failed) and msg.tid == conn.tid:
            session.fail(conn.label, failed_reason(msg))
        else:
            session.stats.unexpected += 1


def default_dest() -> Path:
    from overdrive import paths

    return paths.backup_dir()
