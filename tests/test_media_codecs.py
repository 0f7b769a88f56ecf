"""Sources, encoders and decoders without sockets: round trips, keyframe schedule, the flash, option parsing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from overdrive.errors import ConfigError, MediaError
from overdrive.media.codecs.h264 import H264Decoder, H264Encoder, parameter_sets, split_annexb
from overdrive.media.codecs.jpeg import JpegDecoder, JpegEncoder
from overdrive.media.sources import (
    FLASH_PERIOD_NS,
    CaptureThread,
    Region,
    Scale,
    TestPattern,
    WebcamSource,
    is_flash_frame,
    make_source,
    next_flash_ns,
)

FRAME_NS = 33_333_333


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def encode_pattern(n: int, width: int = 320, height: int = 240) -> tuple[TestPattern, list]:
    pattern = TestPattern(width, height, started_ns=10**18)
    enc = H264Encoder(width, height, 30, keyframe_interval=1.0)
    packets = []
    for i in range(n):
        pts = pattern.started_ns + i * FRAME_NS
        packets += enc.encode(pattern.grab(pts, i), pts)
    enc.close()
    return pattern, packets


def test_h264_one_packet_per_picture_keyframe_every_second_and_extradata() -> None:
    _, packets = encode_pattern(75)
    assert len(packets) == 75
    keys = [i for i, p in enumerate(packets) if p.keyframe]
    assert keys == [0, 30, 60]
    assert [p.pts_ns for p in packets] == sorted(p.pts_ns for p in packets)
    # every keyframe is self-contained: SPS and PPS repeated in-band
    for i in keys:
        kinds = {n[0] & 0x1F for n in split_annexb(packets[i].data)}
        assert {5, 7, 8} <= kinds


def test_h264_decodes_cleanly_from_any_keyframe() -> None:
    pattern, packets = encode_pattern(40)
    dec = H264Decoder(parameter_sets(packets[0].data))
    images = [img for p in packets[30:] for img in dec.decode(p.data)]
    assert len(images) == 10
    last = packets[-1]
    expected = pattern.grab(last.pts_ns, 39)
    assert psnr(images[-1], expected) > 30


def test_h264_decoder_rejects_garbage() -> None:
    dec = H264Decoder()
    with pytest.raises(MediaError):
        dec.decode(b"\x00\x00\x01\x65" + bytes(range(256)) * 4)


def test_jpeg_round_trip_and_quality() -> None:
    img = TestPattern(320, 240, started_ns=0).grab(500_000_000, 1)
    high = JpegEncoder(95).encode(img, 5)[0]
    low = JpegEncoder(20).encode(img, 5)[0]
    assert high.keyframe and len(low.data) < len(high.data)
    assert psnr(JpegDecoder().decode(high.data)[0], img) > 30
    with pytest.raises(MediaError):
        JpegDecoder().decode(b"not a jpeg")
    with pytest.raises(ConfigError):
        JpegEncoder(0)


def test_flash_schedule_matches_pattern() -> None:
    start = 10**18
    pattern = TestPattern(64, 48, started_ns=start)
    assert is_flash_frame(start, start) and is_flash_frame(start + FLASH_PERIOD_NS + 50_000_000, start)
    assert not is_flash_frame(start + 500_000_000, start)
    assert not is_flash_frame(start - 1, start)
    assert next_flash_ns(start + 1, start) == start + FLASH_PERIOD_NS
    assert next_flash_ns(start + FLASH_PERIOD_NS, start) == start + FLASH_PERIOD_NS
    assert pattern.grab(start + FLASH_PERIOD_NS, 60).mean() > 200
    assert pattern.grab(start + 700_000_000, 21).mean() < 200


def test_scale_and_region_parsing() -> None:
    assert Scale.parse("0.5").output_size(1920, 1080) == (960, 540)
    assert Scale.parse("1280x720").output_size(1920, 1080) == (1280, 720)
    assert Scale.parse("1").output_size(1001, 601) == (1000, 600)
    for bad in ("fast", "0", "1x1"):
        with pytest.raises(ConfigError):
            Scale.parse(bad)
    assert Region.parse("1,2,30,40") == Region(1, 2, 30, 40)
    for bad in ("1,2,3", "a,b,c,d", "0,0,1,10"):
        with pytest.raises(ConfigError):
            Region.parse(bad)


def test_source_specs() -> None:
    assert isinstance(make_source("testpattern"), TestPattern)
    assert isinstance(make_source("webcam:3"), WebcamSource)
    for bad in ("camera", "screen:2", "testpattern:1"):
        with pytest.raises(ConfigError):
            make_source(bad)
    with pytest.raises(ConfigError):
        make_source("testpattern", pip="screen")


def test_webcam_path_specs(tmp_path: Path) -> None:
    clip = tmp_path / "cam.mp4"
    clip.write_bytes(b"")
    source = make_source(f"webcam:{clip}")
    assert isinstance(source, WebcamSource) and source.device == str(clip) and source.is_file
    with pytest.raises(ConfigError, match="no such device or file"):
        make_source("testpattern", pip=f"webcam:{tmp_path / 'missing.mp4'}")
    with pytest.raises(ConfigError, match="no such device or file"):
        make_source("webcam:²")  # a digit to str.isdigit, not to int()


def test_video_file_as_webcam_loops_at_its_own_rate(tmp_path: Path) -> None:
    from tests.test_stream_live import solid_clip

    source = WebcamSource(str(solid_clip(tmp_path / "cam.mp4", (255, 0, 0), frames=3)))  # blue, 10 fps
    source.open()
    try:
        seen = []
        deadline = time.monotonic() + 1.0  # ~10 pictures from a 3-frame clip: it must loop, not stop
        while time.monotonic() < deadline:
            picture = source.grab(0, 0)
            if not seen or picture is not seen[-1]:
                seen.append(picture)
            time.sleep(0.01)
        assert 5 <= len(seen) <= 20, f"{len(seen)} distinct pictures in 1 s from a 10 fps clip"
        assert seen[-1].shape == (48, 64, 3) and seen[-1][..., 0].mean() > 200
    finally:
        source.close()


def test_missing_webcam_is_a_clear_error() -> None:
    capture = CaptureThread(WebcamSource(97), fps=10)
    with pytest.raises(MediaError, match="cannot open webcam 97"):
        capture.start()


def test_capture_thread_keeps_only_newest() -> None:
    capture = CaptureThread(TestPattern(64, 48), fps=200)
    capture.start()
    try:
        first = capture.wait_newer(0, 2.0)
        assert first is not None
        later = capture.wait_newer(first.index + 5, 2.0)
        while later is None:
            later = capture.wait_newer(first.index + 5, 2.0)
        assert later.index > first.index + 5  # pictures in between were never queued
        assert later.pts_ns > first.pts_ns
    finally:
        capture.stop()
