"""Audio devices: the PortAudio input a track reads, and finding the system-audio monitor or a microphone.

* ``system`` is the monitor source of the default output. On Linux with PulseAudio or PipeWire (pipewire-pulse)
  the monitor's name comes from ``pactl`` and the stream is opened on PortAudio's ALSA ``pulse`` device with
  ``PULSE_SOURCE`` pointing at it (the ALSA pulse plugin reads it when the device is opened). Elsewhere, an input
  whose name says "monitor", "loopback" or "stereo mix" is used. Otherwise it fails, naming the fixes.
* ``mic`` is ``--mic DEVICE`` (a PortAudio index or name, or ``pulse:SOURCE`` for a PulseAudio source name), or
  the default input.

Devices are read with a polling loop (``read_available`` + blocking ``read``): on PortAudio's ALSA backend over
PulseAudio the callback API delivers nothing until the stream stops. :class:`ChunkClock` turns "when the read
returned" into steady per-sample timestamps (a sample counter, re-centred on the earliest observation each second,
so scheduling jitter does not reach the timestamps).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

from overdrive.errors import ConfigError, MediaError
from overdrive.media.codecs.base import CHUNK_SAMPLES, SAMPLE_RATE, Samples, samples_to_ns

log = logging.getLogger(__name__)

RESYNC_NS = 80_000_000
"""A timestamp this far off the sample clock (lost samples, a stall) restarts the clock."""
NO_SYSTEM_AUDIO_FIX = (
    "run PulseAudio or PipeWire (with pipewire-pulse and pactl), pick an input with --audio mic --mic DEVICE "
    "(see `overdrive devices`), or stream without sound with --audio none"
)
_ENV_LOCK = threading.Lock()


class ChunkClock:
    """Timestamps for a stream of sample blocks from observed read times (sans-IO, time passed in).

    ``stamp(frames, done_ns, backlog)``: a read of ``frames`` samples returned at ``done_ns`` with ``backlog``
    more samples already waiting, on a device with ``latency_ns`` of input latency. The first sample of the block
    was therefore captured at about ``done_ns - (frames + backlog) / rate - latency``; late wake-ups only ever
    make that estimate later, so the clock follows the earliest estimate of each window.
    """

    def __init__(self, rate: int = SAMPLE_RATE, latency_ns: int = 0, window: int = 50) -> None:
        self.rate = rate
        self.latency_ns = latency_ns
        self.window = window
        self._anchor: int | None = None
        self._count = 0
        self._min_err: int | None = None
        self._seen = 0
        self.resyncs = 0

    def stamp(self, frames: int, done_ns: int, backlog: int = 0) -> int:
        measured = done_ns - samples_to_ns(frames + backlog, self.rate) - self.latency_ns
        if self._anchor is None:
            self._anchor, self._count = measured, 0
        expected = self._anchor + samples_to_ns(self._count, self.rate)
        err = measured - expected
        if abs(err) > RESYNC_NS:
            self.resyncs += 1
            self._anchor, self._count, expected, err = measured, 0, measured, 0
            self._min_err, self._seen = None, 0
        self._min_err = err if self._min_err is None else min(self._min_err, err)
        self._seen += 1
        if self._seen >= self.window:
            self._anchor += self._min_err
            self._min_err, self._seen = None, 0
        self._count += frames
        return expected

    def restart(self) -> None:
        """Forget the clock (after an overflow: samples were lost)."""
        self._anchor = None


@contextmanager
def _env(name: str, value: str | None) -> Iterator[None]:
    """Set an environment variable while a device is opened (the ALSA pulse plugin reads it at open)."""
    with _ENV_LOCK:
        old = os.environ.get(name)
        if value is not None:
            os.environ[name] = value
        try:
            yield
        finally:
            if value is not None:
                if old is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = old


class DeviceSource:
    """A PortAudio input (through sounddevice), read by polling in the track's thread."""

    def __init__(self, device: Any, channels: int, label: str, pulse_source: str | None = None) -> None:
        self.device = device
        self.channels = channels
        self.label = label
        self.pulse_source = pulse_source
        self.overflows = 0
        self._stream: Any = None
        self._clock = ChunkClock()

    def open(self) -> None:
        import sounddevice as sd

        try:
            with _env("PULSE_SOURCE", self.pulse_source):
                stream = sd.InputStream(
                    device=self.device,
                    samplerate=SAMPLE_RATE,
                    channels=self.channels,
                    dtype="int16",
                    blocksize=CHUNK_SAMPLES,
                    latency="low",
                )
        except (sd.PortAudioError, ValueError) as exc:
            where = f" (source {self.pulse_source})" if self.pulse_source else ""
            raise MediaError(f"cannot open audio input {self.device!r}{where} for {self.label}: {exc}") from exc
        self._stream = stream
        # No latency subtracted: PortAudio's reported input latency (40 ms on ALSA's pulse device) is the size of
        # its buffer, and this polling reader already counts what waits in it (the backlog), so subtracting it
        # would stamp audio that much too early (tests/test_audio_realsync.py checks the A/V offset).
        self._clock = ChunkClock()
        log.debug("%s: PortAudio input latency %.1f ms (a buffer size, not subtracted)", self.label, stream.latency)

    def start(self) -> None:
        if self._stream is None:
            self.open()
        self._stream.start()

    def read(self, stop: threading.Event) -> tuple[Samples, int] | None:
        stream = self._stream
        while stream.read_available < CHUNK_SAMPLES:
            if stop.wait(0.004):
                return None
        data, overflowed = stream.read(CHUNK_SAMPLES)
        done = time.time_ns()
        if overflowed:
            self.overflows += 1
            self._clock.restart()
        pts = self._clock.stamp(CHUNK_SAMPLES, done, int(stream.read_available))
        return np.ascontiguousarray(data, dtype=np.int16), pts

    def close(self) -> None:
        if self._stream is not None:
            import sounddevice as sd

            try:
                self._stream.stop()
                self._stream.close()
            except sd.PortAudioError as exc:  # errors on teardown must not hide the real outcome
                log.debug("closing %s: %s", self.label, exc)
            self._stream = None


