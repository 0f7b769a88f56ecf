"""Stream chaos: a streamer killed -9 and restarted on the same port while headless viewers record.

The viewers must live through every restart, stop cleanly on SIGTERM, and leave only MP4s that open, hold video and
last no longer than the streamer ran (with no ``.part`` left behind). Used by tests/test_chaos.py and scripts/chaos.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.chaoslib import ChaosError, Child, Network, Report
from tests.services import free_port


@dataclass(frozen=True)
class StreamProfile:
    viewers: int = 2
    restarts: int = 2
    up_seconds: float = 4.0
    """Seconds each streamer run lasts before the next kill -9 (and after the last restart)."""
    down_seconds: float = 1.0
    break_check: bool = False
    """Demand more video than was streamed, to show the recording check can fail."""


def streamer_args(port: int) -> list[str]:
    # small and slow: this is about lifecycles, and the machine is shared
    return [
        "stream",
        "--source",
        "testpattern",
        "--scale",
        "320x180",
        "--fps",
        "15",
        "--audio",
        "none",
        "--no-record",
        "--bind",
        f"tcp://127.0.0.1:{port}",
    ]


def check_mp4(path: Path) -> float:
    """Seconds of video in an MP4 that opens and decodes a frame; ValueError for anything else."""
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            stream = container.streams.video[0]
            if stream.duration is None or stream.time_base is None:
                raise ValueError("no video duration")
            seconds = float(stream.duration * stream.time_base)
            next(container.decode(stream))
    except (av.FFmpegError, StopIteration) as exc:
        raise ValueError(f"cannot be read: {exc!r}") from exc
    return seconds


class StreamChaos:
    """A streamer killed -9 and restarted under recording viewers; see the module docstring."""

    def __init__(
        self,
        profile: StreamProfile,
        workdir: Path,
        report: Report,
        net: Network | None = None,
        log: Callable[[str], None] = print,
    ) -> None:
        self.p, self.dir, self.report, self.log = profile, workdir, report, log
        self.net = net or Network()

    def run(self) -> Report:
        port = free_port()
        streamer = Child(self.net, self.dir / "streamer", streamer_args(port))
        backups = [self.dir / f"rec{i}" for i in range(self.p.viewers)]
        viewers = [
            Child(self.net, self.dir / f"viewer{i}", ["view", f"127.0.0.1:{port}", "--headless", "--backup", str(b)])
            for i, b in enumerate(backups)
        ]
        up = 0.0
        try:
            streamer.start()
            for viewer in viewers:
                viewer.start()
            began = time.monotonic()  # the viewers are connected from here on
            for n in range(self.p.restarts + 1):
                time.sleep(self.p.up_seconds)
                if n == self.p.restarts:
                    break
                streamer.kill9()
                up += time.monotonic() - began
                self.report.stream_restarts += 1
                self.log(f"  kill -9 streamer, restart {n + 1}/{self.p.restarts}")
                time.sleep(self.p.down_seconds)
                streamer.start()
                began = time.monotonic()
            up += time.monotonic() - began
            for i, viewer in enumerate(viewers):
                if not viewer.alive():
                    self.report.problems.append(f"viewer{i} died with the streamer:\n{viewer.log_tail()}")
            for i, viewer in enumerate(viewers):
                if viewer.alive() and (code := viewer.stop(timeout=30)) != 0:
                    self.report.problems.append(f"viewer{i} exit {code} on SIGTERM:\n{viewer.log_tail()}")
        except ChaosError as exc:
            self.report.problems.append(str(exc))
        finally:
            for child in [*viewers, streamer]:
                child.stop()
        self._check(backups, up)
        return self.report

    def _check(self, backups: list[Path], up: float) -> None:
        for i, folder in enumerate(backups):
            leftovers = sorted(p.name for p in folder.glob("*.part")) + sorted(p.name for p in folder.glob(".*.part"))
            if leftovers:
                self.report.problems.append(f"viewer{i} left partial recordings after SIGTERM: {leftovers}")
            total = 0.0
            for mp4 in sorted(folder.glob("*.mp4")):
                try:
                    seconds = check_mp4(mp4)
                except ValueError as exc:
                    self.report.problems.append(f"viewer{i} {mp4.name}: {exc}")
                    continue
                total += seconds
                self.report.recordings.append(f"viewer{i} {mp4.name}: {seconds:.1f} s of video")
                if not 0 < seconds <= up + self.p.down_seconds * self.p.restarts + 2:
                    self.report.problems.append(f"viewer{i} {mp4.name}: {seconds:.1f} s for {up:.1f} s streamed")
            # each run loses its start (reconnecting, then waiting for a keyframe), more on a loaded machine; a run
            # lost whole leaves less than 60% of what was streamed
            least = 0.6 * up
            if self.p.break_check:
                least = up * 2
            if total < least:
                self.report.problems.append(
                    f"viewer{i} recorded {total:.1f} s of video for {up:.1f} s streamed (expected >= {least:.1f} s)"
                )
