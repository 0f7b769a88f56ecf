"""The holders' side of one fetch: connections to them, opening the file on each, and their failures said.

:func:`connect_all` makes the connections (CURVE handshake checked), :func:`open_all` asks every holder to open the
file, keeps the ones that prove to be a holder the index names (:mod:`~overdrive.transfer.proof`) and orders the
:class:`~overdrive.transfer.session.Plan` they offer, :func:`close_all` withdraws what is still open.
:func:`failed_reason`, :func:`from_holder` and :func:`stall_error` turn what holders said into error messages.
The fetch loop itself is :mod:`overdrive.transfer.fetcher`.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.kind import SHARE, WrongService, wrong_kind
from overdrive.bus.security import NodeIdentity
from overdrive.bus.sockets import Bus
from overdrive.errors import (
    AuthError,
    BusError,
    OverdriveError,
    ProtocolError,
    TransferError,
    UnsafePathError,
    WrongServiceError,
)
from overdrive.transfer import proof
from overdrive.transfer.protocol import CODEC, MAX_CHUNK, Cancel, Close, Failed, Opened, Refused, Working
from overdrive.transfer.session import MAX_WINDOW, FetchSession, Plan

log = logging.getLogger(__name__)

RECEIVE_QUEUE = 4 * MAX_WINDOW
"""Message parts queued per holder connection: bounds what a holder sending unasked-for chunks can make us hold."""
MAX_MESSAGE = MAX_CHUNK + (64 << 10)
"""Largest message part libzmq accepts from a holder (a chunk or a checksum table, plus the encryption's few bytes):
a bigger one disconnects the holder before it is buffered, instead of after."""
IDLE_POLL_MS = 250
"""Longest wait in one poll, so a stop (a program's ``cancel``, e.g. a recorded Ctrl-C) ends the fetch within it."""


@dataclass(frozen=True, slots=True)
class Wanted:
    """What :func:`open_all` asks every holder to open."""

    name: str
    content_hash: str
    """The version wanted; "" takes whatever version the first holder serves."""
    size: int
    """The file's size when known (0 if not): a holder's ``Working`` notice buys time for no bigger a file."""
    chunk_size: int
    """The chunk size asked for; 0 lets the holder choose."""
    timeout: float
    """Seconds to wait for a holder's answer (more after ``Working``: see :func:`open_budget`)."""


@dataclass(eq=False)
class Conn:
    """One connection to a holder and where its open stands."""

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
    holders: frozenset[str] = frozenset()
    """Node ids the index names as holders at ``endpoint``: the holder must prove to be one of them (any proven
    identity when empty: an address the user gave)."""
    challenge: bytes = b""
    """The challenge of our Open, which the holder's proof must answer."""

    @property
    def label(self) -> str:
        """The session's name for this connection: the holder, plus ``#N`` for its extra connections."""
        return self.endpoint.display if self.number == 1 else f"{self.endpoint.display}#{self.number}"


def connect_all(bus: Bus, sources: Sequence[Endpoint], connections: int, timeout: float) -> list[Conn]:
    """``connections`` DEALERs to every holder in ``sources``, each handshake checked within ``timeout`` seconds;
    a holder that cannot be reached is skipped (warned when there are others), and none reachable raises the
    first error (an authentication failure before any other)."""
    conns: list[Conn] = []
    errors: list[OverdriveError] = []
    patient = len(set(sources)) == 1  # with others to ask, a holder that refuses is skipped at once
    for endpoint in dict.fromkeys(sources):
        for number in range(1, connections + 1):
            sock = bus.client(zmq.DEALER, hwm=RECEIVE_QUEUE)
            sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
            try:
                bus.connect(sock, endpoint, timeout=timeout, patient=patient)
            except BusError as exc:
                sock.close(linger=0)
                if number == 1:  # an extra connection failing just means fewer connections to that holder
                    errors.append(exc)
                    if len(sources) > 1:
                        log.warning("skipping a holder: %s", exc)
                break
            conn = Conn(endpoint, sock, number=number)
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


IMPOSTOR = "not the holder it claims to be"
"""What a holder is called that cannot prove to be the node the index names, or that served bytes which are not the
file (the whole-file hash)."""


def open_all(conns: Sequence[Conn], want: Wanted, check: Callable[[], None], identity: NodeIdentity) -> list[Plan]:
    """Send Open to every holder, wait for their answers, and return the plans to try, best first: the one most
    holders serve, then the others (with one content hash, a different plan is a different chunking or a holder
    that lies; the fetcher tries the next one if the first does not hash to the content hash).

    Every Open challenges the holder to prove its identity to ``identity`` (ours); a holder whose answer does not
    prove one of the node ids the index names for it (:attr:`Conn.holders`) is :data:`IMPOSTOR`: said once at
    warning level and not used.

    An Open given up (no answer in time) is withdrawn at once with ``Cancel``, so the holder frees its slot (and
    stops building the file's chunk table if nobody else waits for it); one still pending when we stop (Ctrl-C) is
    withdrawn by :func:`close_all`.
    """
    first = secrets.randbits(48)  # random: the holder matches a Cancel by our node id and rid
    for rid, conn in enumerate(conns, first):
        opener = proof.challenge_open(identity, rid, want.name, want.content_hash, want.chunk_size)
        conn.sock.send_multipart(CODEC.encode(opener))
        conn.rid, conn.challenge = rid, opener.challenge
    timeout = want.timeout
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
            cancel(conn)
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
                    cancel(conn)
                continue
            if isinstance(msg, WrongService):  # a master (or another overdrive service), not a share
                for rid in [r for r, c in pending.items() if c is conn]:
                    del pending[rid]
                    conn.refused = f"{WRONG_SERVICE}{wrong_kind(conn.endpoint.display, msg.kind, SHARE)}"
                    conn.rid = -1
                continue
            if not isinstance(msg, (Opened, Refused, Working)) or pending.get(msg.rid) is not conn:
                continue
            if isinstance(msg, Working):
                # once, and only while no holder is ready: a holder cannot keep us waiting by repeating it, nor
                # hold up a fetch others can serve; the size it claims counts for no more than the index's
                if msg.rid not in working and not any(c.plan for c in conns):
                    working.add(msg.rid)
                    claimed = min(msg.size, want.size) if want.size else msg.size
                    deadlines[msg.rid] = time.monotonic() + open_budget(timeout, claimed)
                continue
            del pending[msg.rid]
            conn.rid = -1
            if isinstance(msg, Refused):
                conn.refused = f"{msg.reason}: {from_holder(msg.detail)}" if msg.detail else msg.reason
                continue
            why = proof.check(identity, msg, conn.challenge, conn.holders)
            if why:  # nothing else it says counts
                conn.refused = f"{IMPOSTOR} ({why})"
                log.warning("holder %s is %s (%s); skipping it", conn.label, IMPOSTOR, why)
                continue
            if want.content_hash and msg.content_hash != want.content_hash:
                conn.refused = "opened another version than the one asked for"
                continue
            if want.size and msg.size != want.size:  # one content hash, one size: the holder is lying
                conn.refused = f"says the file is {msg.size:,} bytes, the index {want.size:,}"
                continue
            try:
                conn.plan = Plan.from_opened(msg, payload[0])
            except TransferError as exc:
                conn.refused = str(exc)
                continue
            conn.tid = msg.tid
            for rid in working & pending.keys():  # a holder is ready: the others get the plain open timeout
                deadlines[rid] = min(deadlines[rid], max(started + timeout, time.monotonic()))
    plans: list[Plan] = []
    for plan in (c.plan for c in conns if c.plan is not None):
        if plan not in plans:
            plans.append(plan)
    if not plans:
        raise _open_error(want.name, conns)
    plans.sort(key=lambda p: -len({c.endpoint for c in conns if c.plan == p}))  # stable: first answer first
    plans = [p for p in plans if p.content_hash == plans[0].content_hash]  # another version is no fallback
    for conn in conns:
        if conn.plan is not None and conn.plan != plans[0]:
            log.warning("%s serves %s differently from the others; using it only if they fail", conn.label, want.name)
    return plans


WRONG_SERVICE = "wrong-service: "
"""How a connection's refusal starts when the service there is not a share (:mod:`overdrive.bus.kind`)."""


def _open_error(name: str, conns: Sequence[Conn]) -> OverdriveError:
    reasons = [c.refused for c in conns]
    where = ", ".join(dict.fromkeys(c.endpoint.display for c in conns))
    if all(r.startswith(WRONG_SERVICE) for r in reasons):
        return WrongServiceError("; ".join(dict.fromkeys(r.removeprefix(WRONG_SERVICE) for r in reasons)))
    if all(r.startswith("not-found") for r in reasons):
        return TransferError(f"{name!r} not found on {where}")
    if any(r.startswith("unsafe") for r in reasons):
        return UnsafePathError(f"{where} refused {name!r} as an unsafe name")
    if all(r.startswith(IMPOSTOR) for r in reasons):
        whys = (c.refused.removeprefix(f"{IMPOSTOR} (").removesuffix(")") for c in conns)
        detail = "; ".join(dict.fromkeys(f"{c.endpoint.display}: {why}" for c, why in zip(conns, whys, strict=True)))
        return TransferError(f"no holder of {name!r} proved to be the node the index names: {detail}")
    if all(r.startswith("changed") for r in reasons):
        return TransferError(f"{name!r} on {where} is not the version asked for (it changed); look it up again")
    detail = "; ".join(dict.fromkeys(f"{c.endpoint.display}: {c.refused}" for c in conns))
    return TransferError(f"cannot open {name!r}: {detail}")


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


def stall_error(session: FetchSession, name: str) -> TransferError:
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


def cancel(conn: Conn) -> None:
    """Withdraw ``conn``'s unanswered Open (the holder drops it, even if its answer is already on the way)."""
    if conn.rid >= 0:
        try:
            conn.sock.send_multipart(CODEC.encode(Cancel(rid=conn.rid)), zmq.NOBLOCK)
        except zmq.ZMQError:
            return
        conn.cancelled = True
        conn.rid = -1


def close_all(conns: Sequence[Conn]) -> None:
    for conn in conns:
        cancel(conn)  # an Open still waiting (stopped while opening)
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