# -- device discovery -------------------------------------------------------------------------------------------


def _pactl(*args: str) -> str | None:
    if shutil.which("pactl") is None:
        return None
    try:
        run = subprocess.run(["pactl", *args], capture_output=True, text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return run.stdout if run.returncode == 0 else None


def pulse_default(kind: Literal["sink", "source"]) -> str | None:
    """The PulseAudio/PipeWire default sink or source name, or None without a reachable server."""
    out = _pactl("info")
    if out is None:
        return None
    key = "Default Sink:" if kind == "sink" else "Default Source:"
    for line in out.splitlines():
        if line.strip().startswith(key):
            name = line.split(":", 1)[1].strip()
            return name or None
    return None


def pulse_sources() -> list[str]:
    out = _pactl("list", "short", "sources") or ""
    return [line.split("\t")[1] for line in out.splitlines() if line.count("\t") >= 1]


def _portaudio_devices() -> list[dict[str, Any]]:
    import sounddevice as sd

    return [dict(d) for d in sd.query_devices()]


def _has_pulse_device(devices: list[dict[str, Any]]) -> bool:
    return any(d["name"] == "pulse" and d["max_input_channels"] > 0 for d in devices)


def system_source() -> DeviceSource:
    """The monitor of the default output, or MediaError naming the fix."""
    devices = _portaudio_devices()
    sink = pulse_default("sink")
    if sink is not None:
        monitor = f"{sink}.monitor"
        if monitor not in pulse_sources():
            raise MediaError(
                f"cannot capture system audio: the default output {sink!r} has no monitor source; "
                + NO_SYSTEM_AUDIO_FIX
            )
        if not _has_pulse_device(devices):
            raise MediaError(
                "cannot capture system audio: PulseAudio is running but PortAudio has no 'pulse' "
                "device (install the ALSA pulse plugin: libasound2-plugins); " + NO_SYSTEM_AUDIO_FIX
            )
        return DeviceSource("pulse", 2, "system", pulse_source=monitor)
    for index, dev in enumerate(devices):
        name = str(dev["name"]).lower()
        if dev["max_input_channels"] > 0 and any(k in name for k in ("monitor", "loopback", "stereo mix")):
            return DeviceSource(index, min(2, int(dev["max_input_channels"])), "system")
    raise MediaError(
        "cannot capture system audio: no PulseAudio/PipeWire server and no loopback input found; " + NO_SYSTEM_AUDIO_FIX
    )


def mic_source(spec: str | None) -> DeviceSource:
    """``--mic``: a PortAudio index or name, ``pulse:SOURCE``, or (None) the default input."""
    import sounddevice as sd

    devices = _portaudio_devices()
    if spec is not None and spec.startswith("pulse:"):
        name = spec.split(":", 1)[1]
        if not _has_pulse_device(devices):
            raise MediaError(f"--mic {spec}: PortAudio has no 'pulse' device (no PulseAudio/PipeWire?)")
        if name not in pulse_sources():
            raise ConfigError(f"--mic {spec}: no PulseAudio source {name!r}; see `overdrive devices`")
        return DeviceSource("pulse", 1, "mic", pulse_source=name)
    device: int | str | None
    if spec is None:
        default_in = sd.default.device[0]
        if default_in is None or int(default_in) < 0:
            if _has_pulse_device(devices):
                return DeviceSource("pulse", 1, "mic", pulse_source=pulse_default("source"))
            raise MediaError(
                "no microphone: this machine has no default audio input; pass --mic DEVICE "
                "(see `overdrive devices`) or use --audio none"
            )
        device = int(default_in)
    elif spec.strip().isdigit():
        device = int(spec)
    else:
        device = spec
    try:
        info = sd.query_devices(device, "input")
    except (ValueError, sd.PortAudioError) as exc:
        raise ConfigError(f"--mic {spec}: {exc}; see `overdrive devices`") from exc
    if int(info["max_input_channels"]) < 1:
        raise ConfigError(f"--mic {spec}: that device has no inputs; see `overdrive devices`")
    return DeviceSource(device, 1, "mic")


# -- the producer -----------------------------------------------------------------------------------------------
