"""Fetching one file from one or more holders: the socket shell around :class:`FetchSession` and :class:`PartialFile`.

:func:`fetch` connects ``connections`` DEALERs to every holder (CURVE handshake checked, so a wrong password fails
fast), opens the file on each, agrees on one :class:`Plan` (same hash, size, chunking and checksum table), resumes from
``NAME.part`` if one is there, then runs the session's window until every chunk is on disk, verifies the whole
file and moves it into place. Holders that disconnect (socket monitor), time out, or say the file changed drop
out and the others take their chunks; when none is left the partial file is kept for a later resume. Opening is
bounded by the same timeout as any request, except for a holder that says ``Working`` (see :func:`open_budget`).

Why more than one connection per holder (``connections``, default :data:`CONNECTIONS`): libzmq encrypts and
decrypts a CURVE connection in one I/O thread on each side, so one connection is capped by one core's crypto. The
fetch's sockets live in their own context with one I/O thread per connection (up to :data:`IO_THREADS`), the file
server has two, and each connection is a separate source to the scheduler (the holder's window is split between
them), so the crypto of a holder's stream can run on several cores.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import zmq
from zmq.utils.monitor import recv_monitor_message

from overdrive.bus.address import Endpoint
from overdrive.bus.sockets import Bus
from overdrive.errors import (
    AuthError,
    BusError,
    ConfigError,
    OverdriveError,
    ProtocolError,
    TransferError,
    UnsafePathError,
)
from overdrive.files import names
from overdrive.files.model import hash_file, never
from overdrive.transfer import allocator
from overdrive.transfer.partial import PartialFile, part_path
from overdrive.transfer.protocol import (
    CODEC,
    DEFAULT_CHUNK,
    MAX_CHUNK,
    Cancel,
    Chunk,
    Close,
    Failed,
    Open,
    Opened,
    Read,
    Refused,
    Working,
)
from overdrive.transfer.session import MAX_WINDOW, FetchConfig, FetchSession, Plan, SessionStats

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
"""Called with (bytes done, total bytes) as chunks land."""

RECEIVE_QUEUE = 4 * MAX_WINDOW
"""Message parts queued per holder connection: bounds what a holder sending unasked-for chunks can make us hold."""
MAX_MESSAGE = MAX_CHUNK + (64 << 10)
"""Largest message part libzmq accepts from a holder (a chunk or a checksum table, plus the encryption's few bytes):
a bigger one disconnects the holder before it is buffered, instead of after."""
CONNECTIONS = 1
"""Connections per holder by default. On the 2-core benchmark machine a second connection gained CURVE ~6-8 %
(within its noise) but let the fetcher's peak RSS creep up with file size (~95 MB at 4 GiB against ~83 MB), so one
it is; ``--connections 2`` is there for machines with cores to spare (docs/benchmarks.md)."""
MAX_CONNECTIONS = 4
IO_THREADS = 2
"""Most libzmq I/O threads of the fetch's own context: one per connection to a holder, up to 2."""
IDLE_POLL_MS = 250
"""Longest wait in one poll, so a stop (a program's ``cancel``, e.g. a recorded Ctrl-C) ends the fetch within it."""
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
    says ``Working`` gets more: see :func:`open_budget`."""
    connect_timeout: float = 3.0
    connections: int = CONNECTIONS
    """Connections to each holder; the holder's window (``config.window``) is split between them."""
    size: int = 0
    """The file's size when known (the index says it): a holder's ``Working`` notice buys time for no bigger a file."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ConfigError("no holder to fetch from")
        if not 1 <= self.connections <= MAX_CONNECTIONS:
            raise ConfigError(f"connections must be 1..{MAX_CONNECTIONS}, not {self.connections}")
        if self.content_hash and not _HASH_RE.match(self.content_hash):
            raise ConfigError(f"--hash must be 64 lowercase hex characters (BLAKE3), not {self.content_hash!r}")


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


@dataclass(eq=False)
class _Conn:
    endpoint: Endpoint
    sock: zmq.Socket  # type: ignore[type-arg]
    monitor: zmq.Socket | None = None  # type: ignore[type-arg]
    tid: int = -1
    plan: Plan | None = None
    refused: str = ""
    rid: int = -1
    """Our Open's request id while the holder has not answered it (a Cancel withdraws it when we stop waiting)."""
    cancelled: bool = False
    number: int = 1
    """Which of the connections to ``endpoint`` this is (1, 2, ...)."""

    @property
    def label(self) -> str:
        """The session's name for this connection: the holder, plus ``#N`` for its extra connections."""
        return self.endpoint.display if self.number == 1 else f"{self.endpoint.display}#{self.number}"


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
        conns = _connect_all(bus, request)
    finally:
        connecting.now = False
    check()
    try:
        plan = _open_all(conns, request, chunk_size, check)
        usable = [c for c in conns if c.plan == plan]
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
        done = partial.open(plan)
        window = request.config.window  # per holder: split over its connections, and never capped below it
        max_inflight = max(request.config.max_inflight, window)
        config = replace(
            request.config,
            window=-(-window // request.connections),
            max_inflight=max_inflight,
            # the bytes the user's window and chunk size imply stay allowed; bigger chunks than those (the holder's
            # choice) mean fewer requests in flight, not more memory
            max_inflight_bytes=max(
                request.config.max_inflight_bytes, max_inflight * (request.chunk_size or DEFAULT_CHUNK)
            ),
        )
        session = FetchSession(plan, [c.label for c in usable], done, config)
        try:
            _run(session, usable, partial, progress, check)
        except BaseException:
            partial.save_state(session.done_ranges(), force=True)
            partial.close()
            raise
        final = partial.finish()
    finally:
        partial.close()  # a no-op after finish(); else (stopped or failed before or in the loop) NAME.part's descriptor
        _close_all(conns)
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
        resumed_chunks=len(done),
        bytes_received=received,
        stats=session.stats,
    )


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


def _connect_all(bus: Bus, request: FetchRequest) -> list[_Conn]:
    conns: list[_Conn] = []
    errors: list[OverdriveError] = []
    patient = len(set(request.sources)) == 1  # with others to ask, a holder that refuses is skipped at once
    for endpoint in dict.fromkeys(request.sources):
        for number in range(1, request.connections + 1):
            sock = bus.client(zmq.DEALER, hwm=RECEIVE_QUEUE)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
            try:
                bus.connect(sock, endpoint, timeout=request.connect_timeout, patient=patient)
            except BusError as exc:
                sock.close(linger=0)
                if number == 1:  # an extra connection failing just means fewer connections to that holder
                    errors.append(exc)
                    if len(request.sources) > 1:
                        log.warning("skipping a holder: %s", exc)
                break
            conn = _Conn(endpoint, sock, number=number)
            conn.monitor = _monitor(bus, sock)
            conns.append(conn)
    if not conns:
        auth = [e for e in errors if isinstance(e, AuthError)]
        raise (auth or errors)[0]
    return conns


def _monitor(bus: Bus, sock: zmq.Socket) -> zmq.Socket:  # type: ignore[type-arg]
    """A PAIR receiving ``sock``'s disconnect events (own inproc address: the handshake's may still linger)."""
    addr = f"inproc://overdrive-fetch-monitor-{os.getpid()}-{next(_monitors)}"
    sock.monitor(addr, zmq.EVENT_DISCONNECTED)
    pair: zmq.Socket = bus.context.socket(zmq.PAIR)  # type: ignore[type-arg]
    pair.linger = 0
    pair.connect(addr)
    return pair


_monitors = itertools.count()


TABLE_RATE = 25e6
"""Bytes per second a holder is assumed to read, at worst, when it builds a file's chunk table (a slow USB disk)."""
MAX_TABLE_WAIT = 3600.0
"""Most seconds a ``Working`` notice can add to the wait for a holder's answer, whatever size it claims."""


def open_budget(timeout: float, size: int) -> float:
    """Seconds to wait for a holder's answer to Open after it said ``Working`` on a ``size``-byte file.

    The policy: an Open is answered within ``timeout`` (``--timeout``) or the holder is given up, like any request.
    The exception is the first open of a big file, when the holder reads the whole file to build its chunk table
    (tens of seconds for GiBs on a slow disk); it says ``Working`` first, and then gets ``timeout`` plus the time
    a slow disk (:data:`TABLE_RATE`) needs for the size (the index's size when smaller), at most
    :data:`MAX_TABLE_WAIT`, unless another holder is ready first: then it gets ``timeout`` like the rest (the fetch
    starts with the holders that answered). A holder that never answers costs ``timeout``, one that refuses or
    sends a malformed reply is given up at once.
    """
    return timeout + min(size / TABLE_RATE, MAX_TABLE_WAIT)


def _open_all(conns: Sequence[_Conn], request: FetchRequest, chunk_size: int, check: Callable[[], None]) -> Plan:
    """Send Open to every holder, wait for their answers, and pick the plan to follow.

    An Open given up (no answer in time) is withdrawn at once with ``Cancel``, so the holder frees its slot (and
    stops building the file's chunk table if nobody else waits for it); one still pending when we stop (Ctrl-C) is
    withdrawn by :func:`_close_all`.
    """
    first = secrets.randbits(48)  # random: the holder matches a Cancel by our node id and rid
    for rid, conn in enumerate(conns, first):
        opener = Open(rid=rid, name=request.name, content_hash=request.content_hash, chunk_size=chunk_size)
        conn.sock.send_multipart(CODEC.encode(opener))
        conn.rid = rid
    timeout = request.open_timeout or request.config.request_timeout
    started = time.monotonic()
    pending = {conn.rid: conn for conn in conns}
    deadlines = dict.fromkeys(pending, started + timeout)
    working: set[int] = set()
    poller = zmq.Poller()
    for conn in conns:
        poller.register(conn.sock, zmq.POLLIN)
    while pending:
        check()
        now = time.monotonic()
        for rid in [r for r in pending if deadlines[r] <= now]:
            conn = pending.pop(rid)
            waited = now - started
            conn.refused = (
                f"still building the file's chunk table after {waited:.0f} s"
                if rid in working
                else f"no answer to open within {timeout:g} s"
            )
            _cancel(conn)
        if not pending:
            break
        left = min(deadlines[r] for r in pending) - now
        for sock, _ in poller.poll(min(int(left * 1000) + 1, IDLE_POLL_MS)):
            conn = next(c for c in conns if c.sock is sock)
            try:
                msg, payload = CODEC.decode(sock.recv_multipart(copy=False))
            except ProtocolError as exc:
                for rid in [r for r, c in pending.items() if c is conn]:  # its only Open: give it up now
                    del pending[rid]
                    conn.refused = f"sent a malformed reply ({from_holder(str(exc))})"
                    _cancel(conn)
                continue
            if not isinstance(msg, (Opened, Refused, Working)) or pending.get(msg.rid) is not conn:
                continue
            if isinstance(msg, Working):
                # once, and only while no holder is ready: a holder cannot keep us waiting by repeating it, nor
                # hold up a fetch others can serve; the size it claims counts for no more than the index's
                if msg.rid not in working and not any(c.plan for c in conns):
                    working.add(msg.rid)
                    claimed = min(msg.size, request.size) if request.size else msg.size
                    deadlines[msg.rid] = time.monotonic() + open_budget(timeout, claimed)
                continue
            del pending[msg.rid]
            conn.rid = -1
            if isinstance(msg, Refused):
                conn.refused = f"{msg.reason}: {from_holder(msg.detail)}" if msg.detail else msg.reason
                continue
            if request.content_hash and msg.content_hash != request.content_hash:
                conn.refused = "opened another version than the one asked for"
                continue
            if request.size and msg.size != request.size:  # one content hash, one size: the holder is lying
                conn.refused = f"says the file is {msg.size:,} bytes, the index {request.size:,}"
                continue
            try:
                conn.plan = Plan.from_opened(msg, payload[0])
            except TransferError as exc:
                conn.refused = str(exc)
                continue
            conn.tid = msg.tid
            for rid in working & pending.keys():  # a holder is ready: the others get the plain open timeout
                deadlines[rid] = min(deadlines[rid], max(started + timeout, time.monotonic()))
    plans = [c.plan for c in conns if c.plan is not None]
    if not plans:
        raise _open_error(request.name, conns)
    wanted = plans[0]
    for conn in conns:
        if conn.plan is not None and conn.plan != wanted:
            log.warning("%s serves a different version of %s; not using it", conn.label, request.name)
    return wanted


def _open_error(name: str, conns: Sequence[_Conn]) -> TransferError:
    reasons = [c.refused for c in conns]
    where = ", ".join(dict.fromkeys(c.endpoint.display for c in conns))
    if all(r.startswith("not-found") for r in reasons):
        return TransferError(f"{name!r} not found on {where}")
    if any(r.startswith("unsafe") for r in reasons):
        return UnsafePathError(f"{where} refused {name!r} as an unsafe name")
    if all(r.startswith("changed") for r in reasons):
        return TransferError(f"{name!r} on {where} is not the version asked for (it changed); look it up again")
    detail = "; ".join(dict.fromkeys(f"{c.endpoint.display}: {c.refused}" for c in conns))
    return TransferError(f"cannot open {name!r}: {detail}")


def _run(
    session: FetchSession,
    conns: Sequence[_Conn],
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
            raise _stall_error(session, partial.name)
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


def _drain(session: FetchSession, conn: _Conn, partial: PartialFile) -> None:
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


CHANGED = "changed while being fetched"
"""A holder's failure reason in the session when it said the file changed (its detail only repeats that)."""


def failed_reason(msg: Failed) -> str:
    """The session's failure reason for a holder that answered ``Failed``."""
    if msg.reason == "changed":
        return CHANGED
    return f"{msg.reason}: {from_holder(msg.detail)}" if msg.detail else msg.reason


SHOWN_DETAIL = 160
"""Most characters of a holder's own words (a refusal's detail, say) that an error message repeats."""


def from_holder(text: str) -> str:
    """Text a holder sent, fit for an error message: at most :data:`SHOWN_DETAIL` characters, and every character
    that is not printable escaped (``\\x1b``), so a hostile holder cannot drive the user's terminal or bury the
    error under its own text."""
    cut = text[:SHOWN_DETAIL]
    shown = cut if cut.isprintable() else repr(cut)[1:-1]
    return shown + "…" if len(text) > SHOWN_DETAIL else shown


def _stall_error(session: FetchSession, name: str) -> TransferError:
    """One sentence on why no holder is left, naming the file and the holders."""
    failures = session.failures
    done = f"{session.done_bytes}/{session.plan.size} bytes kept in the partial file"
    changed = list(dict.fromkeys(label.split("#")[0] for label, why in failures.items() if why == CHANGED))
    others = "; ".join(f"{k}: {v}" for k, v in failures.items() if v != CHANGED)
    if changed:
        holders = f"holder{'s' if len(changed) > 1 else ''} {', '.join(changed)}"
        also = f" (and {others})" if others else ""
        return TransferError(
            f"{name!r} changed on its {holders} while it was being fetched{also}; {done}. "
            "Look it up again to fetch the new version"
        )
    if any("does not match" in v for v in failures.values()):
        why = "; ".join(f"holder {k} {v}" if "does not match" in v else f"{k}: {v}" for k, v in failures.items())
        return TransferError(f"fetching {name!r}: {why}; {done}. Look it up again to fetch the new version")
    return TransferError(f"no holder left ({others}); {done}: run the same command again to resume")


def _cancel(conn: _Conn) -> None:
    """Withdraw ``conn``'s unanswered Open (the holder drops it, even if its answer is already on the way)."""
    if conn.rid >= 0:
        try:
            conn.sock.send_multipart(CODEC.encode(Cancel(rid=conn.rid)), zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        conn.cancelled = True
        conn.rid = -1


def _close_all(conns: Sequence[_Conn]) -> None:
    for conn in conns:
        _cancel(conn)  # an Open still waiting (stopped while opening)
        if conn.tid >= 0:
            try:
                conn.sock.send_multipart(CODEC.encode(Close(tid=conn.tid)), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if conn.monitor is not None:
            try:
                conn.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            conn.monitor.close(linger=0)
        conn.sock.close(linger=200 if conn.tid >= 0 or conn.cancelled else 0)  # let Close or Cancel go out


def default_dest() -> Path:
    from overdrive import paths

    return paths.backup_dir()
