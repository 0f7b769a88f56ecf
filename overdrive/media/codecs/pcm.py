"""Raw PCM on the wire (``--audio-codec pcm``): interleaved s16le, one chunk per input block, no delay."""

from __future__ import annotations

import numpy as np

from overdrive.errors import MediaError
from overdrive.media.codecs.base import EncodedChunk, Samples, check_samples


class PcmEncoder:
    """Interleaved s16le, one chunk per input block (no delay)."""

    codec = "pcm"
    extradata = b""

    def __init__(self, channels: int) -> None:
        self.channels = channels

    def encode(self, pcm: Samples, pts_ns: int) -> list[EncodedChunk]:
        check_samples(pcm, self.channels)
        return [EncodedChunk(pcm.astype("<i2", copy=False).tobytes(), pts_ns, pcm.shape[0])]

    def close(self) -> None:
        pass


class PcmDecoder:
    def __init__(self, channels: int) -> None:
        self.channels = channels

    def decode(self, data: bytes) -> Samples:
        if len(data) % (2 * self.channels):
            raise MediaError(f"PCM chunk of {len(data)} bytes is not whole {self.channels}-channel samples")
        return np.frombuffer(data, dtype="<i2").reshape(-1, self.channels).astype(np.int16)
