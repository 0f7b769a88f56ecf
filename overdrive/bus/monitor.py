"""Surfacing what ZeroMQ hides: a connect that never completes its CURVE handshake.

libzmq retries a failed handshake forever and reports nothing to the application. :func:`await_handshake` watches
the socket monitor after ``connect`` and turns the outcome into a result within a deadline: success, ``AuthError``
(the peer rejected our keys or we rejected its, or it took the connection and never answered), or
``UnreachableError`` (nothing answered; refused connections are named as such, after the deadline, since the peer
may be starting up).
"""

from __future__ import annotations

import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from overdrive.errors import AuthError, UnreachableError

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
) -> None:
    """Connect ``sock`` to ``endpoint`` and wait until the handshake succeeds, or raise.

    A refused connection is retried until the deadline when ``patient`` (the peer may be starting: a viewer run
    just before its streamer); otherwise it raises at once, for a caller with other peers to try.
    On failure the connection is dropped (``disconnect``) so libzmq stops retrying with bad keys.
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
                raise AuthError(
                    f"authentication failed for {peer}: wrong password or key file, a different network name, "
                    "or not an overdrive service at that port"
                )
        _drop(sock, endpoint)
        if connected:
            raise AuthError(
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


def _drop(sock: zmq.Socket, endpoint: str) -> None:  # type: ignore[type-arg]
    try:
        sock.disconnect(endpoint)
    except zmq.ZMQError:
        pass
