"""Writing one recording: fragmented MP4 through PyAV, every track timed by capture timestamps.

``T0`` is the capture time of the first kept video frame (a keyframe). Video PTS are ``(pts_ns - T0)`` in
1/90000 s, audio positions ``(pts_ns - T0)`` in samples at 48 kHz, so the file's timeline *is* the streamer's
wall clock: a lost or late-joined stretch shows as the previous frame held and silence, and nothing shifts.

* H.264 access units are muxed as they were sent (Annex B in, the MP4 muxer converts to length-prefixed NAL units
  and builds ``avcC`` from the stream's SPS/PPS); each packet is held until the next one so its duration is exact.
* JPEG streams are decoded and encoded to H.264 on the fly (ultrafast), with the same timestamps.
* Audio is decoded from the wire codec and re-encoded to AAC; :class:`AudioTimeline` (sans-IO) decides where each
  chunk goes: silence for gaps, trimming for overlaps, tiny jitter absorbed. Each track is titled by its source
  (:data:`TRACK_TITLES`); with several tracks (``--audio both``) the first audio track, the only default one, is
  their mix (:class:`_Mix`), what a viewer hears live, and the separate tracks follow.
* ``movflags=frag_keyframe+empty_moov+default_base_moof``: a fragment per keyframe, so a process killed with -9
  leaves a file that plays up to the last complete fragment (about a second before the kill).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from overdrive.errors import MediaError
from overdrive.media.chat_record import Cue, tx3g_sample
from overdrive.media.codecs import make_audio_decoder
from overdrive.media.codecs.base import SAMPLE_RATE, AudioDecoder, Samples
from overdrive.media.codecs.h264 import parameter_sets
from overdrive.media.protocol import AudioTrackInfo, StreamInfo, VideoFrame

log = logging.getLogger(__name__)

VIDEO_RATE = 90_000
AAC_FRAME = 1024
JITTER_SAMPLES = SAMPLE_RATE // 100  # 10 ms: timestamp noise below this is absorbed, not patched
MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof+delay_moov"


def video_ticks(pts_ns: int, t0_ns: int) -> int:
    return round((pts_ns - t0_ns) * VIDEO_RATE / 1e9)


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a chunk goes: drop ``skip`` samples from its start, insert ``silence`` samples before it."""

    skip: int
    silence: int


class AudioTimeline:
    """Sample positions of one audio track relative to ``t0_ns`` (sans-IO)."""

    def __init__(self, t0_ns: int, rate: int = SAMPLE_RATE, jitter: int = JITTER_SAMPLES) -> None:
        self.t0_ns = t0_ns
        self.rate = rate
        self.jitter = jitter
        self.cursor = 0  # samples written so far
        self.silence = 0
        self.trimmed = 0

    def position(self, pts_ns: int) -> int:
        return round((pts_ns - self.t0_ns) * self.rate / 1e9)

    def place(self, pts_ns: int, samples: int) -> Placement:
        gap = self.position(pts_ns) - self.cursor
        exact = self.cursor == 0  # the first chunk lands exactly; later ones only move for real gaps/overlaps
        if gap > (0 if exact else self.jitter):
            placement = Placement(0, gap)
        elif gap < (0 if exact else -self.jitter):
            placement = Placement(min(samples, -gap), 0)
        else:
            placement = Placement(0, 0)
        self.silence += placement.silence
        self.trimmed += placement.skip
        self.cursor += placement.silence + samples - placement.skip
        return placement

    def pad_to(self, end_ns: int) -> int:
        """Silence needed so the track reaches ``end_ns`` (0 if it already does)."""
        return max(0, self.position(end_ns) - self.cursor)


TRACK_TITLES = {"system": "system audio", "mic": "microphone", "testtone": "test tone"}
"""Titles of the audio tracks in a recording, by the capture source that made them."""
MIX_LAG = SAMPLE_RATE
"""Samples the mix waits for a track that is behind the others (1 s); what such a track misses is silent in the
mix (it stays in its own track), so the mix never holds more than this."""


def track_title(source: str) -> str:
    return TRACK_TITLES.get(source, source)


