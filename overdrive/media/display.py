"""The viewer's window: show the newest decoded picture (OpenCV), with an optional fps/latency overlay.

:class:`Display` runs in the thread that calls it, which must be the main thread for most GUI backends: the
``view`` command runs its viewer there for that reason. Keys: ``q``/Esc quits, ``o`` toggles the overlay.
"""

from __future__ import annotations

import os
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from overdrive.errors import MediaError
from overdrive.media.sources import Image

CHAT_LINES = 5
"""Newest chat lines drawn at the bottom of the window."""


def check_display() -> None:
    """Fail clearly before OpenCV's Qt backend aborts the whole process for want of a display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise MediaError("no display to show the stream on (DISPLAY is not set); use --headless")


def overlay_text(stats: dict[str, Any]) -> str:
    """One line of the viewer's statistics (``Viewer.stats_dict()``) for the overlay."""
    return (
        f"{stats['fps'] or 0:.1f} fps  latency {stats['latency_ms']['p50'] or 0:.0f} ms  "
        f"{(stats['bitrate'] or 0) / 1e6:.2f} Mbit/s"
    )


class Display:
    """One window titled ``title``; ``stats`` gives the overlay's numbers when it is on."""

    def __init__(self, title: str, overlay: bool, stats: Callable[[], dict[str, Any]]) -> None:
        self.title = title
        self.overlay = overlay
        self._stats = stats
        self.open = False
        self.banner: str | None = None
        """Shown instead of the overlay while set (the stream ended); a new picture clears it."""
        self._last: Image | None = None
        self.chat: deque[str] = deque(maxlen=CHAT_LINES)
        """Chat lines to draw (plain text, cut to fit); the newest last."""

    def chat_line(self, text: str) -> None:
        """Draw ``text`` (one chat line, shown as the characters it is) from the next picture on."""
        self.chat.append(text[:120])

    def ended(self, text: str) -> None:
        """Keep the last picture up, saying ``text`` over it."""
        self.banner = text
        if self._last is not None:
            self._draw(self._last)

    def show(self, image: Image) -> None:
        self.banner = None
        self._last = image
        self._draw(image)

    def _draw(self, image: Image) -> None:
        import cv2

        if self.overlay or self.banner:
            image = image.copy()
            text = self.banner or overlay_text(self._stats())
            cv2.rectangle(image, (0, 0), (min(image.shape[1], 620), 34), (0, 0, 0), -1)
            cv2.putText(image, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        if self.chat:
            image = _draw_chat(image if (self.overlay or self.banner) else image.copy(), list(self.chat))
        try:
            cv2.imshow(self.title, image)
        except cv2.error as exc:
            raise MediaError(f"cannot open a window ({exc.err}); no display? use --headless") from exc
        self.open = True

    def keys(self) -> bool:
        """Handle window keys; False to quit (``q``/Esc or the window was closed)."""
        import cv2

        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        if key == ord("o"):
            self.overlay = not self.overlay
        try:
            return cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) >= 1
        except cv2.error:
            return False

    def close(self) -> None:
        if self.open:
            import cv2

            cv2.destroyAllWindows()
            self.open = False


def _draw_chat(image: Image, lines: list[str]) -> Image:
    """``lines`` at the bottom left of ``image``, white on black (OpenCV's font draws ASCII; others show as ?)."""
    import cv2

    height = image.shape[0]
    top = max(0, height - 8 - 24 * len(lines))
    cv2.rectangle(image, (0, top), (min(image.shape[1], 900), height), (0, 0, 0), -1)
    for n, text in enumerate(lines):
        shown = "".join(c if " " <= c <= "~" else "?" for c in text)
        y = top + 20 + 24 * n
        cv2.putText(image, shown, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return image
