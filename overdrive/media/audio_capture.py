"""Audio capture for the streamer: system audio, a microphone, both, or a synthetic test tone.

Each track produces 20 ms blocks of 48 kHz int16 samples, stamped with the capture time of their first sample on
the stream clock (``time.time_ns()``, the clock video frames use), encoded (Opus or PCM) and handed to the
streamer as :class:`~overdrive.media.protocol.AudioChunk` messages through its producer hook.

* ``system`` is the monitor source of the default output. On Linux with PulseAudio or PipeWire (pipewire-pulse)
  the monitor's name comes from ``pactl`` and the stream is opened on PortAudio's ALSA ``pulse`` device with
  ``PULSE_SOURCE`` pointing at it (the ALSA pulse plugin reads it when the device is opened). Elsewhere, an input
  whose name says "monitor", "loopback" or "stereo mix" is used. Otherwise it fails, naming the fixes.
* ``mic`` is ``--mic DEVICE`` (a PortAudio index or name, or ``pulse:SOURCE`` for a PulseAudio source name), or
  the default input.
* ``testtone`` beeps (1 kHz, :data:`~overdrive.media.sources.FLASH_NS` long) exactly when the test pattern
  flashes white (:func:`~overdrive.media.sources.is_flash_frame`), so A/V sync can be checked end to end.

Devices are read with a polling loop (``read_available`` + blocking ``read``) in a thread: on PortAudio's ALSA
backend over PulseAudio the callback API delivers nothing until the stream stops. :class:`ChunkClock` turns
"when the read returned" into steady per-sample timestamps (a sample counter, re-centred on the earliest
observation each second, so scheduling jitter does not reach the timestamps).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from overdrive.errors import ConfigError, MediaError
from overdrive.media.audio_codec import (
    CHUNK_NS,
    CHUNK_SAMPLES,
    SAMPLE_RATE,
    AudioEncoder,
    Samples,
    make_audio_encoder,
    samples_to_ns,
)
from overdrive.media.protocol import AudioChunk, AudioTrackInfo, StreamMessage
from overdrive.media.sources import FLASH_NS, FLASH_PERIOD_NS

log = logging.getLogger(__name__)

AudioMode = Literal["system", "mic", "both", "none", "testtone"]
AUDIO_MODES: tuple[str, ...] = ("auto", "system", "mic", "both", "none", "testtone")
TONE_HZ = 1000.0
TONE_AMPLITUDE = 0.5
RESYNC_NS = 80_000_000
"""A timestamp this far off the sample clock (lost samples, a stall) restarts the clock."""
NO_SYSTEM_AUDIO_FIX = (
    "run PulseAudio or PipeWire (with pipewire-pulse and pactl), pick an input with --audio mic --mic DEVICE "
    "(see `overdrive devices`), or stream without sound with --audio none"
)

Emit = Callable[[StreamMessage, bytes], None]
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


def tone_block(start_sample: int, frames: int, channels: int = 1) -> Samples:
    """The test tone from ``start_sample`` (counted from the stream start): 1 kHz during each flash, else silence."""
    idx = np.arange(start_sample, start_sample + frames, dtype=np.int64)
    period = FLASH_PERIOD_NS * SAMPLE_RATE // 1_000_000_000
    on = FLASH_NS * SAMPLE_RATE // 1_000_000_000
    beep = (idx % period) < on
    wave = np.sin(2 * np.pi * TONE_HZ * (idx % SAMPLE_RATE) / SAMPLE_RATE) * (TONE_AMPLITUDE * 32767)
    mono = np.where(beep, wave, 0.0).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


class BlockSource(Protocol):
    """Where a track's samples come from: ``read`` returns the next block and its capture time, or None."""

    channels: int
    label: str

    def start(self) -> None: ...

    def read(self, stop: threading.Event) -> tuple[Samples, int] | None: ...

    def close(self) -> None: ...


