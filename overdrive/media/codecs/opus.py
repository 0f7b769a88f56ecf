"""Opus through PyAV, the default audio codec on the wire.

The encoder takes interleaved int16 samples with the capture time of their first sample and returns
:class:`~overdrive.media.codecs.base.EncodedChunk` objects whose ``pts_ns`` is the capture time of the first sample
*they contain*: libopus delays its output by a look-ahead (312 samples at
48 kHz), so each Opus packet is stamped that much earlier than the input it came from. A decoder turns one chunk
back into int16 samples, shaped ``(samples, channels)``, aligned with that ``pts_ns``. Opus decoders are built
without the encoder's header, so no pre-skip is applied and every packet decodes to exactly its own 20 ms.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from typing import Any

import numpy as np

from overdrive.errors import ConfigError, MediaError
from overdrive.media.codecs.base import (
    CHUNK_SAMPLES,
    SAMPLE_RATE,
    EncodedChunk,
    Samples,
    check_samples,
    samples_to_ns,
)


def _layout(channels: int) -> str:
    if channels == 1:
        return "mono"
    if channels == 2:
        return "stereo"
    raise ConfigError(f"Opus here supports 1 or 2 channels, not {channels}")


class OpusEncoder:
    """libopus through PyAV: 20 ms frames, 64 kbit/s per channel, low-delay application."""

    codec = "opus"

    def __init__(self, channels: int, bitrate: int = 0) -> None:
        import av

        self._av = av
        self.channels = channels
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = _layout(channels)
        ctx.format = "s16"
        ctx.time_base = Fraction(1, SAMPLE_RATE)
        ctx.bit_rate = bitrate or 64_000 * channels
        ctx.options = {"application": "lowdelay", "frame_duration": "20"}
        try:
            ctx.open()
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot open the Opus encoder: {exc}") from exc
        self._ctx = ctx
        self.extradata = bytes(ctx.extradata or b"")
        self.delay = int(getattr(ctx, "initial_padding", 0) or 0)
        self._next = 0
        self._inputs: deque[tuple[int, int]] = deque()  # (first sample index, capture ns) per input block

    def encode(self, pcm: Samples, pts_ns: int) -> list[EncodedChunk]:
        check_samples(pcm, self.channels)
        if pcm.shape[0] != CHUNK_SAMPLES:
            raise MediaError(f"Opus frames are {CHUNK_SAMPLES} samples, not {pcm.shape[0]}")
        av = self._av
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm).reshape(1, -1), format="s16", layout=_layout(self.channels)
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._next
        self._inputs.append((self._next, pts_ns))
        self._next += CHUNK_SAMPLES
        try:
            packets = self._ctx.encode(frame)
        except av.error.FFmpegError as exc:
            raise MediaError(f"Opus encode failed: {exc}") from exc
        return [self._chunk(p) for p in packets]

    def _chunk(self, packet: Any) -> EncodedChunk:
        start = int(packet.pts)  # = input sample index - delay
        while len(self._inputs) > 1 and self._inputs[1][0] <= start:
            self._inputs.popleft()
        first, first_ns = self._inputs[0]
        pts_ns = max(0, first_ns + samples_to_ns(start - first))
        return EncodedChunk(bytes(packet), pts_ns, int(packet.duration or CHUNK_SAMPLES))

    def close(self) -> None:
        pass


class OpusDecoder:
    """The FFmpeg Opus decoder, without a header (so no pre-skip), returning int16 interleaved."""

    def __init__(self, channels: int) -> None:
        import av

        self._av = av
        self.channels = channels
        ctx = av.CodecContext.create("opus", "r")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = _layout(channels)
        try:
            ctx.open()
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot open the Opus decoder: {exc}") from exc
        self._ctx = ctx

    def decode(self, data: bytes) -> Samples:
        av = self._av
        try:
            frames = self._ctx.decode(av.Packet(data))
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"Opus decode failed: {exc}") from exc
        parts = [_to_int16(f.to_ndarray(), self.channels) for f in frames]
        if not parts:
            return np.zeros((0, self.channels), dtype=np.int16)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def _to_int16(planes: np.ndarray[Any, Any], channels: int) -> Samples:
    """(channels, n) planar float or (1, n*channels) packed → (n, channels) int16."""
    if planes.dtype.kind == "f":
        planes = np.clip(planes * 32768.0, -32768, 32767)
    if (planes.shape[0] == channels and channels > 1) or (planes.shape[0] == 1 and channels == 1):
        out = planes.T
    else:
        out = planes.reshape(-1, channels)
    return np.ascontiguousarray(out, dtype=np.int16)
