"""The streamer's end of the chat: a ROUTER that feeds a :class:`~overdrive.media.chat_room.ChatRoom`.

:class:`ChatServer` binds a CURVE ROUTER (same network key as the stream; the stream's port + 1 when free, else an
ephemeral port), answers every upstream message with the room's :class:`~overdrive.media.chat.Reply`, and hands
accepted :class:`~overdrive.media.protocol.ChatLine` s and :class:`~overdrive.media.protocol.Presence` snapshots
to ``emit``, which is the streamer's (:meth:`~overdrive.media.streamer.Streamer.emit`): they go out signed on the
stream's PUB like every other stream message, and the streamer's recorder sees them.

:func:`attach_chat` wires it to a streamer as a producer: bound before the streamer starts (so
``StreamInfo.chat_port`` announces it), run while the streamer runs.

The sender is whoever the socket says: its routing id (one connection), its ZAP-authenticated node id, its
address; the streamer's own node id (the lecturer, e.g. ``overdrive chat --say`` on her machine) is the host.
Malformed messages are dropped and counted (``malformed``); answers to a peer that does not read are dropped at
the ROUTER's high-water mark.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.admission import Limits
from overdrive.bus.service import ZmqService
from overdrive.bus.sockets import Bus
from overdrive.errors import ConfigError, MediaError, ProtocolError
from overdrive.media.chat import CHAT_CODEC, MAX_HEADER, Reply
from overdrive.media.chat_room import ChatLimits, ChatRoom, Peer
from overdrive.media.hooks import Emit, ProducerHost

log = logging.getLogger(__name__)

CHAT_HWM = 100
"""Messages queued per chat connection, each way."""
CHAT_CONNECTIONS = Limits(per_address=16, total=1024)
"""Chat connections at once: per address (a gateway needs one), and in total."""
TICK = 0.5
"""Seconds between two looks at silent members and due presence snapshots."""
MAX_BATCH = 500
"""Upstream messages handled before the room's output is published."""


class ChatServer(ZmqService):
    """The chat ROUTER and its room; ``bind()`` first, then ``start()``; ``emit`` publishes on the stream."""

    name = "overdrive-chat"
    error_type = MediaError

    def __init__(self, bus: Bus, stream_id: str, emit: Emit | None = None, limits: ChatLimits | None = None) -> None:
        super().__init__(bus)
        self.room = ChatRoom(stream_id, limits)
        self.emit = emit
        self.endpoint: Endpoint | None = None
        self.malformed = 0
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]

    def bind(self, near: Endpoint) -> Endpoint:
        """Bind on ``near``'s host, port ``near.port + 1`` if free, else an ephemeral one (idempotent)."""
        if self.endpoint is not None:
            return self.endpoint
        sock = self.bus.server(zmq.ROUTER, hwm=CHAT_HWM, max_message=MAX_HEADER, limits=CHAT_CONNECTIONS)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 0)  # an answer to a peer that left is dropped, not an error
        try:
            try:
                wanted = Endpoint(near.host, near.port + 1 if 0 < near.port < 65535 else 0)
                self.endpoint = self.bus.bind(sock, wanted)
            except ConfigError:
                self.endpoint = self.bus.bind(sock, Endpoint(near.host, 0))
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock
        return self.endpoint

    @property
    def port(self) -> int:
        return self.endpoint.port if self.endpoint is not None else 0

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if not self.running and self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    # -- the loop ------------------------------------------------------------------------------------------------
    def setup(self) -> None:
        if self._sock is None:
            raise MediaError("the chat server was not bound")

    def teardown(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        next_tick = 0.0
        while True:
            events = dict(poller.poll(int(TICK * 1000)))
            if control in events:
                return
            if sock in events:
                for _ in range(MAX_BATCH):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.handle(sock, frames)
            now = time.monotonic()
            if now >= next_tick:
                self.room.tick(now, time.time_ns())
                next_tick = now + TICK
            self._publish(now)

    def handle(self, sock: zmq.Socket, frames: list[zmq.Frame]) -> None:  # type: ignore[type-arg]
        """Answer one ``[routing id, header]`` from the ROUTER."""
        if len(frames) != 2:
            self.malformed += 1
            return
        try:
            message, _ = CHAT_CODEC.decode(frames[1:])
            if isinstance(message, Reply):
                raise ProtocolError("a reply sent upstream")
        except ProtocolError as exc:
            self.malformed += 1
            log.debug("dropped a malformed chat message: %s", exc)
            return
        node = self.bus.peer_id(frames[1])
        peer = Peer(frames[0].bytes, node, self.bus.peer_address(frames[1]), host=node == self.bus.node_id)
        reply = self.room.receive(peer, message, time.monotonic(), time.time_ns())
        try:
            sock.send_multipart([frames[0].bytes, *CHAT_CODEC.encode(reply)], zmq.NOBLOCK)
        except zmq.Again:
            log.debug("chat answer dropped: the peer does not read")

    def _publish(self, now: float) -> None:
        lines = self.room.take_lines()
        presence = self.room.presence(now, time.time_ns())
        if self.emit is None:
            return
        for line in lines:
            self.emit(line, b"")
        if presence is not None:
            self.emit(presence, b"")


class _ChatProducer:
    """Runs a bound :class:`ChatServer` while its streamer runs (the streamer's producer hook)."""

    def __init__(self, server: ChatServer) -> None:
        self.server = server

    def start(self, emit: Emit) -> None:
        self.server.emit = emit
        self.server.start()

    def stop(self) -> None:
        self.server.stop()


class ChatHost(ProducerHost, Protocol):
    """A streamer as the chat sees it: a producer host with the stream's endpoint and a chat port to announce."""

    endpoint: Endpoint | None
    chat_port: int

    def bind(self) -> Endpoint: ...


def attach_chat(streamer: ChatHost, bus: Bus, limits: ChatLimits | None = None) -> ChatServer:
    """Give ``streamer`` a chat: bind its ROUTER next to the stream's port, announce it, run it with the stream."""
    server = ChatServer(bus, streamer.stream_id, limits=limits)
    endpoint = server.bind(streamer.bind())
    streamer.chat_port = endpoint.port
    streamer.add_producer(_ChatProducer(server))
    return server
