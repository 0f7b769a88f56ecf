"""What every codec module implements: video encoders and decoders, audio encoders and decoders.

A video encoder takes BGR or BGRA pictures with their capture time and returns :class:`Packet` objects (the encoded
bytes of one picture, its capture time, the keyframe flag); a video decoder returns the BGR pictures a packet
completed and raises :class:`~overdrive.errors.MediaError` on corrupt input, after which the caller waits for the
next keyframe. Audio is 48 kHz int16, shaped ``(samples, channels)``, in chunks of :data:`CHUNK_SAMPLES` (20 ms);
an audio encoder returns :class:`EncodedChunk` objects stamped with the capture time of their first sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from overdrive.errors import MediaError
from overdrive.media.sources import Image

CodecName = Literal["h264", "jpeg"]

SAMPLE_RATE = 48_000
CHUNK_SAMPLES = 960
"""20 ms at 48 kHz: one Opus frame, one stream chunk."""
CHUNK_NS = CHUNK_SAMPLES * 1_000_000_000 // SAMPLE_RATE

Samples = np.ndarray[Any, np.dtype[np.int16]]


def samples_to_ns(samples: int, rate: int = SAMPLE_RATE) -> int:
    return samples * 1_000_000_000 // rate


@dataclass(frozen=True, slots=True)
class Packet:
    """One encoded picture."""

    data: bytes
    pts_ns: int
    keyframe: bool


class Encoder(Protocol):
    codec: CodecName
    extradata: bytes

    def encode(self, image: Image, pts_ns: int) -> list[Packet]: ...

    def close(self) -> None: ...


class Decoder(Protocol):
    def decode(self, data: bytes | memoryview) -> list[Image]: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EncodedChunk:
    """One encoded chunk: bytes, the capture time of its first sample, and how many samples it holds."""

    data: bytes
    pts_ns: int
    samples: int


class AudioEncoder(Protocol):
    codec: str
    extradata: bytes

    def encode(self, pcm: Samples, pts_ns: int) -> list[EncodedChunk]: ...

    def close(self) -> None: ...


class AudioDecoder(Protocol):
    def decode(self, data: bytes) -> Samples: ...


def check_samples(pcm: Samples, channels: int) -> None:
    """Raise MediaError unless ``pcm`` is int16 shaped ``(n, channels)``."""
    if pcm.dtype != np.int16 or pcm.ndim != 2 or pcm.shape[1] != channels:
        raise MediaError(f"expected int16 samples shaped (n, {channels}), got {pcm.dtype} {pcm.shape}")
