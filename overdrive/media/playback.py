"""Audio playback at the viewer: a small jitter buffer per track, mixed into one sounddevice OutputStream.

:class:`JitterBuffer` is sans-IO. It maps stream time to local time with one delay: the smallest transit
(arrival − capture timestamp) seen over the last couple of seconds plus a target of 40 ms. A sample captured at
``pts`` is played at local time ``pts + delay``; video is shown as soon as it is decoded (``pts`` + transit +
decode time), so the two stay within the jitter target of each other, by timestamps. A chunk that arrives after
its turn is dropped (counted), never queued: the delay does not grow with network hiccups, only when the
transit floor itself rises for longer than the window.

:class:`AudioPlayer` hooks into a :class:`~overdrive.media.viewer.Viewer` (``viewer.add_listener(player)``),
decodes each track, and feeds the device from a thread that writes whenever the device has room (PortAudio's
blocking API: its callback API stalls on the ALSA pulse plugin). ``PULSE_SINK`` picks the PulseAudio sink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overdrive.errors import MediaError
from overdrive.media.audio_codec import SAMPLE_RATE, AudioDecoder, Samples, make_audio_decoder
from overdrive.media.protocol import AudioChunk, StreamInfo, StreamMessage

log = logging.getLogger(__name__)

TARGET_NS = 40_000_000
"""Jitter allowance on top of the transit floor (total buffering stays under 60 ms on a LAN)."""
WINDOW_NS = 2_000_000_000
RESYNC_SAMPLES = SAMPLE_RATE * 15 // 1000
OUT_CHANNELS = 2
BLOCK = 480  # 10 ms writes


@dataclass
class BufferStats:
    pushed: int = 0
    late: int = 0
    played: int = 0
    underruns: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class JitterBuffer:
    """Stream-timestamped chunks in, a continuous sample stream out at the right local time (sans-IO)."""

    def __init__(self, channels: int, rate: int = SAMPLE_RATE, target_ns: int = TARGET_NS) -> None:
        self.channels = channels
        self.rate = rate
        self.target_ns = target_ns
        self.stats = BufferStats()
        self._chunks: deque[tuple[int, Samples]] = deque()  # (stream ns of first sample, samples)
        self._transits: deque[tuple[int, int]] = deque()  # (arrival ns, transit ns)
        self._cursor_ns: int | None = None  # stream time of the next sample to play
        self._cursor_frac = 0

    @property
    def delay_ns(self) -> int | None:
        """Local time minus stream time for playback, or None before any chunk arrived."""
        if not self._transits:
            return None
        return min(t for _, t in self._transits) + self.target_ns

    def push(self, pts_ns: int, pcm: Samples, arrival_ns: int) -> bool:
        """Add a chunk; False (and counted) if it came too late to be played."""
        self.stats.pushed += 1
        self._transits.append((arrival_ns, arrival_ns - pts_ns))
        while self._transits and arrival_ns - self._transits[0][0] > WINDOW_NS:
            self._transits.popleft()
        end_ns = pts_ns + len(pcm) * 1_000_000_000 // self.rate
        if self._cursor_ns is not None and end_ns <= self._cursor_ns:
            self.stats.late += 1
            return False
        self._chunks.append((pts_ns, pcm))
        if len(self._chunks) > 1 and self._chunks[-2][0] > pts_ns:
            self._chunks = deque(sorted(self._chunks, key=lambda c: c[0]))
        return True

    def pull(self, frames: int, play_ns: int) -> Samples:
        """``frames`` samples to be heard from local time ``play_ns`` on (silence where nothing is due)."""
        out = np.zeros((frames, self.channels), dtype=np.int16)
        delay = self.delay_ns
        if delay is None:
            return out
        due = play_ns - delay
        if self._cursor_ns is None or abs(due - self._cursor_ns) > RESYNC_SAMPLES * 1_000_000_000 // self.rate:
            self._cursor_ns = due  # first pull, or we drifted/stalled: jump to where we should be
        start = self._cursor_ns
        filled = False
        for pts, pcm in self._chunks:
            offset = round((pts - start) * self.rate / 1e9)
            if offset >= frames:
                break
            src0 = max(0, -offset)
            dst0 = max(0, offset)
            n = min(len(pcm) - src0, frames - dst0)
            if n > 0:
                out[dst0 : dst0 + n] = pcm[src0 : src0 + n]
                if not filled:
                    self.stats.latencies_ms.append(
                        (play_ns + dst0 * 1e9 / self.rate - (pts + src0 * 1e9 / self.rate)) / 1e6
                    )
                filled = True
        self._cursor_ns = start + frames * 1_000_000_000 // self.rate
        while (
            self._chunks
            and self._chunks[0][0] + len(self._chunks[0][1]) * 1_000_000_000 // self.rate <= self._cursor_ns
        ):
            self._chunks.popleft()
        if filled:
            self.stats.played += 1
        elif self.stats.played:
            self.stats.underruns += 1
        return out

    def clear(self) -> None:
        self._chunks.clear()
        self._transits.clear()
        self._cursor_ns = None


def _stereo(pcm: Samples) -> Samples:
    if pcm.shape[1] == OUT_CHANNELS:
        return pcm
    if pcm.shape[1] == 1:
        return np.repeat(pcm, OUT_CHANNELS, axis=1)
    return np.ascontiguousarray(pcm[:, :OUT_CHANNELS])


class AudioPlayer:
    """Play the stream's audio tracks (mixed) on an output device; a Viewer listener."""

    def __init__(self, device: Any = None, target_ns: int = TARGET_NS) -> None:
        self.device = device
        self.target_ns = target_ns
        self._lock = threading.Lock()
        self._stream_id: str | None = None
        self._decoders: dict[int, AudioDecoder] = {}
        self._buffers: dict[int, JitterBuffer] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._out: Any = None
        self.decode_errors = 0
        self.latency_ns = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the output device (MediaError if there is none) and start feeding it."""
        import sounddevice as sd

        try:
            out = sd.OutputStream(
                device=self.device,
                samplerate=SAMPLE_RATE,
                channels=OUT_CHANNELS,
                dtype="int16",
                blocksize=BLOCK,
                latency="low",
            )
            out.start()
        except (sd.PortAudioError, ValueError) as exc:
            raise MediaError(
                f"cannot open the audio output {self.device or 'default'!r}: {exc} (use --mute to watch without sound)"
            ) from exc
        self._out = out
        self.latency_ns = int(float(out.latency) * 1e9)
        self._thread = threading.Thread(target=self._run, name="overdrive-playback", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._out is not None:
            import sounddevice as sd

            try:
                self._out.stop()
                self._out.close()
            except sd.PortAudioError as exc:  # teardown only
                log.debug("closing audio output: %s", exc)
            self._out = None

    def __enter__(self) -> AudioPlayer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- viewer hook -----------------------------------------------------------------------------------------
    def __call__(self, message: StreamMessage, payload: bytes) -> None:
        if isinstance(message, StreamInfo):
            self.on_info(message)
        elif isinstance(message, AudioChunk):
            self.on_chunk(message, payload, time.time_ns())

    def on_info(self, info: StreamInfo) -> None:
        with self._lock:
            if info.stream_id == self._stream_id:
                return
            self._stream_id = info.stream_id
            self._decoders.clear()
            self._buffers.clear()
            for track in info.audio:
                try:
                    self._decoders[track.track] = make_audio_decoder(track.codec, track.channels)
                except MediaError as exc:
                    log.warning("cannot play audio track %d: %s", track.track, exc)
                    continue
                self._buffers[track.track] = JitterBuffer(OUT_CHANNELS, target_ns=self.target_ns)

    def on_chunk(self, chunk: AudioChunk, payload: bytes, arrival_ns: int) -> None:
        with self._lock:
            if chunk.stream_id != self._stream_id:
                return
            decoder = self._decoders.get(chunk.track)
            buffer = self._buffers.get(chunk.track)
            if decoder is None or buffer is None:
                return
            try:
                pcm = decoder.decode(payload)
            except MediaError:
                self.decode_errors += 1
                return
            if len(pcm):
                buffer.push(chunk.pts_ns, _stereo(pcm), arrival_ns)

    def mix(self, frames: int, play_ns: int) -> Samples:
        with self._lock:
            parts = [b.pull(frames, play_ns) for b in self._buffers.values()]
        if not parts:
            return np.zeros((frames, OUT_CHANNELS), dtype=np.int16)
        if len(parts) == 1:
            return parts[0]
        total = np.zeros((frames, OUT_CHANNELS), dtype=np.int32)
        for part in parts:
            total += part
        mixed: Samples = np.clip(total, -32768, 32767).astype(np.int16)
        return mixed

    def stats(self) -> dict[str, Any]:
        with self._lock:
            buffers = list(self._buffers.values())
        lat = [x for b in buffers for x in b.stats.latencies_ms]
        return {
            "tracks": len(buffers),
            "chunks": sum(b.stats.pushed for b in buffers),
            "late_dropped": sum(b.stats.late for b in buffers),
            "underruns": sum(b.stats.underruns for b in buffers),
            "decode_errors": self.decode_errors,
            "output_latency_ms": self.latency_ns / 1e6,
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)) if lat else None,
                "p99": float(np.percentile(lat, 99)) if lat else None,
                "samples": len(lat),
            },
        }

    # -- device thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        out = self._out
        try:
            while not self._stop.is_set():
                room = int(out.write_available)
                if room < BLOCK:
                    self._stop.wait(0.003)
                    continue
                frames = room - room % BLOCK
                # PortAudio's reported latency is the device buffer we keep full: what we write now is heard then
                out.write(self.mix(frames, time.time_ns() + self.latency_ns))
        except Exception:  # the device went away: the viewer keeps running without sound
            log.exception("audio playback stopped")
