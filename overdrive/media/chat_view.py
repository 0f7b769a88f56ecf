"""Chat at a native viewer and at the streamer's terminal: listeners that pass chat events on, and join the chat.

* :class:`ViewerChat` listens to a :class:`~overdrive.media.viewer.Viewer`: each new stream whose info announces a
  chat gets a :class:`~overdrive.media.chat_client.ChatClient` joined as ``name`` (kind ``native``), so the
  streamer counts and names this viewer; chat lines (each once, in order) and presence go to ``on_line`` and
  ``on_presence``. Connecting happens in its own thread: the viewer's thread never waits on the chat.
* :func:`chat_events` is the same listener without joining, for the streamer's own terminal.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from overdrive.bus.address import Endpoint
from overdrive.bus.sockets import Bus
from overdrive.errors import OverdriveError
from overdrive.media.chat_client import ChatClient, LineOrder
from overdrive.media.hooks import Listener
from overdrive.media.protocol import ChatLine, Presence, StreamInfo, StreamMessage

log = logging.getLogger(__name__)

LineCallback = Callable[[ChatLine], None]
PresenceCallback = Callable[[Presence], None]


def chat_events(on_line: LineCallback | None, on_presence: PresenceCallback | None = None) -> Listener:
    """A stream listener calling ``on_line`` once per new chat line and ``on_presence`` for each snapshot."""
    order = LineOrder()

    def listener(message: StreamMessage, payload: bytes) -> None:
        if isinstance(message, ChatLine):
            if order.fresh(message) and on_line is not None:
                on_line(message)
        elif isinstance(message, Presence) and on_presence is not None:
            on_presence(message)

    return listener


class ViewerChat:
    """A viewer's membership in its stream's chat (``viewer.add_listener(chat)``; ``close()`` when done)."""

    def __init__(
        self,
        bus: Bus,
        host: str,
        name: str,
        on_line: LineCallback | None = None,
        on_presence: PresenceCallback | None = None,
    ) -> None:
        self.bus = bus
        self.host = host
        self.name = name
        self.shown_name: str | None = None
        """The name the streamer gave this viewer (None until joined)."""
        self.client: ChatClient | None = None
        self._events = chat_events(on_line, on_presence)
        self._lock = threading.Lock()
        self._events_lock = threading.Lock()  # the viewer's thread and the joining one both pass lines on
        self._port = 0
        self._closed = False

    def __call__(self, message: StreamMessage, payload: bytes) -> None:
        if isinstance(message, StreamInfo):
            if message.chat_port and message.chat_port != self._port:
                self._port = message.chat_port
                threading.Thread(
                    target=self._join, args=(message.chat_port,), name="overdrive-chat-join", daemon=True
                ).start()
            return
        with self._events_lock:
            self._events(message, payload)

    def say(self, text: str) -> None:
        """Send a line (fire and forget; a refusal is logged)."""
        client = self.client
        if client is None:
            log.warning("not in the chat yet")
            return
        client.say(text).add_done_callback(_log_refusal)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self.client = self.client, None
        if client is not None:
            client.stop()

    def _join(self, port: int) -> None:
        client = ChatClient(self.bus, Endpoint(self.host, port))
        try:
            client.start()
            reply = client.join(self.name, kind="native").result()
        except OverdriveError as exc:
            log.warning("cannot join the chat: %s", exc)
            client.stop()
            return
        with self._lock:
            old, self.client = self.client, client
            closed = self._closed
            self.shown_name = reply.name
        if old is not None:
            old.stop()
        if closed:
            client.stop()
            return
        log.info("in the chat as %r", reply.name)
        with self._events_lock:
            for line in reply.history:  # what was said before this viewer came
                self._events(line, b"")


def _log_refusal(future: object) -> None:
    exc = future.exception() if hasattr(future, "exception") else None
    if exc is not None:
        log.warning("chat: %s", exc)