class ToneSource:
    """Synthetic 20 ms blocks on the stream clock, released in real time, beeping with the test pattern."""

    label = "testtone"

    def __init__(self, started_ns: Callable[[], int], channels: int = 1) -> None:
        self.channels = channels
        self._started_ns = started_ns
        self._next: int | None = None

    def start(self) -> None:
        pass

    def read(self, stop: threading.Event) -> tuple[Samples, int] | None:
        started = self._started_ns()
        if self._next is None:
            self._next = max(0, (time.time_ns() - started) // CHUNK_NS)
        pts = started + self._next * CHUNK_NS
        wait = (pts + CHUNK_NS - time.time_ns()) / 1e9
        if wait > 0 and stop.wait(wait):
            return None
        block = tone_block(self._next * CHUNK_SAMPLES, CHUNK_SAMPLES, self.channels)
        self._next += 1
        return block, pts

    def close(self) -> None:
        pass


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
        # its buffer, and this polling reader already counts what waits in it (the backlog). Subtracting it
        # stamped system audio 38 ms early; the delay left is ~2 ms (measured by tests/test_audio_realsync.py).
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


@dataclass
class TrackStats:
    chunks: int = 0
    encode_seconds: float = 0.0
    errors: int = 0


class _Track:
    def __init__(self, index: int, source: BlockSource, codec: str) -> None:
        self.index = index
        self.source = source
        self.encoder: AudioEncoder = make_audio_encoder(codec, source.channels)
        self.info = AudioTrackInfo(
            track=index,
            source=source.label,
            codec=self.encoder.codec,  # type: ignore[arg-type]
            sample_rate=SAMPLE_RATE,
            channels=source.channels,
            extradata=self.encoder.extradata,
        )
        self.stats = TrackStats()
        self.thread: threading.Thread | None = None


class AudioCapture:
    """The streamer's audio: one track per source, each read, encoded and emitted from its own thread.

    Build with :func:`open_audio` (which resolves devices and fails early with a clear error), announce
    :attr:`tracks` in the stream info, and register as a producer: the streamer calls ``start(emit)``/``stop()``.
    """

    def __init__(self, sources: list[BlockSource], codec: str, stream_id: Callable[[], str]) -> None:
        self._tracks = [_Track(i, s, codec) for i, s in enumerate(sources)]
        self._stream_id = stream_id
        self._stop = threading.Event()
        self._errors: list[BaseException] = []

    @property
    def tracks(self) -> tuple[AudioTrackInfo, ...]:
        return tuple(t.info for t in self._tracks)

    @property
    def stats(self) -> dict[str, TrackStats]:
        return {t.source.label: t.stats for t in self._tracks}

    def start(self, emit: Emit) -> None:
        started: list[_Track] = []
        try:
            for track in self._tracks:
                track.source.start()
                started.append(track)
        except BaseException:
            for track in started:
                track.source.close()
            raise
        for track in self._tracks:
            track.thread = threading.Thread(
                target=self._run, args=(track, emit), name=f"overdrive-audio-{track.source.label}", daemon=True
            )
            track.thread.start()

    def stop(self) -> None:
        self._stop.set()
        for track in self._tracks:
            if track.thread is not None:
                track.thread.join()
                track.thread = None
        self.close()

    def close(self) -> None:
        """Release devices (also for captures that were opened but never started)."""
        for track in self._tracks:
            track.source.close()
            track.encoder.close()

    def _run(self, track: _Track, emit: Emit) -> None:
        seq = 0
        try:
            while not self._stop.is_set():
                got = track.source.read(self._stop)
                if got is None:
                    break
                block, pts_ns = got
                t0 = time.perf_counter()
                chunks = track.encoder.encode(block, pts_ns)
                track.stats.encode_seconds += time.perf_counter() - t0
                for chunk in chunks:
                    seq += 1
                    msg = AudioChunk(
                        stream_id=self._stream_id(),
                        track=track.index,
                        seq=seq,
                        pts_ns=chunk.pts_ns,
                        samples=chunk.samples,
                    )
                    emit(msg, chunk.data)
                    track.stats.chunks += 1
        except Exception as exc:  # a failing audio device must not take the video stream down
            track.stats.errors += 1
            self._errors.append(exc)
            log.exception("audio track %s stopped", track.source.label)


def open_audio(
    mode: str,
    *,
    mic: str | None = None,
    codec: str = "opus",
    stream_id: Callable[[], str],
    started_ns: Callable[[], int],
) -> AudioCapture | None:
    """Resolve ``--audio MODE`` to opened devices (fails now, with the fix named, if they cannot be used)."""
    if mode not in AUDIO_MODES:
        raise ConfigError(f"--audio must be one of {', '.join(AUDIO_MODES)}, not {mode!r}")
    if codec not in ("opus", "pcm"):
        raise ConfigError(f"--audio-codec must be opus or pcm, not {codec!r}")
    if mode == "none":
        return None
    if mode == "auto":
        # the default: system audio where this machine can capture it, otherwise video only, said once
        try:
            return open_audio("system", codec=codec, stream_id=stream_id, started_ns=started_ns)
        except MediaError as exc:
            log.warning("streaming without sound (pass --audio none to silence this): %s", exc)
            return None
    sources: list[BlockSource] = []
    if mode == "testtone":
        sources.append(ToneSource(started_ns))
    else:
        devices: list[DeviceSource] = []
        try:
            if mode in ("system", "both"):
                devices.append(system_source())
            if mode in ("mic", "both"):
                devices.append(mic_source(mic))
            for dev in devices:
                dev.open()
        except BaseException:
            for dev in devices:
                dev.close()
            raise
        sources.extend(devices)
    return AudioCapture(sources, codec, stream_id)


def attach_audio(streamer: Any, mode: str, *, mic: str | None = None, codec: str = "opus") -> AudioCapture | None:
    """Open the audio for ``--audio MODE`` and hook it into a :class:`~overdrive.media.publisher.Streamer`."""
    capture = open_audio(
        mode,
        mic=mic,
        codec=codec,
        stream_id=lambda: str(streamer.stream_id),
        started_ns=lambda: int(streamer.started_ns),
    )
    if capture is not None:
        for track in capture.tracks:
            streamer.add_audio_track(track)
        streamer.add_producer(capture)
    return capture
