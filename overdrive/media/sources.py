"""Video sources: the screen (mss), a synthetic test pattern, a webcam (OpenCV), picture-in-picture, scaling.

A :class:`PictureSource` grabs one BGR picture on demand. :class:`CaptureThread` drives a source at a target
rate in its own thread and keeps **only the newest** picture with its capture timestamp, so a slow consumer skips
stale pictures instead of queueing them. Capture timestamps are ``time.time_ns()`` (the stream clock shared with
audio, see :mod:`overdrive.media.protocol`).

The test pattern flashes white for :data:`FLASH_NS` every :data:`FLASH_PERIOD_NS` after the stream start;
:func:`is_flash_frame` tells audio code (a test tone) exactly when, so sync can be checked end to end.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import cv2
import numpy as np

from overdrive.bus.service import Worker
from overdrive.errors import ConfigError, MediaError

log = logging.getLogger(__name__)

FLASH_PERIOD_NS = 2_000_000_000
"""The test pattern flashes white once per this period, counted from the stream start."""
FLASH_NS = 100_000_000
"""How long each flash lasts."""

Image = np.ndarray[Any, np.dtype[np.uint8]]


def is_flash_frame(pts_ns: int, started_ns: int) -> bool:
    """True when a picture captured at ``pts_ns`` falls in a test-pattern flash (first 100 ms of every 2 s)."""
    if pts_ns < started_ns:
        return False
    return (pts_ns - started_ns) % FLASH_PERIOD_NS < FLASH_NS


def next_flash_ns(now_ns: int, started_ns: int) -> int:
    """Start time of the next flash at or after ``now_ns`` (audio schedules its beep for it)."""
    if now_ns <= started_ns:
        return started_ns
    elapsed = now_ns - started_ns
    periods = -(-elapsed // FLASH_PERIOD_NS)
    return started_ns + periods * FLASH_PERIOD_NS


class PictureSource(Protocol):
    """Something that returns a fresh BGR (HxWx3) or BGRA (HxWx4, the screen) uint8 picture each call."""

    def open(self) -> None:
        """Acquire the device, in the thread that will call :meth:`grab`."""

    def grab(self, pts_ns: int, index: int) -> Image:
        """Capture one picture now; ``pts_ns``/``index`` are for synthetic sources."""
        ...

    def close(self) -> None:
        """Release the device."""


@dataclass(frozen=True, slots=True)
class Region:
    """A rectangle of the screen."""

    left: int
    top: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width < 2 or self.height < 2 or self.left < 0 or self.top < 0:
            raise ConfigError(f"--region {self.left},{self.top},{self.width},{self.height}: need X,Y >= 0 and W,H >= 2")

    @classmethod
    def parse(cls, text: str) -> Region:
        parts = text.split(",")
        if len(parts) != 4 or not all(p.strip().lstrip("-").isdigit() for p in parts):
            raise ConfigError(f"--region must be X,Y,W,H (integers), not {text!r}")
        x, y, w, h = (int(p) for p in parts)
        return cls(x, y, w, h)


class ScreenSource:
    """The screen through mss: a whole monitor (1 = first, 0 = all) or a region of the virtual screen."""

    def __init__(self, monitor: int = 1, region: Region | None = None) -> None:
        self.monitor = monitor
        self.region = region
        self._mss: Any = None
        self._box: dict[str, int] = {}

    def open(self) -> None:
        import mss

        try:
            self._mss = mss.MSS()
        except Exception as exc:  # mss raises its own error types and plain ones on a missing display
            raise MediaError(f"cannot open the screen: {exc} (no display? try --source testpattern)") from exc
        monitors = self._mss.monitors
        if not 0 <= self.monitor < len(monitors):
            self.close()
            raise ConfigError(f"--monitor {self.monitor} does not exist; this display has 1..{len(monitors) - 1}")
        mon = monitors[self.monitor]
        if self.region is None:
            self._box = {k: int(mon[k]) for k in ("left", "top", "width", "height")}
        else:
            r = self.region
            if r.left + r.width > mon["width"] or r.top + r.height > mon["height"]:
                self.close()
                raise ConfigError(f"--region {r.left},{r.top},{r.width},{r.height} is outside the monitor")
            self._box = {"left": mon["left"] + r.left, "top": mon["top"] + r.top, "width": r.width, "height": r.height}

    def grab(self, pts_ns: int, index: int) -> Image:
        shot = self._mss.grab(self._box)
        # BGRA as captured, no copy: the encoders convert straight to YUV (a BGR copy would cost ~20 ms at 1080p)
        return np.frombuffer(shot.raw, dtype=np.uint8).reshape(shot.height, shot.width, 4)

    def close(self) -> None:
        if self._mss is not None:
            self._mss.close()
            self._mss = None


class TestPattern:
    """Moving shapes, a clock, the frame number, and a white flash every 2 s: for machines without a display."""

    __test__ = False  # not a pytest class

    def __init__(self, width: int = 1280, height: int = 720, started_ns: int | None = None) -> None:
        if width < 16 or height < 16:
            raise ConfigError("test pattern needs at least 16x16")
        self.width = width
        self.height = height
        self.started_ns = started_ns if started_ns is not None else time.time_ns()
        ys = np.linspace(0, 255, height, dtype=np.float32)[:, None]
        xs = np.linspace(0, 255, width, dtype=np.float32)[None, :]
        base = np.empty((height, width, 3), dtype=np.uint8)
        base[:, :, 0] = (xs * 0.6 + 40).astype(np.uint8)
        base[:, :, 1] = (ys * 0.5 + 30).astype(np.uint8)
        base[:, :, 2] = ((xs + ys) * 0.25 + 20).astype(np.uint8)
        self._base = base

    def open(self) -> None:
        pass

    def close(self) -> None:
        pass

    def grab(self, pts_ns: int, index: int) -> Image:
        w, h = self.width, self.height
        flash = is_flash_frame(pts_ns, self.started_ns)
        img = np.full((h, w, 3), 255, dtype=np.uint8) if flash else self._base.copy()
        t = (pts_ns - self.started_ns) / 1e9
        s = max(4, min(w, h) // 8)
        x = int((w - s) * (0.5 + 0.5 * np.sin(t * 1.3)))
        y = int((h - s) * (0.5 + 0.5 * np.cos(t * 0.9)))
        cv2.rectangle(img, (x, y), (x + s, y + s), (40, 40, 230), -1)
        cx = int((w - s) * (0.5 + 0.5 * np.cos(t * 0.7))) + s // 2
        cv2.circle(img, (cx, h // 2), s // 2, (230, 200, 40), -1)
        scale = max(0.4, h / 400)
        stamp = time.strftime("%H:%M:%S", time.localtime(pts_ns / 1e9)) + f".{(pts_ns // 1_000_000) % 1000:03d}"
        cv2.putText(img, stamp, (10, int(40 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
        cv2.putText(img, f"#{index}", (10, int(80 * scale)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2)
        return img


class WebcamSource:
    """A camera through OpenCV: ``webcam:N`` (device N), ``webcam:/dev/videoN``, or a video file played in a loop.

    A reader thread keeps only the newest picture, so the capture rate is never held back by the camera's own
    rate (a camera's ``read`` blocks until its next frame) and a viewer sees the freshest picture. A video file
    (handy as a stand-in camera, and how the tests exercise this path) is paced at its own frame rate.
    """

    FIRST_PICTURE_TIMEOUT = 5.0

    def __init__(self, device: int | str = 0) -> None:
        self.device = device
        self._latest: Image | None = None
        self._error: str | None = None
        self._fresh = threading.Lock()
        self._reader: _WebcamReader | None = None

    @property
    def is_file(self) -> bool:
        return isinstance(self.device, str) and not self.device.startswith("/dev/")

    def open(self) -> None:
        cap = cv2.VideoCapture(self.device)
        if not cap.isOpened():
            cap.release()
            raise MediaError(f"cannot open webcam {self.device}: no such camera (or it is busy)")
        self._latest, self._error = None, None
        self._reader = _WebcamReader(self, cap)
        try:
            self._reader.start(self.FIRST_PICTURE_TIMEOUT)
        except MediaError:
            self.close()
            raise
        if self._latest is None:
            reason = self._error or "stopped delivering pictures"
            self.close()
            raise MediaError(f"webcam {self.device}: {reason}")

    def _deliver(self, image: Image) -> None:
        with self._fresh:
            self._latest = image

    def _fail(self, reason: str) -> None:
        with self._fresh:
            self._error = reason

    def grab(self, pts_ns: int, index: int) -> Image:
        with self._fresh:
            if self._error is not None:
                raise MediaError(f"webcam {self.device} {self._error}")
            assert self._latest is not None, "grab() before open()"
            return self._latest

    def close(self) -> None:
        if self._reader is not None:
            self._reader.stop(timeout=5)  # a camera stuck in read() releases itself when it returns
            self._reader = None


class _WebcamReader(Worker):
    """Owns a ``cv2.VideoCapture``: only this thread reads and releases it (VideoCapture is not thread-safe, and a
    camera's read can block for seconds, longer than ``close()`` waits). Ready at the first picture."""

    name = "overdrive-webcam"
    error_type = MediaError
    ready_on_setup = False

    def __init__(self, source: WebcamSource, cap: Any) -> None:
        super().__init__()
        self.source = source
        self.cap = cap

    def start_timeout_error(self, timeout: float) -> MediaError:
        return MediaError(f"webcam {self.source.device}: no picture within {timeout:g} s")

    def loop(self) -> None:
        cap, source = self.cap, self.source
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) if source.is_file else 0.0
        period = 1.0 / fps if 1.0 <= fps <= 240.0 else (1 / 30 if source.is_file else 0.0)
        next_at = time.monotonic()
        rewound = False
        while not self.stopping.is_set():
            ok, img = cap.read()
            if (not ok or img is None) and source.is_file and not rewound:
                cap.set(cv2.CAP_PROP_POS_FRAMES, 0)  # a file loops
                rewound = True
                continue
            if not ok or img is None:
                source._fail("stopped delivering pictures")
                return
            rewound = False
            source._deliver(np.ascontiguousarray(img[:, :, :3]))
            self.mark_ready()
            if period:
                next_at += period
                self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def teardown(self) -> None:
        self.cap.release()


class PictureInPicture:
    """A main source with an inset (usually a webcam) in the bottom-right corner, a quarter of the width."""

    def __init__(self, main: PictureSource, inset: PictureSource) -> None:
        self.main = main
        self.inset = inset

    def open(self) -> None:
        self.main.open()
        try:
            self.inset.open()
        except BaseException:
            self.main.close()
            raise

    def grab(self, pts_ns: int, index: int) -> Image:
        img = self.main.grab(pts_ns, index)
        cam = self.inset.grab(pts_ns, index)
        h, w = img.shape[:2]
        iw = max(2, w // 4)
        ih = max(2, int(cam.shape[0] * iw / cam.shape[1]))
        if ih >= h:
            return img
        small = cv2.resize(cam, (iw, ih), interpolation=cv2.INTER_AREA)
        if img.shape[2] == 4:
            small = cv2.cvtColor(small, cv2.COLOR_BGR2BGRA)
        if not img.flags.writeable:
            img = img.copy()
        img[h - ih - 8 : h - 8, w - iw - 8 : w - 8] = small
        return img

    def close(self) -> None:
        self.inset.close()
        self.main.close()


_SOURCE = re.compile(r"^(screen|testpattern|webcam)(?::(.+))?$", re.IGNORECASE)  # the kind in any case; a PATH as is


def make_source(
    spec: str,
    *,
    monitor: int = 1,
    region: Region | None = None,
    pip: str | None = None,
    pattern_size: tuple[int, int] = (1280, 720),
    started_ns: int | None = None,
) -> PictureSource:
    """Build a source from ``screen``, ``testpattern`` or ``webcam[:N|:PATH]`` (plus an optional ``--pip webcam..``)."""
    match = _SOURCE.match(spec.strip())
    if match is None:
        raise ConfigError(f"--source must be screen, testpattern or webcam[:N|:PATH], not {spec!r}")
    kind, number = match.group(1).lower(), match.group(2)
    if number is not None and kind != "webcam":
        raise ConfigError(f"--source {kind} takes no :N")
    inset_match = _SOURCE.match(pip.strip()) if pip else None
    if pip and (inset_match is None or inset_match.group(1).lower() != "webcam"):
        raise ConfigError(f"--pip must be webcam[:N|:PATH], not {pip!r}")
    source: PictureSource
    if kind == "screen":
        source = ScreenSource(monitor, region)
    elif kind == "testpattern":
        source = TestPattern(*pattern_size, started_ns=started_ns)
    else:
        source = WebcamSource(_webcam_device(number))
    if pip:
        try:
            inset = make_source(pip)
        except BaseException:
            source.close()  # a camera that cannot be opened must not leave the main source open
            raise
        source = PictureInPicture(source, inset)
    return source


def _webcam_device(text: str | None) -> int | str:
    """``N`` is a camera index; anything else a device path or a video file, which must exist."""
    if text is None or (text.isascii() and text.isdigit()):
        return int(text or 0)
    if not Path(text).exists():
        raise ConfigError(f"webcam {text!r}: no such device or file")
    return text


@dataclass(frozen=True, slots=True)
class Scale:
    """Output size: a factor of the source size, or a fixed WxH."""

    factor: float = 1.0
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.size is None and not 0.05 <= self.factor <= 4:
            raise ConfigError(f"--scale factor must be 0.05..4, not {self.factor}")
        if self.size is not None and (self.size[0] < 2 or self.size[1] < 2):
            raise ConfigError(f"--scale size must be at least 2x2, not {self.size}")

    @classmethod
    def parse(cls, text: str) -> Scale:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if m:
            return cls(size=(int(m.group(1)), int(m.group(2))))
        try:
            return cls(factor=float(text))
        except ValueError:
            raise ConfigError(f"--scale must be a factor (0.5) or WxH (1280x720), not {text!r}") from None

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The encoded size for a source of ``width`` x ``height``, rounded down to even numbers."""
        w, h = self.size if self.size is not None else (round(width * self.factor), round(height * self.factor))
        return max(2, w - w % 2), max(2, h - h % 2)

    def apply(self, image: Image, size: tuple[int, int]) -> Image:
        h, w = image.shape[:2]
        if (w, h) == size:
            return image
        interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
        return cast(Image, cv2.resize(image, size, interpolation=interp))


@dataclass(frozen=True, slots=True)
class Captured:
    """One picture and when it was captured."""

    image: Image
    pts_ns: int
    index: int


class CaptureThread(Worker):
    """Grab from a source at ``fps`` in a thread, keeping only the newest picture.

    ``start()`` opens the source in the thread and waits until the first picture (or the error) is there.
    ``wait_newer(index, timeout)`` returns the newest picture if it is newer than ``index``. An error after the
    start is in :attr:`error`, and ``on_new`` is set so a consumer waiting on it sees it at once.
    """

    name = "overdrive-capture"
    error_type = MediaError
    ready_on_setup = False

    def __init__(self, source: PictureSource, fps: float, on_new: threading.Event | None = None) -> None:
        super().__init__()
        self.source = source
        self.period = 1.0 / fps
        self._cond = threading.Condition()
        self._latest: Captured | None = None
        self._on_new = on_new
        self.grab_seconds = 0.0
        self.grabs = 0

    def start_timeout_error(self, timeout: float) -> MediaError:
        return MediaError(f"the video source gave no picture within {timeout:g} s")

    def wait_newer(self, index: int, timeout: float) -> Captured | None:
        with self._cond:
            if self._latest is None or self._latest.index <= index:
                self._cond.wait(timeout)
            latest = self._latest
        return latest if latest is not None and latest.index > index else None

    def setup(self) -> None:
        self.source.open()

    def loop(self) -> None:
        try:
            self._grab_loop()
        except MediaError:
            raise
        except Exception as exc:
            raise MediaError(f"capture failed: {exc}") from exc

    def teardown(self) -> None:
        if self._on_new is not None:
            self._on_new.set()
        self.source.close()

    def _grab_loop(self) -> None:
        index = 0
        next_at = time.monotonic()
        while not self.stopping.is_set():
            index += 1
            pts = time.time_ns()
            t0 = time.perf_counter()
            image = self.source.grab(pts, index)
            self.grab_seconds += time.perf_counter() - t0
            self.grabs += 1
            with self._cond:
                self._latest = Captured(image, pts, index)
                self._cond.notify_all()
            self.mark_ready()
            if self._on_new is not None:
                self._on_new.set()
            next_at += self.period
            delay = next_at - time.monotonic()
            if delay < -self.period:  # fell behind: do not try to catch up with a burst
                next_at = time.monotonic()
            elif delay > 0:
                self.stopping.wait(delay)
