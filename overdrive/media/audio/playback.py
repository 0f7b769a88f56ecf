"""Audio playback at the viewer: a jitter buffer per track, mixed into one sounddevice OutputStream.

:class:`AudioPlayer` hooks into a :class:`~overdrive.media.viewer.Viewer` (``viewer.add_listener(player)``), decodes
each track into its :class:`~overdrive.media.audio.jitter.JitterBuffer`, and feeds the device from a
:class:`~overdrive.bus.service.Worker` that writes whenever the device has room (PortAudio's blocking API: its
callback API stalls on the ALSA pulse plugin). ``PULSE_SINK`` picks the PulseAudio sink.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np

from overdrive.bus.service import Worker
from overdrive.errors import MediaError
from overdrive.media.audio import alsa
from overdrive.media.audio.alsa import quiet_alsa
from overdrive.media.audio.jitter import TARGET_NS, JitterBuffer
from overdrive.media.codecs import make_audio_decoder
from overdrive.media.codecs.base import SAMPLE_RATE, AudioDecoder, Samples
from overdrive.media.protocol import AudioChunk, StreamInfo, StreamMessage

log = logging.getLogger(__name__)

OUT_CHANNELS = 2
BLOCK = 480  # 10 ms writes


def _stereo(pcm: Samples) -> Samples:
    if pcm.shape[1] == OUT_CHANNELS:
        return pcm
    if pcm.shape[1] == 1:
        return np.repeat(pcm, OUT_CHANNELS, axis=1)
    return np.ascontiguousarray(pcm[:, :OUT_CHANNELS])


class AudioPlayer(Worker):
    """Play the stream's audio tracks (mixed) on an output device; a Viewer listener."""

    name = "overdrive-playback"
    error_type = MediaError

    def __init__(self, device: Any = None, target_ns: int = TARGET_NS) -> None:
        super().__init__()
        self.device = device
        self.target_ns = target_ns
        self._lock = threading.Lock()
        self._stream_id: str | None = None
        self._decoders: dict[int, AudioDecoder] = {}
        self._buffers: dict[int, JitterBuffer] = {}
        self._out: Any = None
        self.decode_errors = 0
        self.latency_ns = 0

    # -- lifecycle -------------------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the output device (MediaError if there is none) and start feeding it."""
        self.start()

    def close(self) -> None:
        self.stop()

    def __enter__(self) -> AudioPlayer:  # open() is explicit: a missing device is the caller's choice to handle
        return self

    def setup(self) -> None:
        import sounddevice as sd

        quiet_alsa()  # underruns under load: counted and logged at debug level, not printed over the window
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

    def teardown(self) -> None:
        if self._out is not None:
            import sounddevice as sd

            try:
                self._out.stop()
                self._out.close()
            except sd.PortAudioError as exc:  # teardown only
                log.debug("closing audio output: %s", exc)
            self._out = None

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
            "alsa_messages": dict(alsa.messages),  # underruns the sound card reported: snd_pcm_recover
            "decode_errors": self.decode_errors,
            "output_latency_ms": self.latency_ns / 1e6,
            "latency_ms": {
                "p50": float(np.percentile(lat, 50)) if lat else None,
                "p99": float(np.percentile(lat, 99)) if lat else None,
                "samples": len(lat),
            },
        }

    # -- device thread ---------------------------------------------------------------------------------------
    def loop(self) -> None:
        out = self._out
        try:
            while not self.stopping.is_set():
                room = int(out.write_available)
                if room < BLOCK:
                    self.stopping.wait(0.003)
                    continue
                frames = room - room % BLOCK
                # PortAudio's reported latency is the device buffer we keep full: what we write now is heard then
                out.write(self.mix(frames, time.time_ns() + self.latency_ns))
        except Exception:  # the device went away: the viewer keeps running without sound
            log.exception("audio playback stopped")
