"""The thin layer every ZeroMQ socket in overdrive is made through.

:class:`Bus` owns one context and, when secure, one ZAP authenticator. ``server()`` sockets are CURVE servers with
the network key; ``client()`` sockets are CURVE clients with this node's identity. Every socket gets linger 0,
bounded queues and a message-size cap, so a hostile peer cannot make us buffer without limit.
"""

from __future__ import annotations

import logging
import socket
import threading
from dataclasses import dataclass

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.admission import Admission, AdmissionMonitor, Limits
from overdrive.bus.auth import CurveOnlyAuthenticator
from overdrive.bus.monitor import HANDSHAKE_TIMEOUT, await_handshake
from overdrive.bus.security import NetworkKey, NodeIdentity
from overdrive.errors import BusError, ConfigError, HostNotFoundError

log = logging.getLogger(__name__)

DEFAULT_HWM = 1000
DEFAULT_MAX_MESSAGE = 64 << 20
"""Largest single frame any overdrive socket accepts (ZMQ_MAXMSGSIZE): bigger ones drop the connection."""

_NODE_PROPERTY = "X-Node-Id"

DEFAULT_LIMITS = Limits()
"""Connections a listening socket admits unless its owner says otherwise: 64 per address, 4,096 in all."""


@dataclass(frozen=True, slots=True)
class Security:
    """How sockets authenticate: a network key (CURVE) or ``None`` for ``--insecure`` (plain TCP)."""

    identity: NodeIdentity
    key: NetworkKey | None

    @property
    def insecure(self) -> bool:
        return self.key is None

    @property
    def node_id(self) -> str:
        return self.identity.node_id


class Bus:
    """One ZeroMQ context plus the security policy for every socket made from it."""

    def __init__(self, security: Security, context: zmq.Context | None = None) -> None:  # type: ignore[type-arg]
        self.security = security
        self.context: zmq.Context = context or zmq.Context()  # type: ignore[type-arg]
        self._own_context = context is None
        self._auth: CurveOnlyAuthenticator | None = None
        self._monitor: AdmissionMonitor | None = None
        self._admissions: dict[zmq.Socket, Admission] = {}  # type: ignore[type-arg]
        self._lock = threading.Lock()

    @property
    def node_id(self) -> str:
        return self.security.node_id

    def __enter__(self) -> Bus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the authenticator and, if this bus made the context, destroy it (linger 0)."""
        with self._lock:
            if self._auth is not None:
                self._auth.stop()
                self._auth = None
            if self._monitor is not None:
                self._monitor.stop()
                self._monitor = None
        if self._own_context:
            self.context.destroy(linger=0)

    def _ensure_auth(self) -> tuple[CurveOnlyAuthenticator, AdmissionMonitor]:
        with self._lock:
            if self._auth is None:
                self._auth = CurveOnlyAuthenticator(self.context)
                self._auth.start()
            if self._monitor is None:
                self._monitor = self._auth.monitor = AdmissionMonitor(self.context)
            return self._auth, self._monitor

    def _base(self, kind: int, hwm: int, max_message: int) -> zmq.Socket:  # type: ignore[type-arg]
        sock: zmq.Socket = self.context.socket(kind)  # type: ignore[type-arg]
        sock.linger = 0
        sock.sndhwm = hwm
        sock.rcvhwm = hwm
        sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        return sock

    def server(
        self,
        kind: int,
        *,
        hwm: int = DEFAULT_HWM,
        max_message: int = DEFAULT_MAX_MESSAGE,
        limits: Limits = DEFAULT_LIMITS,
    ) -> zmq.Socket:  # type: ignore[type-arg]
        """A socket that binds and admits only peers holding the network key, within ``limits`` connections."""
        sock = self._base(kind, hwm, max_message)
        key = self.security.key
        if key is not None:
            auth, monitor = self._ensure_auth()
            admission = Admission(limits)
            sock.curve_server = True
            sock.curve_secretkey = key.server_secret
            sock.curve_publickey = key.server_public
            sock.zap_domain = auth.domain_for(admission).encode()
            monitor.watch(sock, admission)
            self._admissions[sock] = admission
        return sock

    def admission(self, sock: zmq.Socket) -> Admission | None:  # type: ignore[type-arg]
        """The connection counts of a socket made by :meth:`server` (None when insecure)."""
        return self._admissions.get(sock)

    def client(self, kind: int, *, hwm: int = DEFAULT_HWM, max_message: int = DEFAULT_MAX_MESSAGE) -> zmq.Socket:  # type: ignore[type-arg]
        """A socket that connects with this node's identity to servers of the same network."""
        sock = self._base(kind, hwm, max_message)
        key = self.security.key
        if key is not None:
            sock.curve_serverkey = key.server_public
            sock.curve_publickey = self.security.identity.public
            sock.curve_secretkey = self.security.identity.secret
        else:
            sock.setsockopt(zmq.METADATA, f"{_NODE_PROPERTY}:{self.node_id}".encode())
        return sock

    @staticmethod
    def bind(sock: zmq.Socket, endpoint: Endpoint) -> Endpoint:  # type: ignore[type-arg]
        """Bind to ``endpoint``; port 0 picks a free port. Returns the endpoint actually bound."""
        try:
            if endpoint.port == 0:
                port = sock.bind_to_random_port(f"tcp://{_bracket(endpoint.host)}")
                return Endpoint(endpoint.host, port)
            sock.bind(str(endpoint))
        except zmq.ZMQError as exc:
            if exc.errno == zmq.EADDRINUSE:
                raise ConfigError(f"{endpoint.display} is already in use (is another overdrive running?)") from exc
            raise ConfigError(f"cannot bind {endpoint.display}: {exc.strerror}") from exc
        return endpoint

    def connect(
        self,
        sock: zmq.Socket,  # type: ignore[type-arg]
        endpoint: Endpoint,
        *,
        verify: bool = True,
        timeout: float = HANDSHAKE_TIMEOUT,
        patient: bool = True,
    ) -> None:
        """Connect; with ``verify`` wait for the secure handshake and raise AuthError/UnreachableError on failure
        (a refused connection at once unless ``patient``: see :func:`~overdrive.bus.monitor.await_handshake`)."""
        if not verify:
            sock.connect(str(endpoint))
            return
        check_resolves(endpoint)
        await_handshake(sock, str(endpoint), endpoint.display, timeout, patient=patient, probe=self.client)

    def peer_id(self, frame: zmq.Frame) -> str:
        """Node id of the connection a received frame came from (authenticated unless insecure)."""
        prop = "User-Id" if not self.security.insecure else _NODE_PROPERTY
        try:
            value = frame.get(prop)
        except zmq.ZMQError as exc:
            raise BusError(f"frame carries no {prop}; was it received with copy=False?") from exc
        return str(value) if value else ""

    @staticmethod
    def peer_address(frame: zmq.Frame) -> str:
        """Network address (IP) of the connection a frame received with ``copy=False`` came from; "" if none."""
        try:
            value = frame.get("Peer-Address")
        except zmq.ZMQError:
            return ""
        return str(value) if value else ""


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def check_resolves(endpoint: Endpoint) -> None:
    """A host name that does not resolve is said at once, as such: libzmq only retries it like a refused port."""
    try:
        socket.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise HostNotFoundError(f"cannot find {endpoint.host!r}: DNS lookup failed ({exc.strerror})") from None
    except UnicodeError:  # the IDNA codec's: an empty or over-long label ('a..b')
        raise HostNotFoundError(f"cannot find {endpoint.host!r}: not a valid host name") from None
