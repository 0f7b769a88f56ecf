"""Connection limits per address and per socket, applied when a client authenticates.

Node identities are free to make, so any bound kept per identity can be multiplied by opening more connections.
:class:`Admission` counts the live TCP connections of one listening socket per peer address (from the socket
monitor: accepted, disconnected) and refuses, at the ZAP step, a connection whose address already holds
``per_address`` of them or that would take the socket past ``total``. One address counts at most ``per_address``
towards ``total``, so a student opening many connections from one laptop fills only their own share. Addresses that
never authenticated do not count towards ``total`` at all: an outsider's half-open connections (which never reach
ZAP and which libzmq drops after its handshake interval) cannot lock out the class.

The refusal is ZAP status 400 with its own reason. A client tells it from a wrong password by the event: a wrong key
fails inside CURVE (``HANDSHAKE_FAILED_NO_DETAIL``), a ZAP refusal is ``HANDSHAKE_FAILED_AUTH`` (400), and overdrive's
ZAP refuses a CURVE client for no other reason. (Status 300, "temporary", would be clearer but libzmq then drops the
connection silently and the client retries for ever.)
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections import Counter
from dataclasses import dataclass

import zmq
from zmq.utils.monitor import recv_monitor_message

log = logging.getLogger(__name__)

BUSY_STATUS = b"400"
"""ZAP status of a refused connection (see the module docstring)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Live connections one listening socket admits."""

    per_address: int = 64
    """From one peer address (one machine on a LAN)."""
    total: int = 4096
    """From all addresses together."""

    def __post_init__(self) -> None:
        if not 1 <= self.per_address <= self.total:
            raise ValueError("connection limits need 1 <= per_address <= total")


class Admission:
    """The counting and the decision; no sockets. Thread-safe: the monitor and ZAP threads both call it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._address_of: dict[int, str] = {}
        self._live: Counter[str] = Counter()
        self._admitted: set[str] = set()
        self.refused = 0

    def accepted(self, fd: int, address: str) -> None:
        """The socket accepted a TCP connection on ``fd`` from ``address``."""
        with self._lock:
            old = self._address_of.pop(fd, None)
            if old is not None:
                self._forget(old)
            self._address_of[fd] = address
            self._live[address] += 1

    def closed(self, fd: int) -> None:
        """The connection on ``fd`` ended (or was refused)."""
        with self._lock:
            address = self._address_of.pop(fd, None)
            if address is not None:
                self._forget(address)

    def _forget(self, address: str) -> None:
        self._live[address] -= 1
        if self._live[address] <= 0:
            del self._live[address]
            self._admitted.discard(address)

    def admit(self, address: str) -> bool:
        """Whether a connection from ``address`` that completed its handshake may stay."""
        per = self.limits.per_address
        with self._lock:
            live = self._live.get(address, 0)
            total = sum(min(self._live[a], per) for a in self._admitted | {address})
            if live > per or total > self.limits.total:
                self.refused += 1
                return False
            self._admitted.add(address)
            return True

    def live(self, address: str | None = None) -> int:
        """Live connections from ``address``, or from every address."""
        with self._lock:
            return self._live.get(address, 0) if address is not None else sum(self._live.values())


_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_MONITOR_STOPPED


def _peer_address(fd: int) -> str:
    """The IP address at the other end of ``fd`` (a duplicate is inspected, so libzmq's own fd is untouched)."""
    try:
        with socket.socket(fileno=os.dup(fd)) as dup:
            peer = dup.getpeername()
    except OSError:
        return ""
    return str(peer[0]) if isinstance(peer, tuple) else ""


