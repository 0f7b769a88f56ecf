"""H.264 through PyAV: libx264 to encode, libavcodec to decode.

The encoder runs ultrafast/zerolatency (no B-frames, no lookahead: one picture in, one access unit out in Annex B),
repeats SPS/PPS on every keyframe so any keyframe starts a decoder, and forces a keyframe at least every
``keyframe_interval`` seconds. :attr:`H264Encoder.extradata` holds SPS+PPS (Annex B) for ``StreamInfo``.
"""

from __future__ import annotations

import re
from fractions import Fraction
from typing import cast

import cv2

from overdrive.errors import ConfigError, MediaError
from overdrive.media.codecs.base import CodecName, Packet
from overdrive.media.sources import Image


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
