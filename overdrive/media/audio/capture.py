"""Audio capture for the streamer: system audio, a microphone, both, or a synthetic test tone.

Each track produces 20 ms blocks of 48 kHz int16 samples, stamped with the capture time of their first sample on
the stream clock (``time.time_ns()``, the clock video frames use), encoded (Opus or PCM) and handed to the
streamer as :class:`~overdrive.media.protocol.AudioChunk` messages through its producer hook. Devices are found
and read by :mod:`overdrive.media.audio.devices`; each track runs in its own :class:`~overdrive.bus.service.Worker`.

``testtone`` beeps (1 kHz, :data:`~overdrive.media.sources.FLASH_NS` long) exactly when the test pattern flashes
white (:func:`~overdrive.media.sources.is_flash_frame`), so A/V sync can be checked end to end.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from overdrive.bus.service import Worker
from overdrive.errors import ConfigError, MediaError
from overdrive.media.audio.devices import DeviceSource, mic_source, system_source
from overdrive.media.codecs import make_audio_encoder
from overdrive.media.codecs.base import CHUNK_NS, CHUNK_SAMPLES, SAMPLE_RATE, AudioEncoder, Samples
from overdrive.media.hooks import Emit, ProducerHost
from overdrive.media.protocol import AudioChunk, AudioTrackInfo
from overdrive.media.sources import FLASH_NS, FLASH_PERIOD_NS

log = logging.getLogger(__name__)

AudioMode = Literal["system", "mic", "both", "none", "testtone"]
AUDIO_MODES: tuple[str, ...] = ("auto", "system", "mic", "both", "none", "testtone")
TONE_HZ = 1000.0
TONE_AMPLITUDE = 0.5
START_WAIT = 2.0
"""Seconds `AudioCapture.start` waits at most for every device to deliver its first samples."""


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


@dataclass
class TrackStats:
    chunks: int = 0
    encode_seconds: float = 0.0
    errors: int = 0


class _Track(Worker):
    """One source read, encoded and emitted in its own thread; a failing device ends only its own track."""

    error_type = MediaError

    def __init__(self, index: int, source: BlockSource, codec: str, stream_id: Callable[[], str]) -> None:
        super().__init__()
        self.name = f"overdrive-audio-{source.label}"
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
        self.failure: BaseException | None = None
        self._stream_id = stream_id
        self._emit: Emit | None = None
        self.delivering = threading.Event()
        """Set once the device gave its first block (or the track ended without one)."""

    def start_emitting(self, emit: Emit) -> None:
        self._emit = emit
        self.start()

    def loop(self) -> None:
        emit = self._emit
        assert emit is not None
        seq = 0
        try:
            while not self.stopping.is_set():
                got = self.source.read(self.stopping)
                if got is None:
                    break
                block, pts_ns = got
                self.delivering.set()
                t0 = time.perf_counter()
                chunks = self.encoder.encode(block, pts_ns)
                self.stats.encode_seconds += time.perf_counter() - t0
                for chunk in chunks:
                    seq += 1
                    msg = AudioChunk(
                        stream_id=self._stream_id(),
                        track=self.index,
                        seq=seq,
                        pts_ns=chunk.pts_ns,
                        samples=chunk.samples,
                    )
                    emit(msg, chunk.data)
                    self.stats.chunks += 1
        except Exception as exc:  # a failing audio device must not take the video stream down
            self.stats.errors += 1
            self.failure = exc
            log.exception("audio track %s stopped", self.source.label)
        finally:
            self.delivering.set()


class AudioCapture:
    """The streamer's audio: one track per source, each read, encoded and emitted from its own thread.

    Build with :func:`open_audio` (which resolves devices and fails early with a clear error), announce
    :attr:`tracks` in the stream info, and register as a producer: the streamer calls ``start(emit)``/``stop()``.
    """

    def __init__(self, sources: list[BlockSource], codec: str, stream_id: Callable[[], str]) -> None:
        self._tracks = [_Track(i, s, codec, stream_id) for i, s in enumerate(sources)]

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
            track.start_emitting(emit)
        # a device delivers its first samples a while (0.2-1.5 s) after it starts; returning only then lets the
        # streamer take its first video frame, where recordings begin, with the sound already flowing
        deadline = time.monotonic() + START_WAIT
        for track in self._tracks:
            if not track.delivering.wait(max(0.0, deadline - time.monotonic())):
                log.warning("audio %s gave nothing for %.0f s; streaming on", track.source.label, START_WAIT)

    def stop(self) -> None:
        for track in self._tracks:
            track.stop()
        self.close()

    def close(self) -> None:
        """Release devices (also for captures that were opened but never started)."""
        for track in self._tracks:
            track.source.close()
            track.encoder.close()


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


def attach_audio(
    streamer: ProducerHost, mode: str, *, mic: str | None = None, codec: str = "opus"
) -> AudioCapture | None:
    """Open the audio for ``--audio MODE`` and hook it into a :class:`~overdrive.media.streamer.Streamer`."""
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
