"""The viewer's counters and the report ``--stats-json`` writes (frames, gaps, fps, latency, bitrate)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overdrive.media.join import CatchUp, JoinState

MAX_LATENCIES = 200_000


@dataclass
class ViewerStats:
    """Counters a viewer keeps; ``as_dict()`` is what ``--stats-json`` writes."""

    messages: int = 0
    malformed: int = 0
    forged: int = 0  # not signed by the trusted streamer key (see media/trust.py)
    unverified: int = 0  # before any trusted StreamInfo
    replayed: int = 0  # signed infos of an older stream, audio chunks sent again
    signer: str | None = None  # the trusted streamer key's fingerprint
    frames_received: int = 0
    frames_accepted: int = 0
    frames_decoded: int = 0
    frames_shown: int = 0
    frames_skipped: int = 0
    decode_errors: int = 0
    audio_chunks: int = 0
    infos: int = 0
    bytes: int = 0
    first_ns: int = 0
    last_ns: int = 0
    first_shown_ns: int = 0
    last_shown_ns: int = 0
    latencies_ms: list[float] = field(default_factory=list)

    def note_latency(self, ms: float) -> None:
        """Keep latencies for percentiles; past MAX_LATENCIES samples, the oldest half is forgotten."""
        if len(self.latencies_ms) >= MAX_LATENCIES:
            del self.latencies_ms[: MAX_LATENCIES // 2]
        self.latencies_ms.append(ms)

    def note_bytes(self, n: int, now_ns: int) -> None:
        self.bytes += n
        if not self.first_ns:
            self.first_ns = now_ns
        self.last_ns = now_ns


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values), q))


def report(s: ViewerStats, join: JoinState, catchup: CatchUp, started: float) -> dict[str, Any]:
    """What ``--stats-json`` writes: counters, join state, fps, latency percentiles and bitrate."""
    span = (s.last_shown_ns - s.first_shown_ns) / 1e9
    fps = (s.frames_shown - 1) / span if span > 0 else None
    byte_span = (s.last_ns - s.first_ns) / 1e9
    info = join.info
    lat = s.latencies_ms
    return {
        "stream_id": info.stream_id if info else None,
        "name": info.name if info else None,
        "codec": info.video.codec if info else None,
        "width": info.video.width if info else None,
        "height": info.video.height if info else None,
        "phase": join.phase.name.lower(),
        "messages": s.messages,
        "malformed": s.malformed,
        "signer": s.signer,
        "forged": s.forged,
        "unverified": s.unverified,
        "replayed": s.replayed,
        "frames_received": s.frames_received,
        "frames_accepted": s.frames_accepted,
        "frames_decoded": s.frames_decoded,
        "frames_shown": s.frames_shown,
        "frames_skipped": s.frames_skipped,
        "gaps": join.gaps,
        "lost_frames": join.lost_frames,
        "resets": join.resets,
        "drops": dict(join.drops),
        "decode_errors": s.decode_errors,
        "resyncs": catchup.resyncs,
        "audio_chunks": s.audio_chunks,
        "fps": fps,
        "latency_ms": {
            "p50": percentile(lat, 50),
            "p95": percentile(lat, 95),
            "p99": percentile(lat, 99),
            "max": max(lat) if lat else None,
            "samples": len(lat),
        },
        "bytes": s.bytes,
        "bitrate": s.bytes * 8 / byte_span if byte_span > 0 else None,
        "seconds": time.monotonic() - started if started else 0.0,
    }
