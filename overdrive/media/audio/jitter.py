"""The jitter buffer of one audio track at the viewer (sans-IO, time passed in).

:class:`JitterBuffer` maps stream time to local time with one delay: the smallest transit (arrival − capture
timestamp) seen over the last couple of seconds plus a target of 40 ms. A sample captured at ``pts`` is played at
local time ``pts + delay``; video is shown as soon as it is decoded (``pts`` + transit + decode time), so the two
stay within the jitter target of each other, by timestamps. A chunk that arrives after its turn is dropped
(counted), never queued: the delay does not grow with network hiccups, only when the transit floor itself rises
for longer than the window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from overdrive.media.codecs.base import SAMPLE_RATE, Samples

TARGET_NS = 40_000_000
"""Jitter allowance on top of the transit floor (total buffering stays under 60 ms on a LAN)."""
WINDOW_NS = 2_000_000_000
RESYNC_SAMPLES = SAMPLE_RATE * 15 // 1000


@dataclass
class BufferStats:
    pushed: int = 0
    late: int = 0
    played: int = 0
    underruns: int = 0
    latencies_ms: list[float] = field(default_factory=list)


class JitterBuffer:
    """Stream-timestamped chunks in, a continuous sample stream out at the right local time (sans-IO)."""

    def __init__(self, channels: int, rate: int = SAMPLE_RATE, target_ns: int = TARGET_NS) -> None:
        self.channels = channels
        self.rate = rate
        self.target_ns = target_ns
        self.stats = BufferStats()
        self._chunks: deque[tuple[int, Samples]] = deque()  # (stream ns of first sample, samples)
        self._transits: deque[tuple[int, int]] = deque()  # (arrival ns, transit ns)
        self._cursor_ns: int | None = None  # stream time of the next sample to play
        self._cursor_frac = 0

    @property
    def delay_ns(self) -> int | None:
        """Local time minus stream time for playback, or None before any chunk arrived."""
        if not self._transits:
            return None
        return min(t for _, t in self._transits) + self.target_ns

    def push(self, pts_ns: int, pcm: Samples, arrival_ns: int) -> bool:
        """Add a chunk; False (and counted) if it came too late to be played."""
        self.stats.pushed += 1
        self._transits.append((arrival_ns, arrival_ns - pts_ns))
        while self._transits and arrival_ns - self._transits[0][0] > WINDOW_NS:
            self._transits.popleft()
        end_ns = pts_ns + len(pcm) * 1_000_000_000 // self.rate
        if self._cursor_ns is not None and end_ns <= self._cursor_ns:
            self.stats.late += 1
            return False
        self._chunks.append((pts_ns, pcm))
        if len(self._chunks) > 1 and self._chunks[-2][0] > pts_ns:
            self._chunks = deque(sorted(self._chunks, key=lambda c: c[0]))
        return True

    def pull(self, frames: int, play_ns: int) -> Samples:
        """``frames`` samples to be heard from local time ``play_ns`` on (silence where nothing is due)."""
        out = np.zeros((frames, self.channels), dtype=np.int16)
        delay = self.delay_ns
        if delay is None:
            return out
        due = play_ns - delay
        if self._cursor_ns is None or abs(due - self._cursor_ns) > RESYNC_SAMPLES * 1_000_000_000 // self.rate:
            self._cursor_ns = due  # first pull, or we drifted/stalled: jump to where we should be
        start = self._cursor_ns
        filled = False
        for pts, pcm in self._chunks:
            offset = round((pts - start) * self.rate / 1e9)
            if offset >= frames:
                break
            src0 = max(0, -offset)
            dst0 = max(0, offset)
            n = min(len(pcm) - src0, frames - dst0)
            if n > 0:
                out[dst0 : dst0 + n] = pcm[src0 : src0 + n]
                if not filled:
                    self.stats.latencies_ms.append(
                        (play_ns + dst0 * 1e9 / self.rate - (pts + src0 * 1e9 / self.rate)) / 1e6
                    )
                filled = True
        self._cursor_ns = start + frames * 1_000_000_000 // self.rate
        while (
            self._chunks
            and self._chunks[0][0] + len(self._chunks[0][1]) * 1_000_000_000 // self.rate <= self._cursor_ns
        ):
            self._chunks.popleft()
        if filled:
            self.stats.played += 1
        elif self.stats.played:
            self.stats.underruns += 1
        return out

    def clear(self) -> None:
        self._chunks.clear()
        self._transits.clear()
        self._cursor_ns = None
