"""What the gateway needs from outside the web feature, as small interfaces the composition implements.

:class:`ChatPort` is the stream's chat back channel (built by the media feature, wired in :mod:`overdrive.app.web`).
Without one the page hides its chat box.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True)
class ChatLine:
    """One chat line for every page: who said it and what (shown as text, never as markup)."""

    name: str
    text: str
    time_ns: int
    kind: str = "chat"
    """``chat``, or another kind the page shows in its own style (``hand``, ``notice``)."""


OnChatLine = Callable[[ChatLine], None]
OnNotice = Callable[[str, str], None]
"""``(session, text)``: a notice for one browser session only (a refused line, a refused join)."""


class ChatPort(Protocol):
    """The chat as the gateway uses it; each browser is one member, named by its ``session`` label.

    ``join`` (when a page tells its name, and again when it changes it), ``say`` (each line typed, already bounded
    in length and rate per browser by the gateway), ``hand`` (the page's raise/lower hand button, rated like a
    line) and ``leave`` (when the page disconnects) are called in the gateway's event loop: they must not block
    (queue the send). ``say`` and ``hand`` may raise ``ValueError`` to refuse at once; a refusal that comes later
    goes to ``on_notice`` with the session it concerns (shown to that browser only). ``follow`` registers the
    callbacks; both may be called from any thread (the gateway hands them to its loop). ``on_line`` gets every line
    the stream republishes, each once.
    """

    def join(self, session: str, name: str) -> None: ...

    def say(self, session: str, name: str, text: str) -> None: ...

    def hand(self, session: str, up: bool) -> None: ...

    def leave(self, session: str) -> None: ...

    def follow(self, on_line: OnChatLine, on_notice: OnNotice) -> None: ...


__all__ = ["ChatLine", "ChatPort", "OnChatLine", "OnNotice"]
