"""The web page's chat is the stream's chat: a :class:`~overdrive.web.ports.ChatPort` over media's ChatClient.

::

    chat = WebChat(bus, stream_endpoint)             # one ChatClient for the whole gateway, once the stream is known
    viewer.add_listener(chat)                        # or streamer.add_listener(chat) for ``stream --web``
    server = WebServer(config, access, chat)

Each browser session is one member of the room (kind ``web``) under its own ``via`` label, so the streamer gives
it its own name, rate budget and place in the presence list. Nothing here blocks the gateway's loop: requests are
queued on the client and their answers come back through the Futures' callbacks; a refusal goes to that browser
only. The ChatClient connects when the stream announces its chat port (a thread, as a connect may take seconds),
and again if a restarted stream announces another one; members join again on the new connection.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future

from overdrive.bus.address import Endpoint
from overdrive.bus.sockets import Bus
from overdrive.errors import OverdriveError
from overdrive.media.chat import ChatRefusedError, Reply
from overdrive.media.chat_client import ChatClient
from overdrive.media.chat_view import chat_events
from overdrive.media.protocol import ChatLine, StreamInfo, StreamMessage
from overdrive.web import ports

log = logging.getLogger(__name__)

_KINDS = {"join": "joined", "leave": "left"}


def web_line(line: ChatLine) -> ports.ChatLine:
    """A stream chat line as the page shows it: said lines as chat, joins, leaves and hands as notices."""
    if line.kind == "say":
        return ports.ChatLine(name=line.name, text=line.text, time_ns=line.sent_ns)
    if line.kind == "hand":
        text = "raised a hand" if line.text == "up" else "lowered a hand"
        return ports.ChatLine(name=line.name, text=text, time_ns=line.sent_ns, kind="hand")
    return ports.ChatLine(name=line.name, text=_KINDS.get(line.kind, line.kind), time_ns=line.sent_ns, kind="notice")


class WebChat:
    """A :class:`~overdrive.web.ports.ChatPort` (for the web server) and a stream listener (for the viewer or the
    streamer that feeds the gateway). Thread-safe."""

    def __init__(self, bus: Bus, stream: Endpoint) -> None:
        self.bus = bus
        self.stream = stream
        self.client: ChatClient | None = None
        self._lock = threading.Lock()
        self._names: dict[str, str] = {}  # session -> the name it asked for (bounded by the gateway's sessions)
        self._port = 0
        self._closed = False
        self._on_line: ports.OnChatLine | None = None
        self._on_notice: ports.OnNotice | None = None
        self._events = chat_events(self._line)  # drops a line seen before

    # -- the stream's side ---------------------------------------------------------------------------------------
    def __call__(self, message: StreamMessage, payload: bytes) -> None:
        if isinstance(message, StreamInfo):
            if message.chat_port and message.chat_port != self._port:
                self._port = message.chat_port
                threading.Thread(
                    target=self._connect, args=(message.chat_port,), name="overdrive-web-chat", daemon=True
                ).start()
            return
        self._events(message, payload)

    def _connect(self, port: int) -> None:
        client = ChatClient(self.bus, Endpoint(self.stream.host, port))
        try:
            client.start()
        except OverdriveError as exc:
            log.warning("web: cannot reach the chat: %s", exc)
            client.stop()
            return
        with self._lock:
            old, self.client = self.client, client
            closed = self._closed
            members = dict(self._names)
        if old is not None:
            old.stop()
        if closed:
            client.stop()
            return
        for session, name in members.items():
            self._watch(session, client.join(name, kind="web", via=session))

    def _line(self, line: ChatLine) -> None:
        on_line = self._on_line
        if on_line is not None:
            on_line(web_line(line))

    # -- the ChatPort (the gateway's loop) -----------------------------------------------------------------------
    def follow(self, on_line: ports.OnChatLine, on_notice: ports.OnNotice) -> None:
        self._on_line, self._on_notice = on_line, on_notice

    def join(self, session: str, name: str) -> None:
        with self._lock:
            old = self._names.get(session)
            self._names[session] = name
            client = self.client
        if client is None or old == name:
            return  # not connected yet: joined on connecting
        if old is not None:
            client.leave(via=session)  # a new name: the room names a member once, when it joins
        self._watch(session, client.join(name, kind="web", via=session))

    def say(self, session: str, name: str, text: str) -> None:
        if self._names.get(session) != name:
            self.join(session, name)
        client = self.client
        if client is None:
            raise ValueError("the chat is not connected yet")
        self._watch(session, client.say(text, via=session))

    def hand(self, session: str, up: bool) -> None:
        client = self.client
        if client is None:
            raise ValueError("the chat is not connected yet")
        self._watch(session, client.hand(up, via=session))

    def leave(self, session: str) -> None:
        with self._lock:
            joined = self._names.pop(session, None) is not None
            client = self.client
        if joined and client is not None:
            client.leave(via=session)

    def close(self) -> None:
        """Stop the client (its members leave)."""
        with self._lock:
            self._closed = True
            client, self.client = self.client, None
        if client is not None:
            client.stop()

    def _watch(self, session: str, future: Future[Reply]) -> None:
        def answered(done: Future[Reply]) -> None:
            exc = done.exception()
            on_notice = self._on_notice
            if isinstance(exc, ChatRefusedError) and on_notice is not None:
                on_notice(session, str(exc))

        future.add_done_callback(answered)


__all__ = ["WebChat", "web_line"]
