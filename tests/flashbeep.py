"""Flash a white full-screen X window exactly when a 1 kHz beep reaches the PulseAudio sink's monitor.

Run as ``python -m tests.flashbeep OUT.json`` with DISPLAY and the PulseAudio variables set (the ``xvfb`` and
``pulse`` fixtures). ``pacat`` plays silence with beeps into the sink; ``parec`` reads the sink's monitor in 5 ms
fragments; when a beep's first loud sample arrives the window is mapped (``XSync``: the server has painted it),
and 0.3 s later unmapped again. So the two real events happen together, and both instants are measured on the
stream clock (``time.time_ns()``):

* ``beeps``: when the beep's first sample was in the monitor (sample index over a sample clock anchored on the
  earliest arrival of the last 0.25 s, so scheduling delays of this process do not count);
* ``flashes``: ``[before XMapRaised, after XSync]`` of each map.

The X calls go straight to libX11 through ctypes (no toolkit, no window manager on Xvfb: the server paints the
window's white background itself on map, with no client round trip).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

RATE = 48_000
BEEP_HZ = 1000.0
BEEP_S = 0.15
FLASH_S = 0.3
LOUD = 3000  # int16: the beep is at 16384
FRAGMENT = "--latency-msec=5"
RAW = ["--format=s16le", f"--rate={RATE}", "--channels=1", "--raw"]


class WhiteWindow:
    """A white window over the whole root, mapped and unmapped synchronously (ctypes libX11)."""

    def __init__(self) -> None:
        x11 = ctypes.CDLL(ctypes.util.find_library("X11") or "libX11.so.6")
        x11.XOpenDisplay.restype = ctypes.c_void_p
        x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
        for name in ("XDefaultScreen", "XSync", "XMapRaised", "XUnmapWindow", "XDestroyWindow", "XCloseDisplay"):
            getattr(x11, name).restype = ctypes.c_int
        x11.XDefaultScreen.argtypes = [ctypes.c_void_p]
        x11.XRootWindow.restype = ctypes.c_ulong
        x11.XRootWindow.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x11.XWhitePixel.restype = ctypes.c_ulong
        x11.XWhitePixel.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x11.XDisplayWidth.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x11.XDisplayHeight.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x11.XCreateSimpleWindow.restype = ctypes.c_ulong
        ints, uints, ulongs = [ctypes.c_int] * 2, [ctypes.c_uint] * 3, [ctypes.c_ulong] * 2
        x11.XCreateSimpleWindow.argtypes = [ctypes.c_void_p, ctypes.c_ulong, *ints, *uints, *ulongs]
        for name in ("XMapRaised", "XUnmapWindow", "XDestroyWindow"):
            getattr(x11, name).argtypes = [ctypes.c_void_p, ctypes.c_ulong]
        x11.XSync.argtypes = [ctypes.c_void_p, ctypes.c_int]
        x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
        self._x = x11
        self._dpy = x11.XOpenDisplay(None)
        if not self._dpy:
            raise RuntimeError("cannot open the X display (DISPLAY unset?)")
        screen = x11.XDefaultScreen(self._dpy)
        root = x11.XRootWindow(self._dpy, screen)
        white = x11.XWhitePixel(self._dpy, screen)
        width, height = x11.XDisplayWidth(self._dpy, screen), x11.XDisplayHeight(self._dpy, screen)
        self._win = x11.XCreateSimpleWindow(self._dpy, root, 0, 0, width, height, 0, white, white)
        x11.XSync(self._dpy, 0)

    def show(self) -> tuple[int, int]:
        before = time.time_ns()
        self._x.XMapRaised(self._dpy, self._win)
        self._x.XSync(self._dpy, 0)
        return before, time.time_ns()

    def hide(self) -> None:
        self._x.XUnmapWindow(self._dpy, self._win)
        self._x.XSync(self._dpy, 0)

    def close(self) -> None:
        self._x.XDestroyWindow(self._dpy, self._win)
        self._x.XCloseDisplay(self._dpy)


class MonitorWatch:
    """Read the sink's monitor with ``parec``; report each beep onset's capture time on the stream clock."""

    def __init__(self, device: str) -> None:
        self.onsets: queue.Queue[int] = queue.Queue()
        self.samples = 0
        self._arrivals: list[tuple[int, int]] = []  # (time the read returned, samples read so far)
        self._proc = subprocess.Popen(
            ["parec", f"--device={device}", *RAW, FRAGMENT], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
        )
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._proc.stdout is not None
        fd, quiet_since, carry = self._proc.stdout.fileno(), 0, b""
        while True:
            data = os.read(fd, 960)
            now = time.time_ns()
            if not data:
                return
            data = carry + data
            usable = len(data) // 2 * 2
            data, carry = data[:usable], data[usable:]
            block = np.frombuffer(data, dtype=np.int16)
            start = self.samples
            self.samples += len(block)
            del self._arrivals[:-50]
            self._arrivals.append((now, self.samples))
            loud = np.flatnonzero(np.abs(block) > LOUD)
            if len(loud):
                first = start + int(loud[0])
                if first - quiet_since > RATE // 2:
                    # sample 0 was captured at about min(arrival - samples/RATE) over recent reads
                    zero = min(t - n * 1_000_000_000 // RATE for t, n in self._arrivals)
                    self.onsets.put(zero + first * 1_000_000_000 // RATE)
                quiet_since = start + int(loud[-1])

    def close(self) -> None:
        self._proc.terminate()
        self._proc.wait(10)
        self._thread.join(10)


def beep_track(lead_s: float, count: int, period_s: float) -> bytes:
    total = int((lead_s + count * period_s) * RATE)
    pcm = np.zeros(total, dtype=np.int16)
    n = int(BEEP_S * RATE)
    t = np.arange(n) / RATE
    beep = (0.5 * 32767 * np.sin(2 * np.pi * BEEP_HZ * t)).astype(np.int16)
    for i in range(count):
        k = int((lead_s + i * period_s) * RATE)
        pcm[k : k + n] = beep
    return pcm.tobytes()


def run(out: Path, count: int = 5, period_s: float = 2.0, sink: str = "virt") -> dict[str, object]:
    window = WhiteWindow()
    watch = MonitorWatch(f"{sink}.monitor")
    player = None
    beeps: list[int] = []
    flashes: list[tuple[int, int]] = []
    try:
        deadline = time.monotonic() + 10
        while watch.samples < RATE // 2:  # the monitor is flowing (a fresh null sink can stall ~2 s at first)
            if time.monotonic() > deadline:
                raise RuntimeError("parec delivered nothing from the monitor")
            time.sleep(0.05)
        with tempfile.NamedTemporaryFile(suffix=".raw") as raw:
            raw.write(beep_track(1.0, count, period_s))
            raw.flush()
            player = subprocess.Popen(["pacat", "--playback", f"--device={sink}", *RAW, "--latency-msec=40", raw.name])
            end = time.monotonic() + 1.0 + count * period_s + 5
            while len(beeps) < count and time.monotonic() < end:
                try:
                    beep = watch.onsets.get(timeout=0.5)
                except queue.Empty:
                    continue
                flashes.append(window.show())
                beeps.append(beep)
                time.sleep(FLASH_S)
                window.hide()
            player.wait(10)
    finally:
        if player is not None and player.poll() is None:
            player.kill()
            player.wait()
        watch.close()
        window.close()
    result: dict[str, object] = {"beeps": beeps, "flashes": flashes}
    out.write_text(json.dumps(result))
    return result


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 5)
