"""Video encoders: H.264 through PyAV (libx264) and JPEG through OpenCV, plus picture scaling.

Each encoder takes BGR or BGRA pictures with their capture time and returns :class:`Packet` objects: the encoded bytes
of one picture (an H.264 access unit in Annex B, or a whole JPEG), the capture time and the keyframe flag.
H.264 runs ultrafast/zerolatency (no B-frames, no lookahead: one picture in, one access unit out), repeats
SPS/PPS on every keyframe so any keyframe starts a decoder, and forces a keyframe at least every
``keyframe_interval`` seconds. :attr:`H264Encoder.extradata` holds SPS+PPS (Annex B) for ``StreamInfo``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, Protocol, cast

import cv2

from overdrive.errors import ConfigError, MediaError
from overdrive.media.sources import Image

log = logging.getLogger(__name__)

CodecName = Literal["h264", "jpeg"]


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


def split_annexb(data: bytes) -> list[bytes]:
    """The NAL units (without start codes) of an Annex B byte stream."""
    starts = [m.end() for m in re.finditer(b"\x00\x00\x01", data)]
    nals = []
    for i, start in enumerate(starts):
        end = starts[i + 1] - 3 if i + 1 < len(starts) else len(data)
        nal = data[start:end].rstrip(b"\x00")  # a 4-byte start code leaves one zero behind
        if nal:
            nals.append(nal)
    return nals


def parameter_sets(access_unit: bytes) -> bytes:
    """SPS and PPS NAL units of an access unit, in Annex B (empty if it has none)."""
    sets = [n for n in split_annexb(access_unit) if n[0] & 0x1F in (7, 8)]
    return b"".join(b"\x00\x00\x00\x01" + n for n in sets)


class H264Encoder:
    """libx264 via PyAV, tuned for latency."""

    codec: CodecName = "h264"

    def __init__(
        self, width: int, height: int, fps: float, *, bitrate: int = 0, keyframe_interval: float = 1.0
    ) -> None:
        import av

        if width % 2 or height % 2:
            raise ConfigError(f"H.264 needs even dimensions, got {width}x{height}")
        self.width, self.height = width, height
        gop = max(1, round(fps * keyframe_interval))
        ctx = av.CodecContext.create("libx264", "w")
        ctx.width, ctx.height = width, height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, 1_000_000)
        ctx.framerate = Fraction(round(fps * 1000), 1000)
        # keyframes are forced by capture time (below); x264's own schedule is only a backstop
        params = f"keyint={gop * 4}:min-keyint=1:scenecut=0:repeat-headers=1:annexb=1"
        if bitrate:
            ctx.bit_rate = bitrate
            params += f":vbv-maxrate={bitrate // 1000}:vbv-bufsize={max(1, bitrate // 1000 // 2)}"
        ctx.options = {"preset": "ultrafast", "tune": "zerolatency", "forced-idr": "1", "x264-params": params}
        if not bitrate:
            ctx.options = {**ctx.options, "crf": "28"}
        try:
            ctx.open()
        except av.error.FFmpegError as exc:
            raise MediaError(f"cannot open the H.264 encoder: {exc}") from exc
        self._ctx = ctx
        self._av = av
        # force a keyframe once the interval is (within half a frame) over: at 30 fps, exactly every 30th picture
        self._keyframe_ns = int(keyframe_interval * 1e9 - 0.5e9 / fps)
        self._last_key_ns = -(1 << 62)
        self._pending: dict[int, int] = {}
        self.extradata = b""

    def encode(self, image: Image, pts_ns: int) -> list[Packet]:
        av = self._av
        h, w = image.shape[:2]
        if (w, h) != (self.width, self.height):
            raise MediaError(f"picture is {w}x{h}, encoder expects {self.width}x{self.height}")
        # OpenCV's BGR(A)->I420 is several times faster than swscale's and gives the same BT.601 limited range
        code = cv2.COLOR_BGRA2YUV_I420 if image.shape[2] == 4 else cv2.COLOR_BGR2YUV_I420
        frame = av.VideoFrame.from_ndarray(cv2.cvtColor(image, code), format="yuv420p")
        pts = pts_ns // 1000
        frame.pts = pts
        if pts_ns - self._last_key_ns >= self._keyframe_ns:
            frame.pict_type = av.video.frame.PictureType.I
        self._pending[pts] = pts_ns
        return self._collect(self._ctx.encode(frame))

    def _collect(self, packets: list) -> list[Packet]:  # type: ignore[type-arg]
        out = []
        for packet in packets:
            pts_ns = self._pending.pop(int(packet.pts), int(packet.pts) * 1000)
            data = bytes(packet)
            key = bool(packet.is_keyframe)
            if key:
                self._last_key_ns = pts_ns
                if not self.extradata:
                    self.extradata = parameter_sets(data)
            out.append(Packet(data, pts_ns, key))
        return out

    def close(self) -> None:
        try:
            self._ctx.encode(None)
        except self._av.error.FFmpegError:
            pass


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


def make_encoder(
    codec: str,
    width: int,
    height: int,
    fps: float,
    *,
    bitrate: int = 0,
    quality: int = 80,
    keyframe_interval: float = 1.0,
) -> Encoder:
    if codec == "h264":
        return H264Encoder(width, height, fps, bitrate=bitrate, keyframe_interval=keyframe_interval)
    if codec == "jpeg":
        return JpegEncoder(quality)
    raise ConfigError(f"--codec must be h264 or jpeg, not {codec!r}")


@dataclass(frozen=True, slots=True)
class Scale:
    """Output size: a factor of the source size, or a fixed WxH."""

    factor: float = 1.0
    size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.size is None and not 0.05 <= self.factor <= 4:
            raise ConfigError(f"--scale factor must be 0.05..4, not {self.factor}")
        if self.size is not None and (self.size[0] < 2 or self.size[1] < 2):
            raise ConfigError(f"--scale size must be at least 2x2, not {self.size}")

    @classmethod
    def parse(cls, text: str) -> Scale:
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
        if m:
            return cls(size=(int(m.group(1)), int(m.group(2))))
        try:
            return cls(factor=float(text))
        except ValueError:
            raise ConfigError(f"--scale must be a factor (0.5) or WxH (1280x720), not {text!r}") from None

    def output_size(self, width: int, height: int) -> tuple[int, int]:
        """The encoded size for a source of ``width`` x ``height``, rounded down to even numbers."""
        w, h = self.size if self.size is not None else (round(width * self.factor), round(height * self.factor))
        return max(2, w - w % 2), max(2, h - h % 2)

    def apply(self, image: Image, size: tuple[int, int]) -> Image:
        h, w = image.shape[:2]
        if (w, h) == size:
            return image
        interp = cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR
        return cast(Image, cv2.resize(image, size, interpolation=interp))
