"""Demo step for ``overdrive demo``: a streamer on the test pattern and a headless viewer, both on loopback."""

from __future__ import annotations

import json
import socket
import time

from overdrive.demo.audio import step_audio_recording
from overdrive.demo.context import DemoContext, console, free_port, stop

VIDEO_ONLY = {"stream": ("--audio", "none", "--no-record"), "view": ("--no-record",)}
"""The video step needs no sound card and keeps no recording (the audio step covers both)."""


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def step_stream_video(ctx: DemoContext) -> bool:
    """Stream the test pattern (H.264) to a headless viewer; print its fps, latency and bitrate."""
    console.rule("[bold]media: live video stream (test pattern, H.264, CURVE)")
    port = free_port()
    streamer = ctx.spawn(
        "stream",
        "--source",
        "testpattern",
        "--bind",
        f"tcp://127.0.0.1:{port}",
        "--duration",
        f"{ctx.seconds + 30:g}",
        "--name",
        "demo",
        *VIDEO_ONLY["stream"],
    )
    deadline = time.monotonic() + 30
    while not _listening(port):
        if streamer.poll() is not None or time.monotonic() > deadline:
            err = streamer.stderr.read().decode()[-300:] if streamer.stderr and streamer.poll() is not None else ""
            console.print(f"[red]streamer did not start: {err or 'timeout'}")
            return False
        time.sleep(0.05)
    stats_path = ctx.home / "view-stats.json"
    viewer = ctx.spawn(
        "view",
        f"127.0.0.1:{port}",
        "--headless",
        "--duration",
        f"{ctx.seconds:g}",
        "--stats-json",
        str(stats_path),
        *VIDEO_ONLY["view"],
    )
    try:
        _, viewer_err = viewer.communicate(timeout=ctx.seconds + 60)
    finally:
        stop(viewer, streamer)
    if viewer.returncode != 0 or not stats_path.exists():
        console.print(f"[red]viewer failed: {viewer_err.decode()[-300:]}")
        return False
    s = json.loads(stats_path.read_text())
    lat = s["latency_ms"]
    console.print(
        f"viewer joined stream {s['stream_id']} ({s['codec']} {s['width']}x{s['height']}): "
        f"{s['frames_shown']} frames shown at {s['fps'] or 0:.1f} fps, latency p50 {lat['p50'] or 0:.1f} ms "
        f"p99 {lat['p99'] or 0:.1f} ms, {(s['bitrate'] or 0) / 1e6:.2f} Mbit/s, gaps {s['gaps']}, "
        f"malformed {s['malformed']}"
    )
    return bool(s["frames_shown"] > 0 and s["decode_errors"] == 0 and s["malformed"] == 0)


STEPS = [step_stream_video, step_audio_recording]
