"""The viewer's join, gap and keyframe logic, without sockets (sans-IO).

A viewer may join at any moment, lose frames (a slow viewer drops at the publisher's high-water mark), or see the
streamer restart with a new ``stream_id``. :class:`JoinState` takes each received header in and returns what to do:

* :class:`Reset` — a (new) stream starts: make a fresh decoder from ``info`` (and reset recordings).
* :class:`Accept` — the frame continues a clean chain from a keyframe: it may be decoded (and recorded).
* :class:`Drop` — anything else, with a reason that is counted (no info yet, waiting for a keyframe, ...).

All transitions live in this module::

    WAIT_INFO --info--> WAIT_KEY --keyframe--> LIVE
    LIVE --seq gap / decode error--> WAIT_KEY
    any --info with another stream_id (streamer restart)--> Reset, WAIT_KEY
    any --end of the current stream (announced or silence)--> WAIT_INFO
    frames of a stream other than the current info's are dropped until that info arrives

:func:`skip_plan` and :class:`CatchUp` are the catch-up rules for drained batches: decode only from the newest
keyframe on, and after falling behind, decode nothing until a keyframe that is live again.
"""

from __future__ import annotations

import enum
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass

from overdrive.media.protocol import StreamInfo, VideoFrame


class Phase(enum.Enum):
    WAIT_INFO = "waiting for stream info"
    WAIT_KEY = "waiting for a keyframe"
    LIVE = "live"


@dataclass(frozen=True, slots=True)
class Reset:
    """A stream (re)starts: build a new decoder for ``info``."""

    info: StreamInfo


@dataclass(frozen=True, slots=True)
class Accept:
    """Frame continues a clean chain: decode it."""

    frame: VideoFrame


@dataclass(frozen=True, slots=True)
class Drop:
    """Frame is unusable now; ``reason`` is one of the DROP_* constants."""

    frame: VideoFrame
    reason: str


DROP_NO_INFO = "no_info"
DROP_WAIT_KEY = "waiting_for_keyframe"
DROP_OTHER_STREAM = "other_stream"
DROP_CODEC = "codec_mismatch"
DROP_STALE = "stale_seq"

InfoAction = Reset | None
FrameAction = Accept | Drop


class JoinState:
    """Tracks one viewer's position in the stream; every method is pure bookkeeping (no I/O, no clock)."""

    def __init__(self) -> None:
        self.phase = Phase.WAIT_INFO
        self.info: StreamInfo | None = None
        self.last_seq: int | None = None
        self.gaps = 0
        self.lost_frames = 0
        self.resets = 0
        self.drops: Counter[str] = Counter()

    @property
    def stream_id(self) -> str | None:
        return self.info.stream_id if self.info else None

    def on_info(self, info: StreamInfo) -> InfoAction:
        """Stream metadata arrived. Returns Reset when this starts a new stream (first join or restart)."""
        if self.info is not None and info.stream_id == self.info.stream_id:
            if info.video != self.info.video:
                # same stream, new parameters (should not happen, but never decode with stale ones)
                self.info = info
                return self._reset(info)
            self.info = info
            return None
        self.info = info
        return self._reset(info)

    def _reset(self, info: StreamInfo) -> Reset:
        self.phase = Phase.WAIT_KEY
        self.last_seq = None
        self.resets += 1
        return Reset(info)

    def on_frame(self, frame: VideoFrame) -> FrameAction:
        """A video frame header arrived; decide whether its bytes may be decoded."""
        if self.info is None:
            return self._drop(frame, DROP_NO_INFO)
        if frame.stream_id != self.info.stream_id:
            # the streamer restarted: its new info (within a second) resets us; until then nothing decodes
            return self._drop(frame, DROP_OTHER_STREAM)
        if frame.codec != self.info.video.codec:
            return self._drop(frame, DROP_CODEC)
        if self.last_seq is not None and frame.seq <= self.last_seq:
            return self._drop(frame, DROP_STALE)
        if self.phase is Phase.LIVE and self.last_seq is not None and frame.seq != self.last_seq + 1:
            self.gaps += 1
            self.lost_frames += frame.seq - self.last_seq - 1
            self.phase = Phase.WAIT_KEY
        if self.phase is Phase.WAIT_KEY:
            if not frame.keyframe:
                self.last_seq = frame.seq
                return self._drop(frame, DROP_WAIT_KEY)
            self.phase = Phase.LIVE
        self.last_seq = frame.seq
        return Accept(frame)

    def on_end(self, stream_id: str) -> bool:
        """The current stream ended (announced, or inferred from silence): True if it was the current one.

        Back to WAIT_INFO with no info, so the same stream coming back counts as a new start (Reset)."""
        if self.info is None or stream_id != self.info.stream_id:
            return False
        self.info = None
        self.phase = Phase.WAIT_INFO
        self.last_seq = None
        return True

    def decode_failed(self) -> None:
        """The decoder rejected an accepted frame: never show what follows until the next keyframe."""
        if self.phase is Phase.LIVE:
            self.phase = Phase.WAIT_KEY

    def _drop(self, frame: VideoFrame, reason: str) -> Drop:
        self.drops[reason] += 1
        return Drop(frame, reason)


def skip_plan(frames: Sequence[VideoFrame]) -> int:
    """Index of the first frame worth decoding in a drained batch: the newest keyframe, or 0 if there is none.

    Frames before it are still accepted (and recorded) but not decoded, so a viewer that fell behind jumps
    straight to the newest picture it can decode cleanly.
    """
    for i in range(len(frames) - 1, 0, -1):
        if frames[i].keyframe:
            return i
    return 0


class CatchUp:
    """Where to start decoding a drained batch, so a viewer that fell behind jumps to live instead of replaying.

    Within a batch, decoding starts at the newest keyframe (:func:`skip_plan`). Across batches: when the newest
    frame is more than ``stale_ns`` later than usual, the viewer stops decoding until a keyframe that is not late.
    "Late" is measured against the smallest capture-to-receive offset of the last ``window`` frames, so a clock
    offset between streamer and viewer machines cancels out, and a lasting change of delay is adopted after
    ``window`` frames instead of stopping the picture for good.
    """

    def __init__(self, stale_ns: int = 1_000_000_000, window: int = 300) -> None:
        self.stale_ns = stale_ns
        self._offsets: deque[int] = deque(maxlen=window)
        self.resyncing = False
        self.resyncs = 0

    def reset(self) -> None:
        self._offsets.clear()
        self.resyncing = False

    def plan(self, frames: Sequence[VideoFrame], now_ns: int) -> int:
        """Index of the first frame to decode; ``len(frames)`` means decode none of them."""
        if not frames:
            return 0
        self._offsets.extend(now_ns - f.pts_ns for f in frames)
        base = min(self._offsets)

        def late(f: VideoFrame) -> bool:
            return now_ns - f.pts_ns - base > self.stale_ns

        if late(frames[-1]) and not self.resyncing:
            self.resyncing = True
            self.resyncs += 1
        if self.resyncing:
            fresh = [i for i, f in enumerate(frames) if f.keyframe and not late(f)]
            if not fresh:
                return len(frames)
            self.resyncing = False
            return fresh[-1]
        return skip_plan(frames)