class AdmissionMonitor:
    """One thread reading the monitor sockets of every listening socket with limits and feeding its Admission.

    libzmq reports an accepted connection on the monitor before the client's handshake even starts, but on another
    thread than ZAP's; :meth:`sync` (called by the ZAP handler before each decision) waits until every event queued
    so far has been counted, so decisions are exact rather than racing the monitor.
    """

    POLL_MS = 100
    SYNC_TIMEOUT_MS = 500

    def __init__(self, context: zmq.Context) -> None:  # type: ignore[type-arg]
        self._context = context
        self._lock = threading.Lock()
        self._pending: list[tuple[zmq.Socket, Admission]] = []  # type: ignore[type-arg]
        self._stop = threading.Event()
        self._endpoint = f"inproc://overdrive-admission-{id(self)}"
        self._caller: zmq.Socket | None = None  # type: ignore[type-arg]
        self._token = 0
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name="overdrive-admission", daemon=True)
        self._thread.start()
        ready.wait()

    def watch(self, sock: zmq.Socket, admission: Admission) -> None:  # type: ignore[type-arg]
        """Count ``sock``'s connections into ``admission`` from now on (call before bind)."""
        monitor = sock.get_monitor_socket(_EVENTS)
        with self._lock:
            self._pending.append((monitor, admission))

    def sync(self) -> None:
        """Return once every event queued before this call has been counted (or after a short timeout).
        Called from one thread only (the ZAP handler's)."""
        if self._caller is None:
            self._caller = self._context.socket(zmq.DEALER)
            self._caller.linger = 0
            self._caller.connect(self._endpoint)
        self._token += 1
        token = self._token.to_bytes(8, "big")
        self._caller.send(token)
        while self._caller.poll(self.SYNC_TIMEOUT_MS):
            if self._caller.recv() == token:
                return
        log.warning("the connection counter did not answer; deciding on the counts it has")

    def stop(self) -> None:
        """Stop the thread; call after the ZAP handler has stopped (so :meth:`sync` is not running)."""
        self._stop.set()
        self._thread.join(timeout=2)
        if self._caller is not None:
            self._caller.close(linger=0)
            self._caller = None

    def _run(self, ready: threading.Event) -> None:
        watched: dict[zmq.Socket, Admission] = {}  # type: ignore[type-arg]
        server = self._context.socket(zmq.ROUTER)
        server.linger = 0
        server.bind(self._endpoint)
        poller = zmq.Poller()
        poller.register(server, zmq.POLLIN)
        ready.set()
        try:
            while not self._stop.is_set():
                self._adopt(watched, poller)
                events = dict(poller.poll(self.POLL_MS))
                if server in events:
                    self._adopt(watched, poller)
                    for monitor in list(watched):
                        self._drain(monitor, watched, poller)
                    while True:
                        try:
                            request = server.recv_multipart(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        server.send_multipart(request)
                for monitor in events:
                    if monitor is not server and monitor in watched:
                        self._drain(monitor, watched, poller)  # type: ignore[arg-type]
        finally:
            for monitor in watched:
                monitor.close(linger=0)
            server.close(linger=0)

    def _adopt(self, watched: dict[zmq.Socket, Admission], poller: zmq.Poller) -> None:  # type: ignore[type-arg]
        with self._lock:
            pending, self._pending = self._pending, []
        for monitor, admission in pending:
            watched[monitor] = admission
            poller.register(monitor, zmq.POLLIN)

    @staticmethod
    def _drain(monitor: zmq.Socket, watched: dict[zmq.Socket, Admission], poller: zmq.Poller) -> None:  # type: ignore[type-arg]
        """Apply every queued event; stop watching once the watched socket has closed."""
        admission = watched[monitor]
        while True:
            try:
                event = recv_monitor_message(monitor, zmq.NOBLOCK)
                kind, fd = event["event"], event["value"]
            except zmq.Again:
                return
            except zmq.ZMQError:
                kind, fd = zmq.EVENT_MONITOR_STOPPED, 0
            if kind == zmq.EVENT_ACCEPTED:
                admission.accepted(fd, _peer_address(fd))
            elif kind == zmq.EVENT_DISCONNECTED:
                admission.closed(fd)
            elif kind == zmq.EVENT_MONITOR_STOPPED:
                poller.unregister(monitor)
                del watched[monitor]
                monitor.close(linger=0)
                return
