"""The fragmented-MP4 writer, read back by a real demuxer and decoder (PyAV): init + fragments decode to every
frame at the right size, with capture times preserved as presentation times."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from overdrive.errors import ProtocolError
from overdrive.media.codecs.h264 import H264Encoder
from overdrive.media.codecs.opus import OpusEncoder
from overdrive.web.fmp4 import (
    VIDEO_TIMESCALE,
    AudioConfig,
    VideoConfig,
    audio_fragment,
    audio_init,
    to_length_prefixed,
    video_fragment,
    video_init,
)

EPOCH = 1_700_000_000_000_000_000
FRAME_NS = 33_333_333


def _encoded(width: int, height: int, count: int) -> tuple[bytes, list[tuple[int, bool, bytes]]]:
    encoder = H264Encoder(width, height, 30.0, keyframe_interval=1.0)
    rng = np.random.default_rng(1)
    frames = []
    for i in range(count):
        image = np.full((height, width, 3), (i * 7) % 256, np.uint8)
        image[: height // 2, : width // 2] = rng.integers(0, 255, (height // 2, width // 2, 3), dtype=np.uint8)
        for packet in encoder.encode(image, EPOCH + 5_000_000 + i * FRAME_NS):
            frames.append((packet.pts_ns, packet.keyframe, packet.data))
    encoder.close()
    return encoder.extradata, frames


def test_h264_round_trip_through_fragments() -> None:
    extradata, frames = _encoded(320, 240, 45)
    config = VideoConfig.from_annexb(extradata, width=320, height=240, fps=30.0, epoch_ns=EPOCH)
    data = video_init(config) + b"".join(
        video_fragment(config, n + 1, pts, key, unit) for n, (pts, key, unit) in enumerate(frames)
    )
    with av.open(io.BytesIO(data), format="mp4") as container:
        stream = container.streams.video[0]
        decoded = list(container.decode(stream))
    assert len(frames) == 45
    assert len(decoded) == len(frames)
    assert {(f.width, f.height) for f in decoded} == {(320, 240)}
    times = [round(float(f.pts * f.time_base) * 1e9) for f in decoded]
    expected = [pts - EPOCH for pts, _, _ in frames]
    assert all(abs(t - e) <= 1_000_000_000 // VIDEO_TIMESCALE for t, e in zip(times, expected, strict=True))
    # the first keyframe decodes to the picture that went in: a flat grey right half
    assert abs(int(decoded[0].to_ndarray(format="gray")[200, 300]) - 0) <= 8


def test_codec_string_comes_from_the_sps() -> None:
    extradata, _ = _encoded(1280, 720, 1)
    config = VideoConfig.from_annexb(extradata, width=1280, height=720, fps=30.0, epoch_ns=EPOCH)
    assert config.codec == "avc1." + config.sps[1:4].hex().upper()
    assert config.codec.startswith("avc1.42") or config.codec.startswith("avc1.64")
    assert config.codec[-2:] == "1F"  # level 3.1 for 720p30, not a fixed guess


def test_length_prefixed_drops_parameter_sets() -> None:
    unit = b"\x00\x00\x00\x01\x67\x42\x00\x1f\x00\x00\x01\x68\xce\x00\x00\x01\x65\x88\x84"
    assert to_length_prefixed(unit) == b"\x00\x00\x00\x03\x65\x88\x84"


def test_garbage_parameter_sets_are_refused() -> None:
    with pytest.raises(ProtocolError):
        VideoConfig.from_annexb(b"\x00\x00\x01\x65\x00\x00", width=320, height=240, fps=30.0, epoch_ns=0)


def test_opus_round_trip_through_fragments() -> None:
    encoder = OpusEncoder(2)
    samples = (np.sin(np.arange(48_000) / 10) * 8000).astype(np.int16).repeat(2).reshape(-1, 2)
    chunks = []
    for i in range(0, 48_000, 960):
        chunks.extend(encoder.encode(samples[i : i + 960], EPOCH + i * 20_833))
    config = AudioConfig(channels=2, epoch_ns=EPOCH)
    data = audio_init(config) + b"".join(
        audio_fragment(config, n + 1, c.pts_ns, 960, c.data) for n, c in enumerate(chunks)
    )
    with av.open(io.BytesIO(data), format="mp4") as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        decoded = list(container.decode(stream))
    assert len(decoded) == len(chunks) > 40
    assert {f.samples for f in decoded} == {960}
