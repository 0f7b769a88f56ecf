"""The viewer's window: fitted to the screen with the aspect kept, titled with the stream's name, ``f`` for
fullscreen, and an overlay that stops showing a frame rate once the stream ended."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from overdrive.media.display import Display, fit_size, window_title
from tests.conftest import Children
from tests.services import Xvfb, require

# -- pure logic ------------------------------------------------------------------------------------------------


def test_fit_keeps_a_picture_that_fits() -> None:
    assert fit_size(1280, 720, (1920, 1080)) == (1280, 720)
    assert fit_size(1920, 1080, None) == (1920, 1080)  # no screen known: the picture's size


def test_fit_scales_a_large_picture_down_with_its_aspect() -> None:
    w, h = fit_size(1920, 1080, (1280, 720), margin=64)
    assert w <= 1280 - 64 and h <= 720 - 64
    assert w == 1280 - 64 or h == 720 - 64  # as large as the room allows
    assert abs(w / h - 1920 / 1080) < 0.01
    w, h = fit_size(1000, 3000, (1920, 1080), margin=80)  # tall: height bounds it
    assert h == 1000 and abs(w / h - 1 / 3) < 0.01


def test_fit_never_gives_an_empty_window() -> None:
    assert fit_size(10_000, 10, (100, 100), margin=64) == (36, 1)
    assert fit_size(640, 480, (10, 10)) >= (1, 1)


def test_title_is_the_stream_name_made_printable() -> None:
    assert window_title("Übung Mathématiques 第1回") == "Übung Mathématiques 第1回"
    assert window_title("a\x1b[2Jb\u202e") == "a\ufffd[2Jb\ufffd"
    assert window_title(None) == "overdrive"


def _stats() -> dict[str, Any]:
    return {"latency_ms": {"p50": 12.0}, "bitrate": 2e6, "fps": 29.9}


def test_overlay_shows_no_frame_rate_once_the_stream_ended() -> None:
    display = Display("t", overlay=True, stats=_stats, screen=lambda: None)
    display._shown.extend([time.monotonic() - 0.1, time.monotonic()])
    assert "fps" in (display.text() or "")
    display.banner = "stream ended"
    display._shown.clear()
    assert display.text() == "stream ended"
    display.banner = None  # the overlay back on before a new picture: no rate from the old stream
    assert (display.text() or "").startswith("0.0 fps")


def test_overlay_fps_is_the_recent_rate() -> None:
    display = Display("t", overlay=True, stats=_stats, screen=lambda: None)
    now = time.monotonic()
    display._shown.extend([now - 30, now - 1.0, now - 0.5, now])  # a long pause, then a picture every 0.5 s
    assert display.fps() == pytest.approx(2.0, rel=0.05)


# -- a real window on a small X screen -------------------------------------------------------------------------

SCREEN = (1280, 720)


@pytest.fixture
def small_screen(monkeypatch: pytest.MonkeyPatch) -> Iterator[Xvfb]:
    """A 1280x720 X display of its own (no window manager, as on a bare Xvfb), DISPLAY set for children."""
    for binary in ("Xvfb", "xdotool", "xwininfo"):
        if shutil.which(binary) is None:
            require(binary, "binary not found on PATH")
    with Xvfb(screen=f"{SCREEN[0]}x{SCREEN[1]}x24") as xvfb:
        monkeypatch.setenv("DISPLAY", xvfb.display)
        yield xvfb


def find_window(name: str) -> str:
    """The id of the visible window titled exactly ``name`` (waiting for it to appear)."""
    out = subprocess.run(
        ["xdotool", "search", "--sync", "--onlyvisible", "--name", f"^{re.escape(name)}$"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()
    assert len(out) == 1, out
    return out[0]


def geometry(window: str) -> tuple[int, int]:
    info = subprocess.run(["xwininfo", "-id", window], capture_output=True, text=True, timeout=10, check=True).stdout
    width = re.search(r"Width: (\d+)", info)
    height = re.search(r"Height: (\d+)", info)
    assert width and height, info
    return int(width[1]), int(height[1])


def wait_geometry(window: str, wanted: Any) -> tuple[int, int]:
    """Poll the window's size until ``wanted(size)`` (the X server applies a resize a moment later)."""
    deadline = time.monotonic() + 10
    while not wanted(size := geometry(window)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return size


def press(window: str, key: str) -> None:
    subprocess.run(["xdotool", "windowfocus", "--sync", window, "key", key], timeout=10, check=True)


def stream(children: Children, port: int, name: str) -> None:
    children.start(
        "streamer",  # one home, one signing key: the viewer trusts the key of the first stream it saw
        "stream",
        *("--source", "testpattern", "--scale", "1920x1080", "--name", name),
        *("--audio", "none", "--no-record", "--bind", f"tcp://127.0.0.1:{port}"),
    )


def test_window_fits_the_screen_is_titled_and_goes_fullscreen(small_screen: Xvfb, children: Children) -> None:
    from tests.services import free_port

    port = free_port()
    stream(children, port, "Lecture 1")
    children.start("viewer", "view", f"127.0.0.1:{port}", "--no-record", "--mute", "--overlay")
    window = find_window("Lecture 1")
    width, height = wait_geometry(window, lambda s: s != (1, 1))
    assert width <= SCREEN[0] and height <= SCREEN[1], (width, height)
    assert abs(width / height - 16 / 9) < 0.02, (width, height)

    press(window, "f")
    assert wait_geometry(window, lambda s: s == SCREEN) == SCREEN
    press(window, "f")
    assert wait_geometry(window, lambda s: s == (width, height)) == (width, height)

    # the streamer stops and another starts on the port: the same window takes the new stream's name
    streamer = children.procs[0]
    streamer.terminate()
    streamer.communicate(timeout=30)
    stream(children, port, "Lecture 2")
    assert find_window("Lecture 2") == window
