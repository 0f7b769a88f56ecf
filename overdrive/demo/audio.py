"""Demo step: stream the test pattern with the test tone, record at a viewer, and measure the MP4 it wrote.

:func:`measure_sync` (also used by the audio benchmark) finds the white flash frames and the beep onsets in a
recording and reports the A/V offset of each pair, the duration, and the tracks.
"""

from __future__ import annotations

import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from overdrive.demo.context import DemoContext, console, free_port, stop


@dataclass(frozen=True, slots=True)
class SyncReport:
    duration: float
    video_frames: int
    audio_codec: str
    offsets_ms: list[float]  # flash start minus beep onset, per beep

    @property
    def worst_ms(self) -> float:
        return max((abs(x) for x in self.offsets_ms), default=float("nan"))


def measure_sync(path: Path, rate: int = 48_000) -> SyncReport:
    """Flash frames (mean luma > 200) against beep onsets (first loud sample after 0.5 s of quiet)."""
    import av

    with av.open(str(path)) as c:
        flashes: list[float] = []
        last, frames = False, 0
        for f in c.decode(video=0):
            frames += 1
            white = bool(f.to_ndarray(format="gray").mean() > 200)
            if white and not last:
                flashes.append(float(f.time or 0.0))
            last = white
        duration = float(c.duration / 1e6) if c.duration else 0.0
    with av.open(str(path)) as c:
        codec = c.streams.audio[0].codec_context.name if c.streams.audio else "none"
        start: float | None = None
        parts = []
        for af in c.decode(audio=0):
            start = float(af.time or 0.0) if start is None else start
            parts.append(af.to_ndarray().mean(axis=0))
    pcm = np.concatenate(parts) if parts else np.zeros(0)
    onsets: list[float] = []
    prev = -(10**9)
    for k in np.flatnonzero(np.abs(pcm) > 0.1).tolist():
        if k - prev > rate // 2:
            onsets.append((start or 0.0) + k / rate)
        prev = k
    offsets = [(min(flashes, key=lambda f: abs(f - t)) - t) * 1000 for t in onsets if t > 0.15 and flashes]
    return SyncReport(duration, frames, codec, offsets)


def step_audio_recording(ctx: DemoContext) -> bool:
    """Stream test pattern + test tone (beep on every flash); the viewer's MP4 is checked for duration and A/V."""
    console.rule("[bold]media: audio + recording (test tone, Opus → AAC, fragmented MP4)")
    port = free_port()
    seconds = max(6.0, ctx.seconds)
    backup = ctx.home / "demo-recordings"
    streamer = ctx.spawn(
        "stream",
        "--source",
        "testpattern",
        "--scale",
        "640x360",
        "--audio",
        "testtone",
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--duration",
        f"{seconds + 30:g}",
        "--name",
        "demo-av",
        "--no-record",
    )
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if streamer.poll() is not None or time.monotonic() > deadline:
                console.print("[red]streamer did not start")
                return False
            time.sleep(0.05)
    viewer = ctx.spawn("view", f"127.0.0.1:{port}", "--headless", "--duration", f"{seconds:g}", "--backup", str(backup))
    try:
        _, err = viewer.communicate(timeout=seconds + 60)
    finally:
        stop(viewer, streamer)
    files = sorted(backup.glob("*.mp4"))
    if viewer.returncode != 0 or not files:
        console.print(f"[red]viewer made no recording: {err.decode()[-300:]}")
        return False
    report = measure_sync(files[0])
    offsets = report.offsets_ms
    console.print(
        f"recorded {files[0].name}: {report.duration:.3f} s, {report.video_frames} H.264 frames "
        f"(muxed as sent) + {report.audio_codec} audio"
    )
    if not offsets:
        console.print("[red]no beeps found in the recording")
        return False
    console.print(
        f"A/V offset over {len(offsets)} flash/beep pairs: median {statistics.median(offsets):+.1f} ms, "
        f"worst {report.worst_ms:.1f} ms (the first flash frame comes up to one frame after its beep)"
    )
    return report.worst_ms <= 40


STEPS = [step_audio_recording]
