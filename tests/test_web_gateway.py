"""The gateway core in memory: late joiners, slow browsers, shared fragments, bounds."""

from __future__ import annotations

import json

import pytest

from overdrive.errors import ConfigError
from overdrive.web.fmp4 import AudioConfig, VideoConfig
from overdrive.web.gateway import (
    KIND_AUDIO,
    KIND_AUDIO_INIT,
    KIND_VIDEO,
    KIND_VIDEO_INIT,
    AudioSample,
    FullError,
    Gateway,
    Item,
    Limits,
    Session,
    VideoSample,
)

SPS = bytes.fromhex("6742c01f95a014016c8400000300040000030078")  # 1280x720 constrained baseline 3.1
PPS = bytes.fromhex("68ce3c80")
EPOCH = 1_700_000_000_000_000_000
FRAME = 33_333_333


def _gateway(**limits: object) -> Gateway:
    gateway = Gateway(Limits(**limits), name="lecture")  # type: ignore[arg-type]
    video = VideoConfig(width=1280, height=720, sps=SPS, pps=PPS, fps=30.0, epoch_ns=EPOCH)
    gateway.configure(video, AudioConfig(channels=2, epoch_ns=EPOCH))
    return gateway


def _frame(i: int, gop: int = 30) -> VideoSample:
    return VideoSample(
        EPOCH + i * FRAME, i % gop == 0, b"\x00\x00\x00\x01" + bytes((0x65 if i % gop == 0 else 0x41,)) + b"\x01" * 100
    )


def _drain(session: Session) -> list[Item]:
    items = []
    while (item := session.pop()) is not None:
        items.append(item)
    return items


def _kinds(items: list[Item]) -> list[object]:
    return [json.loads(i)["type"] if isinstance(i, str) else i[0] for i in items]


def test_late_joiner_starts_from_the_last_keyframe() -> None:
    gateway = _gateway()
    for i in range(40):
        gateway.video(_frame(i))
    gateway.audio(AudioSample(EPOCH + 39 * FRAME, 960, b"opus"))
    items = _drain(gateway.join(EPOCH))
    assert json.loads(items[0]) == {"type": "hello", "name": "lecture", "chat": False}  # type: ignore[arg-type]
    start = json.loads(items[1])  # type: ignore[arg-type]
    assert start["video"]["codec"] == "avc1.42C01F" and start["audio"]["codec"] == "opus"
    assert _kinds(items) == ["hello", "start", KIND_VIDEO_INIT, KIND_AUDIO_INIT] + [KIND_VIDEO] * 10 + [
        KIND_AUDIO,
        "clock",
    ]
    # the first fragment is the keyframe of frame 30: its mdat holds the IDR slice
    assert b"\x65" + b"\x01" * 100 in items[4]  # type: ignore[operator]


def test_one_copy_of_each_fragment_serves_every_browser() -> None:
    gateway = _gateway()
    sessions = [gateway.join(EPOCH) for _ in range(3)]
    for s in sessions:
        _drain(s)
    gateway.video(_frame(0))
    first, second, third = (s.pop() for s in sessions)
    assert first is second is third


def test_slow_browser_drops_to_the_next_keyframe() -> None:
    gateway = _gateway(max_lag=1.0)
    slow, fast = gateway.join(EPOCH), gateway.join(EPOCH)
    _drain(slow)
    for i in range(45):  # 1.5 s: the slow browser never reads
        gateway.video(_frame(i))
        _drain(fast)
    assert slow.dropped == 1 and slow.waiting_key
    assert len(slow) == 1  # only the "skip" line
    for i in range(45, 61):
        gateway.video(_frame(i))
    items = _drain(slow)
    assert _kinds(items)[0] == "skip"
    assert items[1] is not None and b"\x65" + b"\x01" * 100 in items[1]  # resumed at frame 60, a keyframe
    assert len(items) == 2
    assert fast.dropped == 0


def test_queue_count_bound_holds_without_lag() -> None:
    gateway = _gateway(queue_items=8, max_lag=10.0)
    session = gateway.join(EPOCH)
    _drain(session)
    for i in range(100):
        gateway.video(VideoSample(EPOCH + i, i % 30 == 0, b"\x00\x00\x01\x41"))
        assert len(session) <= 8


def test_group_longer_than_the_cache_is_not_cached() -> None:
    gateway = _gateway(cache_items=8)
    for i in range(20):
        gateway.video(_frame(i, gop=100))
    session = gateway.join(EPOCH)
    assert _kinds(_drain(session)) == ["hello", "start", KIND_VIDEO_INIT, KIND_AUDIO_INIT, "clock"]
    assert session.waiting_key
    gateway.video(_frame(20, gop=100))
    assert session.pop() is None  # a delta frame: still waiting for a keyframe


def test_restart_resets_every_browser_and_end_tells_them() -> None:
    gateway = _gateway()
    session = gateway.join(EPOCH)
    gateway.video(_frame(0))
    video = VideoConfig(width=640, height=480, sps=SPS, pps=PPS, fps=30.0, epoch_ns=EPOCH + 10)
    gateway.configure(video, None)
    assert _kinds(_drain(session)) == ["start", KIND_VIDEO_INIT]
    gateway.end()
    gateway.video(_frame(1))
    assert _kinds(_drain(session)) == ["end"]


def test_session_limit() -> None:
    gateway = _gateway(max_sessions=2)
    gateway.join(EPOCH)
    gateway.join(EPOCH)
    with pytest.raises(FullError):
        gateway.join(EPOCH)


def test_limits_are_checked() -> None:
    with pytest.raises(ConfigError):
        Limits(max_lag=0)
    with pytest.raises(ConfigError):
        Limits(queue_items=1)