class _AacOut:
    """One AAC track of the container, fed PCM in timeline order (sample 0 is ``T0``)."""

    def __init__(self, container: Any, channels: int, title: str, default: bool) -> None:
        import av

        self._av = av
        self.channels = channels
        self._layout = "mono" if channels == 1 else "stereo"
        self.stream = container.add_stream("aac", rate=SAMPLE_RATE, layout=self._layout)
        self.stream.codec_context.bit_rate = 96_000 * channels
        self.stream.time_base = Fraction(1, SAMPLE_RATE)
        # the MP4 muxer stores "title" as the track's udta name; players show the handler name
        self.stream.metadata["title"] = self.stream.metadata["handler_name"] = title
        # players pick the default track; only one is
        self.stream.disposition = av.stream.Disposition.default if default else av.stream.Disposition(0)
        self._fifo = np.zeros((0, channels), dtype=np.int16)
        self.written = 0

    def write(self, parts: list[Samples]) -> list[Any]:
        if not parts:
            return []
        self._fifo = np.concatenate([self._fifo, *parts])
        packets: list[Any] = []
        while len(self._fifo) >= AAC_FRAME:
            block, self._fifo = self._fifo[:AAC_FRAME], self._fifo[AAC_FRAME:]
            packets += self._encode(block)
        return packets

    def flush(self, total: int | None) -> list[Any]:
        """Encode what is left, cut so the track holds at most ``total`` samples (None: all)."""
        if total is not None:
            self._fifo = self._fifo[: max(0, total - self.written)]
        packets = self._encode(self._fifo) if len(self._fifo) else []
        self._fifo = self._fifo[:0]
        return packets + list(self.stream.encode(None))

    def _encode(self, block: Samples) -> list[Any]:
        frame = self._av.AudioFrame.from_ndarray(
            np.ascontiguousarray(block).reshape(1, -1), format="s16", layout=self._layout
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self.written
        frame.time_base = Fraction(1, SAMPLE_RATE)
        self.written += len(block)
        return list(self.stream.encode(frame))


class _Mix:
    """The sum of all audio tracks on the shared timeline, as a viewer hears them live (sans-IO but for ``out``).

    Each track reports the samples it placed; the mix is written up to where every track has reached, or up to
    :data:`MIX_LAG` behind the furthest one, so a stalled track delays it boundedly."""

    def __init__(self, out: _AacOut, tracks: list[int]) -> None:
        self.out = out
        self._acc = np.zeros((0, out.channels), dtype=np.int32)
        self._base = 0  # timeline position of _acc[0]
        self._reached = dict.fromkeys(tracks, 0)

    def add(self, track: int, start: int, pcm: Samples) -> list[Any]:
        end = start + len(pcm)
        low = max(start, self._base)
        if end > low:
            if end - self._base > len(self._acc):
                grow = np.zeros((end - self._base - len(self._acc), self.out.channels), dtype=np.int32)
                self._acc = np.concatenate([self._acc, grow])
            self._acc[low - self._base : end - self._base] += pcm[low - start :]
        self._reached[track] = max(self._reached[track], end)
        furthest = max(self._reached.values())
        return self._emit(max(min(self._reached.values()), furthest - MIX_LAG))

    def finish(self, total: int | None) -> list[Any]:
        upto = total if total is not None else max(self._reached.values())
        return self._emit(upto) + self.out.flush(total)

    def _emit(self, upto: int) -> list[Any]:
        count = upto - self._base
        if count <= 0:
            return []
        if count > len(self._acc):
            grow = np.zeros((count - len(self._acc), self.out.channels), dtype=np.int32)
            self._acc = np.concatenate([self._acc, grow])
        block = np.clip(self._acc[:count], -32768, 32767).astype(np.int16)
        self._acc = self._acc[count:]
        self._base = upto
        return self.out.write([block])


class _AudioTrack:
    def __init__(
        self,
        out: _AacOut,
        info: AudioTrackInfo,
        t0_ns: int,
        on_pcm: Callable[[int, Samples], None],
        mix: _Mix | None,
    ) -> None:
        self.info = info
        self.decoder: AudioDecoder = make_audio_decoder(info.codec, info.channels)
        self.out = out
        self.channels = out.channels
        self.timeline = AudioTimeline(t0_ns)
        self._placed = 0  # samples handed to the track (and the mix) so far
        self._on_pcm = on_pcm
        self._mix = mix
        self.decode_errors = 0

    def add(self, pts_ns: int, payload: bytes) -> list[Any]:
        try:
            pcm = self.decoder.decode(payload)
        except MediaError:
            self.decode_errors += 1
            return []
        if not len(pcm):
            return []
        pcm = pcm[:, : self.channels]
        place = self.timeline.place(pts_ns, len(pcm))
        parts = []
        if place.silence:
            parts.append(np.zeros((place.silence, self.channels), dtype=np.int16))
        if place.skip < len(pcm):
            parts.append(pcm[place.skip :])
        return self._write(parts)

    def finish(self, end_ns: int | None) -> list[Any]:
        packets = []
        total = None
        if end_ns is not None:
            pad = self.timeline.pad_to(end_ns)
            if pad:
                packets += self._write([np.zeros((pad, self.channels), dtype=np.int16)])
            total = self.timeline.position(end_ns)
        return packets + self.out.flush(total)

    def _write(self, parts: list[Samples]) -> list[Any]:
        packets: list[Any] = []
        for part in parts:
            self._on_pcm(self.info.track, part)
            if self._mix is not None:
                packets += self._mix.add(self.info.track, self._placed, part)
            self._placed += len(part)
        return packets + self.out.write(parts)


class Mp4Writer:
    """One MP4 file for one stream from ``t0_ns`` on; feed it accepted frames and audio chunks in arrival order."""

    def __init__(self, path: Path, info: StreamInfo, t0_ns: int, on_pcm: Callable[[int, Samples], None]) -> None:
        import av

        self._av = av
        self.path = path
        self.info = info
        self.t0_ns = t0_ns
        video = info.video
        self.frame_ticks = max(1, round(VIDEO_RATE / video.fps))
        try:
            self._out = av.open(
                str(path),
                "w",
                format="mp4",
                options={
                    "movflags": MOVFLAGS,
                    "max_interleave_delta": "1000000",
                    "avoid_negative_ts": "disabled",
                    "flush_packets": "1",  # each finished fragment reaches the file at once (crash safety)
                },
            )
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot create {path}: {exc}") from exc
        self._out.metadata["title"] = info.name
        self._out.metadata["comment"] = (
            f"overdrive stream_id={info.stream_id} started_ns={info.started_ns} t0_ns={t0_ns}"
        )
        self._reencode = video.codec != "h264"
        if self._reencode:
            vs: Any = self._out.add_stream("libx264", rate=max(1, round(video.fps)))
            vs.width, vs.height, vs.pix_fmt = video.width, video.height, "yuv420p"
            vs.codec_context.time_base = Fraction(1, VIDEO_RATE)
            vs.codec_context.options = {"preset": "ultrafast", "tune": "zerolatency", "crf": "23"}
        else:
            vs = self._out.add_mux_stream("h264", width=video.width, height=video.height)
        vs.time_base = Fraction(1, VIDEO_RATE)
        self._video: Any = vs
        self._mix: _Mix | None = None
        channels = {t.track: 1 if t.channels == 1 else 2 for t in info.audio}
        if len(info.audio) > 1:  # first and default: what a viewer hears live, every track mixed
            titles = " + ".join(track_title(t.source) for t in info.audio)
            out = _AacOut(self._out, max(channels.values()), f"lecture ({titles})", default=True)
            self._mix = _Mix(out, list(channels))
        self._audio = {
            t.track: _AudioTrack(
                _AacOut(self._out, channels[t.track], track_title(t.source), default=self._mix is None),
                t,
                t0_ns,
                on_pcm,
                self._mix,
            )
            for t in info.audio
        }
        self._chat: Any = None
        self._chat_ms = -1
        if info.chat_port:  # a stream with a chat: its lines as a subtitle track (see media.chat_record)
            self._chat = self._out.add_mux_stream("mov_text")
            self._chat.time_base = Fraction(1, 1000)
            self._chat.metadata["title"] = self._chat.metadata["handler_name"] = "chat"
        self._held: tuple[int, bytes, bool] | None = None  # (ticks, data, keyframe) of the last H.264 packet
        self._last_ticks = -1
        self.last_video_ns: int | None = None
        self.frames = 0
        self.audio_chunks = 0

    def video(self, frame: VideoFrame, data: bytes) -> None:
        ticks = video_ticks(frame.pts_ns, self.t0_ns)
        if ticks <= self._last_ticks:
            return  # not after the previous frame: cannot be placed
        self._last_ticks = ticks
        self.last_video_ns = frame.pts_ns
        self.frames += 1
        if self._reencode:
            self._encode_jpeg(ticks, data)
            return
        if self._held is not None:
            held_ticks, held_data, held_key = self._held
            self._mux_h264(held_ticks, held_data, held_key, ticks - held_ticks)
        elif not parameter_sets(data):
            data = self.info.video.extradata + data  # the muxer builds avcC from the first packet's SPS/PPS
        self._held = (ticks, data, frame.keyframe)

    def audio(self, track: int, pts_ns: int, data: bytes) -> None:
        writer = self._audio.get(track)
        if writer is None:
            return
        self.audio_chunks += 1
        self._mux(writer.add(pts_ns, data))

    def subtitles(self, cues: list[Cue]) -> None:
        """Chat cues into the subtitle track (a stream without chat has none: they are dropped), in order and not
        overlapping; call once, just before :meth:`close` (see :mod:`~overdrive.media.chat_record` for why)."""
        for cue in cues if self._chat is not None else ():
            start = max(cue.start_ms, self._chat_ms + 1)
            self._chat_ms = start
            packet = self._av.Packet(tx3g_sample(cue.text))
            packet.stream = self._chat
            packet.time_base = Fraction(1, 1000)
            packet.pts = packet.dts = start
            packet.duration = cue.duration_ms
            self._out.mux(packet)

    @property
    def end_ns(self) -> int | None:
        """Where the recording ends: the last video frame's time plus one frame."""
        if self.last_video_ns is None:
            return None
        return self.last_video_ns + self.frame_ticks * 1_000_000_000 // VIDEO_RATE

    def close(self) -> None:
        """Flush everything; audio is padded or cut to end with the last video frame."""
        end_ns = self.end_ns
        try:
            if self._held is not None:
                self._mux_h264(*self._held, self.frame_ticks)
                self._held = None
            if self._reencode:
                self._mux(self._video.encode(None))
            for writer in self._audio.values():
                self._mux(writer.finish(end_ns))
            if self._mix is not None:
                end = None if end_ns is None else AudioTimeline(self.t0_ns).position(end_ns)
                self._mux(self._mix.finish(end))
        finally:
            self._out.close()

    def abort(self) -> None:
        """Close after a failed write, writing nothing more than the muxer manages (the caller salvages)."""
        try:
            self._out.close()
        except (self._av.error.FFmpegError, OSError) as exc:
            log.debug("closing %s after a failed write: %s", self.path, exc)

    def _mux_h264(self, ticks: int, data: bytes, keyframe: bool, duration: int) -> None:
        packet = self._av.Packet(data)
        packet.stream = self._video
        packet.time_base = Fraction(1, VIDEO_RATE)
        packet.pts = packet.dts = ticks
        packet.duration = duration
        packet.is_keyframe = keyframe
        self._out.mux(packet)

    def _encode_jpeg(self, ticks: int, data: bytes) -> None:
        image: Any = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            return
        video = self.info.video
        if image.shape[1] != video.width or image.shape[0] != video.height:
            image = cv2.resize(image, (video.width, video.height))
        frame = self._av.VideoFrame.from_ndarray(image, format="bgr24")
        frame.pts = ticks
        frame.time_base = Fraction(1, VIDEO_RATE)
        self._mux(self._video.encode(frame))

    def _mux(self, packets: Any) -> None:
        for packet in packets:
            self._out.mux(packet)
