"""The sans-IO join/gap/keyframe logic, in memory."""

from __future__ import annotations

from overdrive.media.join import (
    DROP_NO_INFO,
    DROP_OTHER_STREAM,
    DROP_STALE,
    DROP_WAIT_KEY,
    Accept,
    CatchUp,
    Drop,
    JoinState,
    Phase,
    Reset,
    skip_plan,
)
from overdrive.media.protocol import StreamInfo, VideoFrame, VideoTrackInfo


def info(stream: str = "s1", width: int = 64) -> StreamInfo:
    video = VideoTrackInfo(codec="h264", width=width, height=48, fps=30)
    return StreamInfo(stream_id=stream, name="t", started_ns=1, sent_ns=2, video=video)


def frame(seq: int, key: bool = False, stream: str = "s1") -> VideoFrame:
    return VideoFrame(stream_id=stream, seq=seq, pts_ns=seq * 1000, keyframe=key, codec="h264")


def accepted(state: JoinState, *frames: VideoFrame) -> list[int]:
    return [f.seq for f in frames if isinstance(state.on_frame(f), Accept)]


def test_waits_for_info_then_keyframe() -> None:
    s = JoinState()
    assert s.on_frame(frame(1, key=True)) == Drop(frame(1, key=True), DROP_NO_INFO)
    assert isinstance(s.on_info(info()), Reset)
    assert s.phase is Phase.WAIT_KEY
    assert accepted(s, frame(2), frame(3)) == []
    assert s.drops[DROP_WAIT_KEY] == 2
    assert accepted(s, frame(4, key=True), frame(5), frame(6)) == [4, 5, 6]
    assert s.phase is Phase.LIVE
    assert s.gaps == 0


def test_repeated_info_changes_nothing() -> None:
    s = JoinState()
    s.on_info(info())
    accepted(s, frame(1, key=True))
    assert s.on_info(info()) is None
    assert accepted(s, frame(2)) == [2]


def test_gap_waits_for_next_keyframe() -> None:
    s = JoinState()
    s.on_info(info())
    assert accepted(s, frame(1, key=True), frame(2), frame(4), frame(5), frame(6, key=True), frame(7)) == [1, 2, 6, 7]
    assert s.gaps == 1
    assert s.lost_frames == 1
    assert s.drops[DROP_WAIT_KEY] == 2


def test_gap_landing_on_a_keyframe_loses_nothing_more() -> None:
    s = JoinState()
    s.on_info(info())
    assert accepted(s, frame(1, key=True), frame(5, key=True), frame(6)) == [1, 5, 6]
    assert s.gaps == 1


def test_stale_or_duplicate_frames_are_dropped() -> None:
    s = JoinState()
    s.on_info(info())
    accepted(s, frame(1, key=True), frame(2))
    assert s.on_frame(frame(2)) == Drop(frame(2), DROP_STALE)


def test_streamer_restart_resets_on_new_info() -> None:
    s = JoinState()
    s.on_info(info("old"))
    accepted(s, frame(1, key=True, stream="old"), frame(2, stream="old"))
    # the restarted streamer's frames arrive before its info: dropped, nothing decoded with the old decoder
    assert s.on_frame(frame(1, key=True, stream="new")) == Drop(frame(1, key=True, stream="new"), DROP_OTHER_STREAM)
    action = s.on_info(info("new"))
    assert isinstance(action, Reset)
    assert action.info.stream_id == "new"
    assert accepted(s, frame(2, stream="new"), frame(3, key=True, stream="new"), frame(4, stream="new")) == [3, 4]
    assert s.resets == 2


def test_changed_parameters_in_same_stream_reset() -> None:
    s = JoinState()
    s.on_info(info())
    accepted(s, frame(1, key=True))
    assert isinstance(s.on_info(info(width=128)), Reset)
    assert accepted(s, frame(2), frame(3, key=True)) == [3]


def test_decode_failure_waits_for_keyframe() -> None:
    s = JoinState()
    s.on_info(info())
    accepted(s, frame(1, key=True))
    s.decode_failed()
    assert accepted(s, frame(2), frame(3, key=True)) == [3]


def test_skip_plan_starts_at_newest_keyframe() -> None:
    assert skip_plan([]) == 0
    assert skip_plan([frame(1), frame(2)]) == 0
    assert skip_plan([frame(1, key=True), frame(2), frame(3, key=True), frame(4)]) == 2
    assert skip_plan([frame(1), frame(2, key=True)]) == 1


def at(seq: int, pts_ms: int, key: bool = False) -> VideoFrame:
    return VideoFrame(stream_id="s1", seq=seq, pts_ns=pts_ms * 1_000_000, keyframe=key, codec="h264")


def test_catchup_skips_a_late_backlog_until_a_live_keyframe() -> None:
    c = CatchUp(stale_ns=1_000_000_000)
    ms = 1_000_000
    # live: 10 ms offset (the clock offset between machines does not matter: only the excess counts)
    assert c.plan([at(1, 0, key=True), at(2, 33)], now_ns=5_000_043 * ms) == 0
    # resumed after a 3 s pause: the backlog is 3 s late and has keyframes, but none is live
    backlog = [at(3, 66), at(4, 1000, key=True), at(5, 1033)]
    assert c.plan(backlog, now_ns=5_003_043 * ms) == 3
    assert c.resyncing
    # still late, no live keyframe: nothing decoded
    assert c.plan([at(6, 2000, key=True), at(7, 2900)], now_ns=5_003_050 * ms) == 2
    # live again: decoding restarts at the live keyframe
    assert c.plan([at(8, 3000), at(9, 3030, key=True), at(10, 3060)], now_ns=5_003_070 * ms) == 1
    assert not c.resyncing and c.resyncs == 1


def test_catchup_adopts_a_lasting_delay() -> None:
    c = CatchUp(stale_ns=1_000_000_000, window=10)
    ms = 1_000_000
    c.plan([at(1, 0, key=True)], now_ns=10 * ms)
    # the delay jumps to 2 s and stays: after the window, those frames count as live again
    starts = [c.plan([at(i, i * 100, key=True)], now_ns=(i * 100 + 2000) * ms) for i in range(2, 20)]
    assert starts[0] == 1 and starts[-1] == 0


def test_an_ended_stream_starts_again_as_new() -> None:
    s = JoinState()
    s.on_info(info())
    accepted(s, frame(1, key=True))
    assert not s.on_end("other")  # not the current stream: nothing happens
    assert s.phase is Phase.LIVE
    assert s.on_end("s1")
    assert s.phase is Phase.WAIT_INFO and s.stream_id is None
    assert s.on_frame(frame(2)) == Drop(frame(2), DROP_NO_INFO)
    assert isinstance(s.on_info(info()), Reset)  # the same stream back after a silence: a new start
    assert not s.on_end("other")
