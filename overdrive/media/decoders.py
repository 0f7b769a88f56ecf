"""Video decoders for viewers: H.264 through PyAV, JPEG through OpenCV.

``decode(data)`` returns the BGR pictures the packet completed (zero or one with zerolatency streams) and raises
:class:`~overdrive.errors.MediaError` on corrupt input, after which the caller waits for the next keyframe.
"""

from __future__ import annotations

from typing import Protocol, cast

import cv2
import numpy as np

from overdrive.errors import MediaError
from overdrive.media.sources import Image


class Decoder(Protocol):
    def decode(self, data: bytes | memoryview) -> list[Image]: ...

    def close(self) -> None: ...


class H264Decoder:
    """libavcodec's H.264 decoder, single-threaded (frame threading would add a frame of delay)."""

    def __init__(self, extradata: bytes = b"") -> None:
        import av

        self._av = av
        ctx = av.CodecContext.create("h264", "r")
        if extradata:
            ctx.extradata = extradata
        ctx.thread_type = "SLICE"
        ctx.options = {"flags": "low_delay"}
        try:
            ctx.open()
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot open the H.264 decoder: {exc}") from exc
        self._ctx = ctx

    def decode(self, data: bytes | memoryview) -> list[Image]:
        av = self._av
        try:
            frames = self._ctx.decode(av.Packet(bytes(data)))
            return [cast(Image, f.to_ndarray(format="bgr24")) for f in frames]
        except (av.error.FFmpegError, ValueError) as exc:
            raise MediaError(f"H.264 decode failed: {exc}") from exc

    def close(self) -> None:
        pass


class JpegDecoder:
    def decode(self, data: bytes | memoryview) -> list[Image]:
        img = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
        if img is None:
            raise MediaError("JPEG decode failed")
        return [cast(Image, img)]

    def close(self) -> None:
        pass


def make_decoder(codec: str, extradata: bytes = b"") -> Decoder:
    if codec == "h264":
        return H264Decoder(extradata)
    if codec == "jpeg":
        return JpegDecoder()
    raise MediaError(f"unknown video codec {codec!r}")
