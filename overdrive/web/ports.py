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


class ChatPort(Protocol):
    """The chat as the gateway uses it.

    ``say`` is called in the gateway's event loop for each line a browser typed (already bounded in length and
    rate per browser by the gateway): it must not block (queue the send) and may raise ``ValueError`` to refuse a
    line (the message is shown to that browser only). ``follow`` registers the callback for every line the stream
    republishes (called from any thread; the gateway hands it to its loop).
    """

    def say(self, name: str, text: str) -> None: ...

    def follow(self, on_line: OnChatLine) -> None: ...


__all__ = ["ChatLine", "ChatPort", "OnChatLine"]
