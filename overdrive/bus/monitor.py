"""Surfacing what ZeroMQ hides: a connect that never completes its CURVE handshake.

libzmq retries a failed handshake forever and reports nothing to the application. :func:`await_handshake` watches
the socket monitor after ``connect`` and turns the outcome into a result within a deadline: success, ``AuthError``
(the peer rejected our keys or we rejected its, or it took the connection and never answered), or
``UnreachableError`` (nothing answered; refused connections are named as such, after the deadline, since the peer
may be starting up).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import zmq
from zmq.utils.monitor import recv_monitor_message

from overdrive.bus.kind import wrong_kind
from overdrive.errors import AuthError, SilentPeerError, UnreachableError, WrongServiceError

HANDSHAKE_TIMEOUT = 3.0
BUSY = 400
"""ZAP status with which a server refuses a CURVE client: only when its connection limits are reached
(overdrive.bus.admission); a wrong key fails before ZAP, with another event."""

_FAILED = {
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
}
_WATCHED = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_RETRIED
)


def await_handshake(
    sock: zmq.Socket,  # type: ignore[type-arg]
    endpoint: str,
    peer: str,
    timeout: float = HANDSHAKE_TIMEOUT,
    *,
    patient: bool = True,
    probe: Callable[[int], zmq.Socket] | None = None,  # type: ignore[type-arg]
) -> None:
    """Connect ``sock`` to ``endpoint`` and wait until the handshake succeeds, or raise.

    A refused connection is retried until the deadline when ``patient`` (the peer may be starting: a viewer run
    just before its streamer); otherwise it raises at once, for a caller with other peers to try.
    On failure the connection is dropped (``disconnect``) so libzmq stops retrying with bad keys.
    ``probe`` makes a client socket of a given type with ``sock``'s keys: given, a failed handshake is told apart
    from a wrong kind of service (:class:`WrongServiceError`).
    """
    monitor = sock.get_monitor_socket(_WATCHED)
    try:
        sock.connect(endpoint)
        deadline = time.monotonic() + timeout
        connected = refused = False
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not monitor.poll(int(left * 1000) + 1):
                break
            message = recv_monitor_message(monitor)
            event = message["event"]
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                return
            if event == zmq.EVENT_CONNECTED:
                connected = True
            elif event == zmq.EVENT_CONNECT_RETRIED:  # refused (or no route); it may still start listening
                refused = True
                if not patient and not connected:
                    break
            elif event in _FAILED:
                _drop(sock, endpoint)
                if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH and message["value"] == BUSY:
                    raise UnreachableError(
                        f"{peer} is full: too many connections from this machine or in all (try again later)"
                    )
                kind = _service_kind(sock, endpoint, probe) if probe is not None else None
                if kind is not None:
                    raise WrongServiceError(_wrong_service(peer, kind))
                raise AuthError(
                    f"authentication failed for {peer}: wrong password or key file, a different network name, "
                    "or not an overdrive service at that port"
                )
        _drop(sock, endpoint)
        if connected:
            raise SilentPeerError(
                f"no secure handshake with {peer} within {timeout:g} s: it took the connection but did not answer "
                "(a stopped or overloaded process, or not an overdrive service at that port)"
            )
        if refused:
            raise UnreachableError(
                f"no answer from {peer}: nothing is listening there (is it running, and is the port right?)"
            )
        raise UnreachableError(f"no answer from {peer} within {timeout:g} s (is it running, and is the port right?)")
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)


PROBE_TIMEOUT = 1.0
"""Seconds a probe with another socket type may take to finish its handshake (a LAN round trip or two)."""

_PROBE_TYPES = {zmq.SUB: zmq.DEALER, zmq.DEALER: zmq.SUB}
"""For a failed handshake, the socket type that tells what the peer is instead: a viewer's SUB refused by a
ROUTER (a master or a share) is accepted by a DEALER; a DEALER refused by a PUB (a stream) is accepted by a SUB."""

_KINDS = {zmq.DEALER: "master or share", zmq.SUB: "stream"}


def _service_kind(
    sock: zmq.Socket,  # type: ignore[type-arg]
    endpoint: str,
    make: Callable[[int], zmq.Socket],  # type: ignore[type-arg]
) -> str | None:
    """What kind of overdrive service ``endpoint`` is when a handshake with ``sock`` failed: a mismatch of socket
    types and a wrong key look the same to the connecting side (the peer closes the connection), so connect once
    more, with the same keys, as the other kind of client. None when that fails too (then the keys are wrong)."""
    probe_type = _PROBE_TYPES.get(zmq.SocketType(sock.socket_type))
    if probe_type is None:
        return None
    probe = make(probe_type)
    try:
        monitor = probe.get_monitor_socket(_WATCHED)
        try:
            probe.connect(endpoint)
            deadline = time.monotonic() + PROBE_TIMEOUT
            while (left := deadline - time.monotonic()) > 0 and monitor.poll(int(left * 1000) + 1):
                event = recv_monitor_message(monitor)["event"]
                if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                    return _KINDS[probe_type]
                if event in _FAILED:
                    return None
            return None
        finally:
            probe.disable_monitor()
            monitor.close(linger=0)
    finally:
        probe.close(linger=0)


def _wrong_service(peer: str, kind: str) -> str:
    return wrong_kind(peer, kind, "stream" if kind != "stream" else "master or share")


def _drop(sock: zmq.Socket, endpoint: str) -> None:  # type: ignore[type-arg]
    try:
        sock.disconnect(endpoint)
    except zmq.ZMQError:
        pass
