"""JPEG through OpenCV: every picture is its own keyframe."""

from __future__ import annotations

from typing import cast

import cv2
import numpy as np

from overdrive.errors import ConfigError, MediaError
from overdrive.media.codecs.base import CodecName, Packet
from overdrive.media.sources import Image


class JpegEncoder:
    """One JPEG per picture (every frame is a keyframe)."""

    codec: CodecName = "jpeg"
    extradata = b""

    def __init__(self, quality: int = 80) -> None:
        if not 1 <= quality <= 100:
            raise ConfigError(f"--quality must be 1..100, not {quality}")
        self.quality = quality

    def encode(self, image: Image, pts_ns: int) -> list[Packet]:
        if image.shape[2] == 4:
            image = cast(Image, cv2.cvtColor(image, cv2.COLOR_BGRA2BGR))
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if not ok:
            raise MediaError("JPEG encoding failed")
        return [Packet(buf.tobytes(), pts_ns, True)]

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
