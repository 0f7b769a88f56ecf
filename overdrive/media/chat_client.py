"""The viewer's end of the chat: send on the back channel (:class:`ChatClient`), follow the lines (:class:`ChatFeed`).

**ChatClient** is one DEALER connection to a streamer's chat ROUTER (``StreamInfo.chat_port`` on the stream's host)
that speaks for one member or many. Every member is named by a label, ``via``: a native viewer or the CLI uses
``""``; a web gateway holds ONE client for all its browsers and passes each browser session's own label, so the
streamer gives each browser its own name and rate budget. Its methods are thread-safe and never block: each
returns a :class:`concurrent.futures.Future` that resolves to the streamer's
:class:`~overdrive.media.chat.Reply` (``reply.name`` is the shown name) or fails with
:class:`~overdrive.media.chat.ChatRefusedError` (``.error`` is ``too-long``, ``empty``, ``rate``, ``busy``, ``full``,
``not-joined`` or ``timeout``; the message is one line for a user). From asyncio: ``await
asyncio.wrap_future(client.say(text, via))``. ::

    client = ChatClient(bus, Endpoint(host, info.chat_port))
    client.start()                                   # connects (AuthError/UnreachableError here), then a thread
    client.join("Ada", kind="web", via=session).result()   # Reply(name="Ada" or "Ada-2", history=(...))
    client.say("hello", via=session).result()
    client.hand(True, via=session)
    client.leave(via=session)
    client.stop()

Joined members are kept alive by a Hello every :data:`HEARTBEAT` seconds (the streamer forgets a member silent for
30 s); after a streamer restart the heartbeat joins them again. **ChatFeed** subscribes to the stream's info and
chat topics only, believes only what the streamer's key signed (:class:`~overdrive.media.trust.StreamTrust`), and
calls ``on_line``/``on_presence``/``on_info`` in its thread; a ``Viewer`` passes the same messages to its
listeners instead. :class:`LineOrder` drops a line seen before (a replay through a relay).
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.service import STOP_TIMEOUT, ZmqService
from overdrive.bus.sockets import Bus
from overdrive.errors import MediaError, ProtocolError
from overdrive.media.chat import CHAT_CODEC, MAX_HEADER, Bye, ChatRefusedError, Hand, Hello, MemberKind, Reply, Say
from overdrive.media.chat import check_text as _check_text
from overdrive.media.protocol import (
    CODEC,
    TOPIC_CHAT,
    TOPIC_END,
    TOPIC_INFO,
    TOPIC_PRESENCE,
    ChatLine,
    Presence,
    StreamEnd,
    StreamInfo,
)
from overdrive.media.trust import StreamTrust, Verdict

log = logging.getLogger(__name__)

HEARTBEAT = 10.0
"""Seconds between two Hellos of a joined member (the streamer's timeout is 30 s)."""
ANSWER_TIMEOUT = 10.0
"""Seconds a request waits for the streamer's answer before it fails with ``timeout``."""
MAX_PENDING = 1024
"""Requests waiting for an answer at once; past that a request fails at once (``busy``)."""
MAX_MEMBERS = 256
"""Members one client speaks for (the streamer allows as many per connection)."""


class ChatClient(ZmqService):
    """One chat connection to a streamer for one or many members; thread-safe, non-blocking methods."""

    name = "overdrive-chat-client"
    error_type = MediaError

    def __init__(
        self, bus: Bus, endpoint: Endpoint, *, connect_timeout: float = 3.0, answer_timeout: float = ANSWER_TIMEOUT
    ) -> None:
        super().__init__(bus)
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.answer_timeout = answer_timeout
        self._lock = threading.Lock()
        self._outbox: deque[tuple[Hello | Say | Hand | Bye, Future[Reply] | None]] = deque()
        self._pending: dict[int, tuple[float, Future[Reply]]] = {}
        self._members: dict[str, tuple[str, MemberKind]] = {}  # via -> (wished name, kind), for heartbeats
        self._ref = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]

    # -- the API (any thread) ------------------------------------------------------------------------------------
    def join(self, name: str, kind: MemberKind = "native", via: str = "") -> Future[Reply]:
        """Join (or rename nothing: an existing member stays) as ``name``; kept alive until :meth:`leave`."""
        with self._lock:
            if via not in self._members and len(self._members) >= MAX_MEMBERS:
                return _failed("full", f"this client speaks for {MAX_MEMBERS} members already")
            self._members[via] = (name, kind)
        return self._request(lambda ref: Hello(ref=ref, name=name, kind=kind, via=via))

    def say(self, text: str, via: str = "") -> Future[Reply]:
        """Send one chat line for member ``via`` (checked here first: empty or too long fails at once)."""
        try:
            text = _check_text(text)
        except ValueError as exc:
            return _failed("empty" if not text.strip() else "too-long", str(exc))
        return self._request(lambda ref: Say(ref=ref, text=text, via=via))

    def hand(self, up: bool = True, via: str = "") -> Future[Reply]:
        """Raise (or lower) member ``via``'s hand."""
        return self._request(lambda ref: Hand(ref=ref, up=up, via=via))

    def leave(self, via: str = "") -> Future[Reply]:
        """Member ``via`` leaves (no more heartbeats for it)."""
        with self._lock:
            self._members.pop(via, None)
        return self._request(lambda ref: Bye(ref=ref, via=via))

    @property
    def members(self) -> list[str]:
        """The labels this client keeps alive."""
        with self._lock:
            return list(self._members)

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect and verify the handshake (AuthError on a wrong key, UnreachableError if nothing listens)."""
        if self._sock is not None:
            return
        sock = self.bus.client(zmq.DEALER, hwm=MAX_PENDING, max_message=MAX_HEADER)
        try:
            self.bus.connect(sock, self.endpoint, verify=True, timeout=self.connect_timeout, patient=False)
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock

    def start(self, timeout: float = 10.0) -> None:
        self.connect()
        super().start(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop; members still joined are sent a Bye first (best effort), waiting requests fail."""
        super().stop(timeout)
        if not self.running:
            if self._sock is not None:
                self._sock.close(linger=0)
                self._sock = None
            self._fail_all("the chat connection was closed")
            self._wake_r.close()
            self._wake_w.close()

    # -- the thread ----------------------------------------------------------------------------------------------
    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        sock = self._sock
        assert sock is not None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        poller.register(self._wake_r.fileno(), zmq.POLLIN)
        next_beat = time.monotonic() + HEARTBEAT
        while True:
            events = dict(poller.poll(500))
            if control in events:
                self._goodbye(sock)
                return
            if self._wake_r.fileno() in events:
                try:
                    self._wake_r.recv(4096)
                except BlockingIOError:
                    pass
            self._send_queued(sock)
            if sock in events:
                self._receive(sock)
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + HEARTBEAT
                with self._lock:
                    beats = list(self._members.items())
                for via, (name, kind) in beats:
                    self._send(sock, Hello(ref=self._next_ref(), name=name, kind=kind, via=via), None)
            self._expire(now)

    def teardown(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _request(self, build: Callable[[int], Hello | Say | Hand | Bye]) -> Future[Reply]:
        future: Future[Reply] = Future()
        with self._lock:
            if len(self._pending) + len(self._outbox) >= MAX_PENDING:
                return _failed("busy", "too many chat requests waiting for the streamer")
            self._outbox.append((build(self._next_ref()), future))
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the pipe is full (a wake is pending anyway) or closed (stop fails the future)
        return future

    def _next_ref(self) -> int:
        self._ref += 1
        return self._ref

    def _send_queued(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        while True:
            with self._lock:
                if not self._outbox:
                    return
                message, future = self._outbox.popleft()
            self._send(sock, message, future)

    def _send(self, sock: zmq.Socket, message: Hello | Say | Hand | Bye, future: Future[Reply] | None) -> None:  # type: ignore[type-arg]
        try:
            sock.send_multipart(CHAT_CODEC.encode(message), zmq.NOBLOCK)
        except zmq.Again:
            if future is not None:
                future.set_exception(ChatRefusedError("busy", "the chat connection is congested"))
            return
        if future is not None:
            with self._lock:
                self._pending[message.ref] = (time.monotonic() + self.answer_timeout, future)

    def _receive(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        for _ in range(MAX_PENDING):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                reply, _ = CHAT_CODEC.decode(frames)
                if not isinstance(reply, Reply):
                    raise ProtocolError(f"{type(reply).__name__} from the streamer")
            except ProtocolError as exc:
                log.debug("dropped a malformed chat answer: %s", exc)
                continue
            with self._lock:
                entry = self._pending.pop(reply.ref, None)
            if entry is None:
                continue  # a heartbeat's answer, or one that came after its timeout
            if reply.ok:
                entry[1].set_result(reply)
            else:
                entry[1].set_exception(ChatRefusedError(reply.error, reply.detail))

    def _expire(self, now: float) -> None:
        with self._lock:
            late = [ref for ref, (deadline, _) in self._pending.items() if deadline <= now]
            futures = [self._pending.pop(ref)[1] for ref in late]
        for future in futures:
            future.set_exception(
                ChatRefusedError(
                    "timeout", f"no answer from the chat at {self.endpoint.display} in {self.answer_timeout:g} s"
                )
            )

    def _goodbye(self, sock: zmq.Socket) -> None:  # type: ignore[type-arg]
        with self._lock:
            vias = list(self._members)
            self._members.clear()
        for via in vias:
            try:
                sock.send_multipart(CHAT_CODEC.encode(Bye(ref=self._next_ref(), via=via)), zmq.NOBLOCK)
            except zmq.Again:
                break
        sock.close(linger=200)  # the Byes have a moment to leave
        self._sock = None
        self._fail_all("the chat connection was closed")

    def _fail_all(self, why: str) -> None:
        with self._lock:
            futures = [f for _, f in self._pending.values()] + [f for _, f in self._outbox if f is not None]
            self._pending.clear()
            self._outbox.clear()
        for future in futures:
            if not future.done():
                future.set_exception(ChatRefusedError("timeout", why))


def _failed(error: str, detail: str) -> Future[Reply]:
    future: Future[Reply] = Future()
    future.set_exception(ChatRefusedError(error, detail))
    return future


class LineOrder:
    """Drops chat lines already seen: per stream, only a ``seq`` above the last one passes."""

    def __init__(self) -> None:
        self._last: tuple[str, int] = ("", 0)

    def fresh(self, line: ChatLine) -> bool:
        stream, seq = self._last
        if line.stream_id == stream and line.seq <= seq:
            return False
        self._last = (line.stream_id, line.seq)
        return True


_FEED_TOPICS: dict[bytes, type] = {
    TOPIC_INFO: StreamInfo,
    TOPIC_CHAT: ChatLine,
    TOPIC_PRESENCE: Presence,
    TOPIC_END: StreamEnd,
}


class ChatFeed(ZmqService):
    """Follow a stream's chat without its video: info, lines and presence signed by the streamer's key.

    ``on_info``, ``on_line`` and ``on_presence`` are called in the feed's thread; ``info`` is the newest trusted
    StreamInfo and ``has_info`` is set once one came (its ``chat_port`` is where a :class:`ChatClient` connects)."""

    name = "overdrive-chat-feed"
    error_type = MediaError

    def __init__(self, bus: Bus, endpoint: Endpoint, pin: str | None = None, connect_timeout: float = 3.0) -> None:
        super().__init__(bus)
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.trust = StreamTrust(pin)
        self.order = LineOrder()
        self.info: StreamInfo | None = None
        self.has_info = threading.Event()
        self.dropped = 0
        self.on_info: Callable[[StreamInfo], None] | None = None
        self.on_line: Callable[[ChatLine], None] | None = None
        self.on_presence: Callable[[Presence], None] | None = None
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]

    def connect(self) -> None:
        if self._sock is not None:
            return
        sock = self.bus.client(zmq.SUB, hwm=1000)
        for topic in _FEED_TOPICS:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        try:
            self.bus.connect(sock, self.endpoint, verify=True, timeout=self.connect_timeout, patient=False)
        except BaseException:
            sock.close(linger=0)
            raise
        self._sock = sock

    def start(self, timeout: float = 10.0) -> None:
        self.connect()
        super().start(timeout)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        super().stop(timeout)
        if not self.running and self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

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
        while True:
            events = dict(poller.poll(1000))
            if control in events:
                return
            if sock in events:
                for _ in range(1000):
                    try:
                        frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self.handle(frames)

    def handle(self, frames: list[Any]) -> None:
        """One ``[topic, header, signature]`` from the stream (usable without a socket)."""
        message = self._parse(frames)
        if message is None:
            return
        if isinstance(message, StreamInfo):
            self.info = message
            self.has_info.set()
            if self.on_info is not None:
                self.on_info(message)
        elif self.info is None or message.stream_id != self.info.stream_id:
            return
        elif isinstance(message, ChatLine):
            if self.order.fresh(message) and self.on_line is not None:
                self.on_line(message)
        elif isinstance(message, Presence) and self.on_presence is not None:
            self.on_presence(message)

    def _parse(self, frames: list[Any]) -> StreamInfo | ChatLine | Presence | StreamEnd | None:
        if len(frames) < 3:
            self.dropped += 1
            return None
        topic = bytes(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
        expected = _FEED_TOPICS.get(topic)
        verdict = self.trust.check(frames)
        if expected is None or (verdict is not Verdict.TRUSTED and expected is not StreamInfo):
            self.dropped += 1
            return None
        try:
            message, _ = CODEC.decode(frames[1:-1])
        except ProtocolError:
            self.dropped += 1
            return None
        if type(message) is not expected:
            self.dropped += 1
            return None
        if isinstance(message, StreamInfo):
            decision = self.trust.offer(message, frames, verdict)
            if decision.notice is not None:
                log.warning("%s", decision.notice)
            if decision.verdict is not Verdict.TRUSTED:
                self.dropped += 1
                return None
        assert isinstance(message, (StreamInfo, ChatLine, Presence, StreamEnd))
        return message


def chat_endpoint(stream: Endpoint, info: StreamInfo) -> Endpoint:
    """Where the chat of the stream at ``stream`` listens (its host, the announced port)."""
    if not info.chat_port:
        raise MediaError(f"the stream at {stream.display} has no chat")
    return Endpoint(stream.host, info.chat_port)


__all__ = ["ANSWER_TIMEOUT", "HEARTBEAT", "ChatClient", "ChatFeed", "LineOrder", "chat_endpoint"]
