"""The viewer's window: show the newest decoded picture (OpenCV), with an optional fps/latency overlay.

:class:`Display` runs in the thread that calls it, which must be the main thread for most GUI backends: the
``view`` command runs its viewer there for that reason. The window is titled with the stream's name and sized to
fit the screen (:func:`fit_size`; the picture is scaled with its aspect kept). Keys: ``q``/Esc quits, ``o``
toggles the overlay, ``f`` toggles fullscreen.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from overdrive.errors import MediaError
from overdrive.media.sources import Image

SCREEN_MARGIN = 64
"""Pixels of the screen, in each direction, left free around a window that had to be scaled down (panels, the
window manager's title bar)."""

FPS_WINDOW_S = 2.0
"""The overlay's fps counts the pictures shown in this many recent seconds, so it follows the stream as it is now."""

MAX_TITLE = 128

log = logging.getLogger(__name__)
CHAT_LINES = 5
"""Newest chat lines drawn at the bottom of the window."""


def check_display() -> None:
    """Fail clearly before OpenCV's Qt backend aborts the whole process for want of a display."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise MediaError("no display to show the stream on (DISPLAY is not set); use --headless")


def fit_size(width: int, height: int, screen: tuple[int, int] | None, margin: int = SCREEN_MARGIN) -> tuple[int, int]:
    """The window size for a ``width`` x ``height`` picture: the picture's own size when it fits the ``screen``
    less ``margin`` (or the screen is unknown), else scaled down to fit with its aspect ratio kept."""
    if screen is None:
        return width, height
    room_w, room_h = max(1, screen[0] - margin), max(1, screen[1] - margin)
    if width <= room_w and height <= room_h:
        return width, height
    scale = min(room_w / width, room_h / height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def screen_size() -> tuple[int, int] | None:
    """Width and height of the primary monitor (else the first), or None when there is no screen to ask (no X
    display, a Wayland session without XWayland): the window then opens at the picture's size."""
    import mss
    from mss.exception import ScreenShotError

    try:
        with mss.MSS() as grabber:
            monitors = grabber.monitors
    except (ScreenShotError, OSError) as exc:  # no display to ask, or a platform library missing
        log.debug("screen size unknown: %s", exc)
        return None
    if len(monitors) < 2:
        return None
    monitor = next((m for m in monitors[1:] if m.get("is_primary")), monitors[1])
    return int(monitor["width"]), int(monitor["height"])


def window_title(name: str | None) -> str:
    """The window title for a stream named ``name``: the name (from the wire: non-printable characters replaced)."""
    if not name:
        return "overdrive"
    return "".join(c if c.isprintable() else "\ufffd" for c in name[:MAX_TITLE])


def overlay_text(stats: dict[str, Any], fps: float | None) -> str:
    """One line for the overlay: ``fps`` (pictures shown lately), the viewer's latency and bitrate
    (``Viewer.stats_dict()``)."""
    return (
        f"{fps or 0:.1f} fps  latency {stats['latency_ms']['p50'] or 0:.0f} ms  "
        f"{(stats['bitrate'] or 0) / 1e6:.2f} Mbit/s"
    )


class Display:
    """One window named ``name`` (titled with the stream's name once known, see :meth:`set_title`); ``stats``
    gives the overlay's numbers when it is on; ``screen`` finds the screen size the window must fit."""

    def __init__(
        self,
        name: str,
        overlay: bool,
        stats: Callable[[], dict[str, Any]],
        screen: Callable[[], tuple[int, int] | None] = screen_size,
    ) -> None:
        self.name = name
        self.title = window_title(None)
        self.overlay = overlay
        self.fullscreen = False
        self._stats = stats
        self._screen = screen
        self.open = False
        self.banner: str | None = None
        """Shown instead of the overlay while set (the stream ended); a new picture clears it."""
        self._last: Image | None = None
        self._size: tuple[int, int] | None = None  # the picture size the window was fitted to
        self._shown: deque[float] = deque(maxlen=256)  # monotonic times of recent pictures, for the overlay's fps
        self.chat: deque[str] = deque(maxlen=CHAT_LINES)
        """Chat lines to draw (plain text, cut to fit); the newest last."""

    def set_title(self, stream_name: str) -> None:
        """Title the window with the stream's name (a new stream may bring a new one)."""
        self.title = window_title(stream_name)
        if self.open:
            import cv2

            cv2.setWindowTitle(self.name, self.title)

    def chat_line(self, text: str) -> None:
        """Draw ``text`` (one chat line, shown as the characters it is) from the next picture on."""
        self.chat.append(text[:120])

    def ended(self, text: str) -> None:
        """Keep the last picture up, saying ``text`` over it instead of the overlay."""
        self.banner = text
        self._shown.clear()
        if self._last is not None:
            self._draw(self._last)

    def show(self, image: Image) -> None:
        self.banner = None
        self._last = image
        self._shown.append(time.monotonic())
        self._draw(image)

    def fps(self) -> float | None:
        """Pictures shown per second over the last FPS_WINDOW_S seconds; None before two pictures."""
        now = time.monotonic()
        while self._shown and now - self._shown[0] > FPS_WINDOW_S:
            self._shown.popleft()
        if len(self._shown) < 2:
            return None
        span = self._shown[-1] - self._shown[0]
        return (len(self._shown) - 1) / span if span > 0 else None

    def text(self) -> str | None:
        """What is written over the picture: the banner once the stream ended, else the overlay when it is on."""
        if self.banner:
            return self.banner
        return overlay_text(self._stats(), self.fps()) if self.overlay else None

    def _draw(self, image: Image) -> None:
        import cv2

        text = self.text()
        if text is not None:
            image = image.copy()
            cv2.rectangle(image, (0, 0), (min(image.shape[1], 620), 34), (0, 0, 0), -1)
            cv2.putText(image, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 1, cv2.LINE_AA)
        if self.chat:
            image = _draw_chat(image if text is not None else image.copy(), list(self.chat))
        try:
            self._fit(image.shape[1], image.shape[0])
            cv2.imshow(self.name, image)
        except cv2.error as exc:
            raise MediaError(f"cannot open a window ({exc.err}); no display? use --headless") from exc
        self.open = True

    def _fit(self, width: int, height: int) -> None:
        """Open the window, or fit it again when the picture size changed (a new stream)."""
        import cv2

        if self._size == (width, height) and self.open:
            return
        if not self.open:
            # GUI_NORMAL: no toolbar or status bar (they made the window taller than the picture);
            # NORMAL + KEEPRATIO: the window may be smaller than the picture, which is scaled with its aspect kept.
            cv2.namedWindow(self.name, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO | cv2.WINDOW_GUI_NORMAL)
            cv2.setWindowTitle(self.name, self.title)
        self._size = (width, height)
        if not self.fullscreen:
            cv2.resizeWindow(self.name, *fit_size(width, height, self._screen()))

    def toggle_fullscreen(self) -> None:
        """Fullscreen on or off. The window is also moved and sized to the screen by hand, first: a window
        manager that implements fullscreen overrides that, and without one (a bare X server) it is what works."""
        import cv2

        if not self.open:
            return
        self.fullscreen = not self.fullscreen
        screen = self._screen()
        if self.fullscreen:
            if screen is not None:
                cv2.moveWindow(self.name, 0, 0)
                cv2.resizeWindow(self.name, *screen)
            cv2.setWindowProperty(self.name, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_FULLSCREEN)
        else:
            cv2.setWindowProperty(self.name, cv2.WND_PROP_FULLSCREEN, cv2.WINDOW_NORMAL)
            if self._size is not None:
                cv2.resizeWindow(self.name, *fit_size(*self._size, screen))

    def keys(self) -> bool:
        """Handle window keys; False to quit (``q``/Esc or the window was closed)."""
        import cv2

        key = cv2.waitKey(1) & 0xFF
        if key in (ord("q"), 27):
            return False
        if key == ord("o"):
            self.overlay = not self.overlay
            if self._last is not None:
                self._draw(self._last)
        if key == ord("f"):
            self.toggle_fullscreen()
        try:
            return cv2.getWindowProperty(self.name, cv2.WND_PROP_VISIBLE) >= 1
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
