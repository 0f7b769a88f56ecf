"""The chat back channel: what viewers send the streamer, what it answers, and the rules for names and text.

Viewers only subscribe to the stream's PUB, so chat goes upstream on its own socket: a DEALER at the viewer
connects (CURVE, the same network key as the stream) to a ROUTER at the streamer, whose port the stream announces
in :attr:`~overdrive.media.protocol.StreamInfo.chat_port`. Every upstream message carries ``via``, a label the
sending connection chooses for one of its members: a native viewer or the CLI uses ``""``; a web gateway holds
one connection for many browsers and gives each browser session its own label, so the streamer keeps a name and a
rate budget per browser too. A connection speaks only for its own labels, never for another connection's members.

Upstream (viewer -> streamer), each with a ``ref`` the answer carries back:

* :class:`Hello` ``(name, kind, via)``: join (or stay: resent as a heartbeat, it changes nothing); the streamer
  decides the shown name and answers with it and the recent lines (:class:`Reply` ``history``).
* :class:`Say` ``(text, via)``, :class:`Hand` ``(up, via)``, :class:`Bye` ``(via)``.

Downstream, the streamer republishes accepted lines as signed :class:`~overdrive.media.protocol.ChatLine` on the
stream's PUB, and who is there as :class:`~overdrive.media.protocol.Presence`. The decisions are
:class:`~overdrive.media.chat_room.ChatRoom`'s; the sockets are :mod:`~overdrive.media.chat_server` and
:mod:`~overdrive.media.chat_client`.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Literal

from msgspec import Meta

from overdrive.bus.codec import Codec, Message
from overdrive.errors import MediaError
from overdrive.media.protocol import MAX_CHAT_NAME, MAX_CHAT_TEXT, ChatLine

MemberKind = Literal["native", "web", "cli"]
Ref = Annotated[int, Meta(ge=0, le=2**62)]
Via = Annotated[str, Meta(max_length=64)]
MAX_WIRE_TEXT = 4 * MAX_CHAT_TEXT
"""Characters of text a Say may carry on the wire: past :data:`MAX_CHAT_TEXT` it is refused with a reason (so the
sender learns why); past this it is not even decoded."""
MAX_HEADER = 256 << 10
"""Bytes of one upstream message or reply header (a reply carries up to :data:`MAX_HISTORY` lines)."""
MAX_HISTORY = 50
"""Recent lines a new member is given, and the room keeps."""
Error = Literal["", "too-long", "empty", "rate", "busy", "full", "not-joined", "malformed"]


class Hello(Message, tag="hello", frozen=True):
    """Join the chat as ``name`` (a wish: the streamer picks the shown name), or refresh a member (heartbeat)."""

    ref: Ref
    name: Annotated[str, Meta(max_length=4 * MAX_CHAT_NAME)] = ""
    kind: MemberKind = "native"
    via: Via = ""


class Say(Message, tag="say", frozen=True):
    """One chat line from the member ``via`` of this connection."""

    ref: Ref
    text: Annotated[str, Meta(max_length=MAX_WIRE_TEXT)]
    via: Via = ""


class Hand(Message, tag="hand", frozen=True):
    """Raise (``up``) or lower the member's hand."""

    ref: Ref
    up: bool = True
    via: Via = ""


class Bye(Message, tag="bye", frozen=True):
    """The member leaves (a member that goes silent leaves by itself after the presence timeout)."""

    ref: Ref
    via: Via = ""


class Reply(Message, tag="re", frozen=True):
    """The streamer's answer to one upstream message: accepted, or ``error`` and a one-line ``detail``."""

    ref: Ref
    ok: bool
    error: Error = ""
    detail: Annotated[str, Meta(max_length=200)] = ""
    name: Annotated[str, Meta(max_length=MAX_CHAT_NAME)] = ""
    """The member's shown name (every answer to a member that exists)."""
    seq: Annotated[int, Meta(ge=0)] = 0
    """The accepted line's sequence number (Say, Hand)."""
    history: Annotated[tuple[ChatLine, ...], Meta(max_length=MAX_HISTORY)] = ()
    """The recent lines, in the answer that made a new member."""


Upstream = Hello | Say | Hand | Bye
CHAT_CODEC: Codec[Upstream | Reply] = Codec(Hello, Say, Hand, Bye, Reply, max_header=MAX_HEADER)


class ChatRefusedError(MediaError):
    """The streamer refused a chat message (``error`` says why in one word, the message in one line)."""

    def __init__(self, error: str, detail: str) -> None:
        super().__init__(detail or f"chat refused: {error}")
        self.error = error


_DROPPED_NAME = frozenset("[]")  # the shown "[streamer]" mark is the streamer's alone


def clean_name(wish: str) -> str:
    """The name a member asked for, made safe to show: NFC, no control, format or line-separator characters (nor
    the brackets of the streamer's mark), whitespace runs as one space, at most :data:`MAX_CHAT_NAME` characters;
    "" if nothing is left."""
    kept = []
    for char in unicodedata.normalize("NFC", wish):
        category = unicodedata.category(char)
        if char.isspace():
            kept.append(" ")
        elif category[0] != "C" and category not in ("Zl", "Zp") and char not in _DROPPED_NAME:
            kept.append(char)
    return " ".join("".join(kept).split())[:MAX_CHAT_NAME].strip()


def check_text(text: str) -> str:
    """A chat line as it will be sent: NFC, no surrounding whitespace; ValueError with the reason if it is empty or
    longer than :data:`MAX_CHAT_TEXT`. Control characters other than line breaks and tabs are dropped (they could
    drive a terminal); markup stays: text is always shown as text."""
    text = "".join(c for c in text if c in "\n\t" or unicodedata.category(c) != "Cc")
    text = unicodedata.normalize("NFC", text).strip()
    if not text:
        raise ValueError("the chat line is empty")
    if len(text) > MAX_CHAT_TEXT:
        raise ValueError(f"the chat line is too long ({len(text)} characters, at most {MAX_CHAT_TEXT})")
    return text


def line_text(line: ChatLine) -> str:
    """One line of a chat event for a terminal or a window overlay, as plain text (``name: text``)."""
    who = f"{line.name} [streamer]" if line.host else line.name
    if line.kind == "say":
        return f"{who}: {line.text}"
    if line.kind == "hand":
        return f"{who} {'raised' if line.text == 'up' else 'lowered'} a hand"
    return f"{who} {'joined' if line.kind == 'join' else 'left'}"
