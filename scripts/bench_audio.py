"""Audio benchmark: glass-to-ear latency, A/V offset in recordings, CPU cost of audio. Writes docs/benchmarks.md.

Runs a private PulseAudio (null sink) so playback has a real device; the streamer uses the test tone so the
capture side needs no sound card. Latency is capture timestamp → the moment the sample is due at the output
(PortAudio's reported output latency included). CPU is measured on real `overdrive stream` processes
(rusage of the child), with the video-only run as the baseline in the same session.

``--smoke`` runs every step briefly (4 s live run, 2 real beeps, 2 s per CPU run), checks that each produced
measurements, prints the table and writes no docs (CI runs it: tests/test_bench_smoke.py).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import benchlib  # noqa: E402

# The overdrive internals this benchmark uses (the CPU runs go through the `overdrive stream` command line).
from overdrive.bus.security import NodeIdentity  # noqa: E402
from overdrive.bus.sockets import Bus, Security  # noqa: E402
from overdrive.demo.audio import measure_sync  # noqa: E402
from overdrive.media.audio.capture import attach_audio  # noqa: E402
from overdrive.media.audio.playback import AudioPlayer  # noqa: E402
from overdrive.media.recorder import attach_recorder  # noqa: E402
from overdrive.media.streamer import Streamer, StreamerConfig  # noqa: E402
from overdrive.media.viewer import Viewer, ViewerConfig  # noqa: E402
from tests.services import PulseAudio, Xvfb, free_port  # noqa: E402

SECONDS = 15.0


def stream_cpu(audio: str, codec: str, home: Path, seconds: float = SECONDS) -> float:
    """CPU seconds per wall second of a streamer (640x360 test pattern) with this audio, no viewer."""
    env = dict(os.environ, OVERDRIVE_HOME=str(home))
    argv = [
        sys.executable,
        "-m",
        "overdrive",
        "--insecure",
        "stream",
        "--source",
        "testpattern",
        "--scale",
        "640x360",
        "--audio",
        audio,
        "--audio-codec",
        codec,
        "--duration",
        f"{seconds:g}",
        "--no-record",
        "--bind",
        f"tcp://127.0.0.1:{free_port()}",
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=seconds + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime) / seconds


def live_run(home: Path, seconds: float = SECONDS) -> tuple[dict[str, object], object, object]:
    sbus, vbus = Bus(Security(NodeIdentity.generate(), None)), Bus(Security(NodeIdentity.generate(), None))
    streamer = Streamer(
        StreamerConfig(
            source="testpattern", bind="tcp://127.0.0.1:0", duration=seconds, pattern_size=(640, 360), name="bench"
        ),
        sbus,
    )
    attach_audio(streamer, "testtone")
    srec = attach_recorder(streamer, home / "s")
    endpoint = streamer.start()
    viewer = Viewer(ViewerConfig(host=endpoint.display, headless=True, duration=seconds + 10), vbus)
    player = AudioPlayer()
    player.open()
    viewer.add_listener(player)
    vrec = attach_recorder(viewer, home / "v")
    viewer.start()
    time.sleep(seconds + 0.5)
    streamer.stop()
    viewer.stop()
    player.close()
    s_done, v_done = srec.close(), vrec.close()
    sbus.close()
    vbus.close()
    return player.stats(), measure_sync(s_done[0].path), measure_sync(v_done[0].path)


def real_capture(home: Path, beeps: int = 8) -> tuple[list[dict[str, float]], float]:
    """tests/flashbeep.py on Xvfb + the null sink, captured by a streamer (mss, --audio system) that records.

    Returns the per-event offsets of tests/test_audio_realsync.py and PortAudio's reported input latency.
    """
    import sounddevice as sd

    from tests.test_audio_live import analyse, one
    from tests.test_audio_realsync import offsets

    with sd.InputStream(
        device="pulse", samplerate=48_000, channels=2, dtype="int16", blocksize=960, latency="low"
    ) as s:
        reported = float(s.latency)  # what the streamer's DeviceSource gets for its stream
    with Xvfb() as xvfb:
        env = dict(os.environ, OVERDRIVE_HOME=str(home), **xvfb.env())
        out = home / "rc"
        argv = [sys.executable, "-m", "overdrive", "--insecure", "stream", "--source", "screen", "--region"]
        argv += ["0,0,640,360", "--audio", "system", "--bind", f"tcp://127.0.0.1:{free_port()}", "--backup", str(out)]
        streamer = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, start_new_session=True)
        try:
            deadline = time.monotonic() + 30
            while not list(out.glob(".*.part")):
                if time.monotonic() > deadline or streamer.poll() is not None:
                    raise RuntimeError("the streamer did not start recording")
                time.sleep(0.1)
            events = home / "events.json"
            cmd = [sys.executable, "-m", "tests.flashbeep", str(events), str(beeps)]
            subprocess.run(cmd, env=env, cwd=ROOT, check=True, timeout=90)
            os.killpg(streamer.pid, signal.SIGTERM)
            streamer.wait(30)
        finally:
            if streamer.poll() is None:
                os.killpg(streamer.pid, signal.SIGKILL)
                streamer.wait()
        return offsets(analyse(one(out)), json.loads(events.read_text())), reported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="every step briefly, checked; no docs")
    args = parser.parse_args()
    seconds, beeps, cpu_seconds = (4.0, 2, 2.0) if args.smoke else (SECONDS, 8, SECONDS)
    with tempfile.TemporaryDirectory() as tmp, PulseAudio() as pulse:
        os.environ.update(pulse.env())  # before sounddevice is imported: PortAudio reads it at init
        home = Path(tmp)
        os.environ["OVERDRIVE_HOME"] = str(home)
        stats, s_sync, v_sync = live_run(home, seconds)
        real, reported = real_capture(home, beeps)
        runs = (("none", "opus"), ("testtone", "opus"), ("testtone", "pcm"))
        cpu = {(a, c): stream_cpu(a, c, home, cpu_seconds) for a, c in runs}
    lat = stats["latency_ms"]  # type: ignore[index]
    rows = [
        ["glass-to-ear latency p50 (capture → due at output)", f"{lat['p50']:.1f} ms"],  # type: ignore[index]
        ["glass-to-ear latency p99", f"{lat['p99']:.1f} ms"],  # type: ignore[index]
        ["of which output device latency (PortAudio, pulse)", f"{stats['output_latency_ms']:.1f} ms"],
        ["late chunks dropped / underruns", f"{stats['late_dropped']} / {stats['underruns']}"],
    ]
    for label, rep in (("streamer", s_sync), ("viewer", v_sync)):
        offs = rep.offsets_ms  # type: ignore[attr-defined]
        rows.append(
            [
                f"A/V offset in the {label}'s MP4 (first flash frame − beep; {len(offs)} pairs)",
                f"median {benchlib.median(offs):+.1f} ms, worst {rep.worst_ms:.1f} ms",  # type: ignore[attr-defined]
            ]
        )
        rows.append([f"{label} MP4 duration", f"{rep.duration:.3f} s"])  # type: ignore[attr-defined]
    path, av = [e["audio_path"] * 1000 for e in real], [e["av"] * 1000 for e in real]
    rows += [
        [
            f"real capture: audio stamped − beep at the monitor ({len(real)} beeps, --audio system)",
            f"median {benchlib.median(path):+.1f} ms, range {min(path):+.1f} … {max(path):+.1f} ms",
        ],
        [
            "real capture: A/V offset in the streamer's MP4 (beep − first white frame, minus the real gap)",
            f"median {benchlib.median(av):+.1f} ms, worst {max(av, key=abs):+.1f} ms",
        ],
        ["PortAudio's reported input latency (pulse, low; a buffer size, not subtracted)", f"{reported * 1000:.1f} ms"],
    ]
    base = cpu[("none", "opus")]
    rows.append(["streamer CPU, video only (baseline)", f"{base * 100:.1f} % of a core"])
    for codec, label in (("opus", "Opus"), ("pcm", "PCM")):
        used = cpu[("testtone", codec)]
        rows.append(
            [
                f"streamer CPU, + test tone as {label}",
                f"{used * 100:.1f} % ({(used - base) * 100:+.1f}, {used / base:.2f}x the baseline)",
            ]
        )
    body = (
        f"{benchlib.machine()}\n\n"
        f"{seconds:g} s of 640x360 test pattern + test tone (a beep on every white flash) over loopback, a viewer "
        "playing into a PulseAudio null sink and both ends recording. A/V offset is measured in the MP4s; a flash "
        "frame can only show up to one frame (33 ms) after the beep that starts with it, so a positive median of "
        "about half a frame is the expected result of exact timestamps.\n\n"
        "Real capture: tests/flashbeep.py maps a white full-screen window on Xvfb when a 1 kHz beep reaches the "
        "null sink's monitor; a streamer captures the screen with mss (30 fps) and --audio system. Subtracting "
        "PortAudio's reported input latency (as the first version did) stamped the audio 38 ms early; the flash "
        "shows up to one frame late, so a negative A/V median of about half a frame is exact.\n\n"
        + benchlib.table(["measure", "result"], rows)
    )
    print(body)
    if args.smoke:
        problems = [] if lat["p50"] > 0 else [f"latency p50 is {lat['p50']}"]  # type: ignore[index]
        problems += [f"no A/V pairs in the {label}'s MP4" for label, rep in (("streamer", s_sync), ("viewer", v_sync))
                     if not rep.offsets_ms]  # type: ignore[attr-defined]  # fmt: skip
        problems += [f"{len(real)} of {beeps} real beeps measured"] if len(real) != beeps else []
        problems += [f"streamer CPU {run} is {used}" for run, used in cpu.items() if not used > 0]
        for problem in problems:
            print(f"smoke: {problem}", file=sys.stderr)
        sys.exit(1 if problems else 0)
    benchlib.write_section("audio", "Audio: latency, A/V sync, CPU", body)


if __name__ == "__main__":
    main()
