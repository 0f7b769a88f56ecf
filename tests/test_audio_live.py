"""Audio streaming and recording end to end: real processes, real sockets, real PulseAudio null sinks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import av
import numpy as np

from tests.conftest import TestNetwork
from tests.services import PulseAudio, Xvfb, free_port
from tests.test_audio import onsets

RATE = 48_000
FRAME = 1 / 30


def spawn(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "overdrive", *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 90) -> str:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        raise AssertionError(f"process did not finish: {err[-2000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    return err


def wait_for(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def one(folder: Path, pattern: str = "*.mp4") -> Path:
    files = sorted(folder.glob(pattern))
    assert len(files) == 1, f"{folder}: {[f.name for f in folder.iterdir()] if folder.exists() else 'missing'}"
    return files[0]


def analyse(path: Path) -> dict[str, object]:
    """Flash-frame starts, beep onsets (s, file time), frame times, audio codec and samples of a recording."""
    with av.open(str(path)) as c:
        times, flashes, last, windows = [], [], False, []
        for f in c.decode(video=0):
            t = float(f.pts * f.time_base)
            white = f.to_ndarray(format="gray").mean() > 200
            if white and not last:
                flashes.append(t)
                windows.append((times[-1] if times else -1.0, t))  # the flash began in (last dark, first white]
            times.append(t)
            last = white
    with av.open(str(path)) as c:
        stream = c.streams.audio[0]
        codec = stream.codec_context.name
        start, parts = None, []
        for f in c.decode(audio=0):
            start = float(f.pts * f.time_base) if start is None else start
            parts.append(f.to_ndarray().mean(axis=0))
        duration = float(c.duration / 1e6) if c.duration else 0.0
        comment = c.metadata.get("comment", "")
    pcm = np.concatenate(parts) if parts else np.zeros(0)
    return {
        "times": times,
        "flashes": flashes,
        "windows": windows,
        "onsets": onsets(pcm, RATE, start or 0.0),
        "codec": codec,
        "pcm": pcm,
        "duration": duration,
        "comment": comment,
    }


def assert_synced(rec: dict, min_beeps: int) -> None:
    beeps = [t for t in rec["onsets"] if t > 0.15]  # type: ignore[union-attr]
    assert len(beeps) >= min_beeps, rec["onsets"]
    for beep in beeps:
        nearest = min(rec["flashes"], key=lambda f: abs(f - beep))  # type: ignore[arg-type]
        assert abs(nearest - beep) <= 0.040, f"beep at {beep:.3f}s, flash at {nearest:.3f}s"
        dark, white = next(w for w in rec["windows"] if w[1] == nearest)  # type: ignore[union-attr]
        # the test tone is stamped exactly: its onset must fall between the last dark and the first white frame
        assert dark - 0.005 <= beep <= white + 0.005, f"beep at {beep:.3f}s, flash between {dark:.3f}, {white:.3f}"
    spacing = np.diff(beeps)
    assert np.all(np.abs(spacing - 2.0) < FRAME), spacing  # the file's timeline is the wall clock


def test_testtone_sync_at_streamer_and_viewer_and_crash_safety(
    network: TestNetwork, tmp_path: Path, overdrive_home: Path
) -> None:
    """20 s of testpattern + testtone: flashes and beeps align in both MP4s; a viewer killed -9 keeps ~all."""
    port = free_port()
    env = network.env(overdrive_home)
    common = ["--duration", "20", "--scale", "640x360", "--audio", "testtone", "--source", "testpattern"]
    streamer = spawn(
        ["stream", *common, "--bind", f"tcp://127.0.0.1:{port}", "--name", "sync", "--backup", str(tmp_path / "s")],
        env,
        tmp_path,
    )
    viewer = spawn(
        ["view", f"127.0.0.1:{port}", "--headless", "--duration", "40", "--backup", str(tmp_path / "v")], env, tmp_path
    )
    victim = spawn(
        ["view", f"127.0.0.1:{port}", "--headless", "--duration", "40", "--backup", str(tmp_path / "c")], env, tmp_path
    )
    try:
        # the recording has begun once the first keyframe made it into the file (moov and a first fragment)
        wait_for(
            lambda: [p for p in (tmp_path / "c").glob(".*.part") if p.stat().st_size > 4096],
            30,
            "the victim's recording",
        )
        time.sleep(10)
        os.killpg(victim.pid, signal.SIGKILL)
        victim.communicate(timeout=10)
        finish(streamer, 60)
        os.killpg(viewer.pid, signal.SIGTERM)  # the stream is over: stop like Ctrl-C, which closes the file
        finish(viewer, 30)
    finally:
        for proc in (streamer, viewer, victim):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()

    at_streamer = analyse(one(tmp_path / "s"))
    at_viewer = analyse(one(tmp_path / "v"))
    for rec in (at_streamer, at_viewer):
        assert rec["codec"] == "aac"
        times = rec["times"]
        assert abs(rec["duration"] - (times[-1] + FRAME)) <= FRAME  # type: ignore[operator,index]
    assert_synced(at_streamer, 9)
    assert_synced(at_viewer, 8)
    assert abs(at_streamer["duration"] - 20.0) <= 0.2, at_streamer["duration"]  # type: ignore[operator]
    # the viewer joined late: its file ends with the stream, so it is shorter by exactly its join delay
    t0 = {k: int(v) for k, v in (p.split("=") for p in str(at_streamer["comment"]).split()[1:]) if k == "t0_ns"}
    t0v = {k: int(v) for k, v in (p.split("=") for p in str(at_viewer["comment"]).split()[1:]) if k == "t0_ns"}
    late = (t0v["t0_ns"] - t0["t0_ns"]) / 1e9
    assert abs(at_viewer["duration"] - (at_streamer["duration"] - late)) <= FRAME + 0.03  # type: ignore[operator]

    crashed = one(tmp_path / "c", ".*.mp4.part")  # never renamed: it was killed
    frames = []
    with av.open(str(crashed)) as c:  # a player stops at the torn last fragment; so do we
        try:
            for f in c.decode(video=0):
                frames.append(float(f.pts * f.time_base))
        except av.error.InvalidDataError:
            pass
    assert frames and frames[-1] >= 7.0, f"only {frames[-1] if frames else 0:.1f} s survived kill -9"


def dominant_hz(samples: np.ndarray, rate: int = RATE) -> float:
    x = samples.astype(np.float64).ravel()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    k = int(np.argmax(spectrum[1:])) + 1
    if 1 <= k < len(spectrum) - 1:  # parabolic interpolation for sub-bin accuracy
        a, b, c = np.log(spectrum[k - 1 : k + 2] + 1e-12)
        k_f = k + 0.5 * (a - c) / (a - 2 * b + c)
        return float(k_f * rate / len(x))
    return float(freqs[k])


def test_system_audio_tone_is_recorded_and_played(
    pulse: PulseAudio, xvfb: Xvfb, network: TestNetwork, tmp_path: Path, overdrive_home: Path
) -> None:
    """440 Hz into the null sink → --audio system → AAC at 440 Hz in the viewer's MP4 and out of a second sink."""
    t = np.arange(RATE * 40) / RATE
    (tmp_path / "tone.raw").write_bytes((0.5 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16).tobytes())
    sink = f"out{uuid.uuid4().hex[:6]}"
    pulse.add_null_sink(sink)
    fmt = ["--format=s16le", f"--rate={RATE}", "--channels=1", "--raw", "--latency-msec=20"]
    player = subprocess.Popen(["pacat", "--playback", "--device=virt", *fmt, str(tmp_path / "tone.raw")])
    port = free_port()
    env = network.env(overdrive_home)
    heard = tmp_path / "heard.raw"
    streamer = spawn(
        [
            "stream",
            "--source",
            "testpattern",
            "--scale",
            "320x180",
            "--audio",
            "system",
            "--duration",
            "14",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--backup",
            str(tmp_path / "s"),
        ],
        env,
        tmp_path,
    )
    viewer = spawn(
        ["view", f"127.0.0.1:{port}", "--headless", "--duration", "11", "--backup", str(tmp_path / "v")], env, tmp_path
    )
    listener = spawn(
        ["view", f"127.0.0.1:{port}", "--duration", "11", "--no-record"], {**env, "PULSE_SINK": sink}, tmp_path
    )
    with open(heard, "wb") as out:
        recorder = subprocess.Popen(["parec", f"--device={sink}.monitor", *fmt], stdout=out)
        try:
            finish(viewer, 60)
            finish(listener, 60)
        finally:
            recorder.terminate()
            recorder.wait(10)
            player.kill()
            player.wait(10)
            for proc in (streamer, viewer, listener):
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.communicate()
    rec = analyse(one(tmp_path / "v"))
    assert rec["codec"] == "aac"
    pcm = rec["pcm"][RATE:]  # type: ignore[index]
    assert len(pcm) > 4 * RATE and float(np.sqrt(np.mean(pcm**2))) > 0.05, "recorded silence"
    assert abs(dominant_hz(pcm) - 440) <= 2, dominant_hz(pcm)
    played = np.frombuffer(heard.read_bytes(), dtype=np.int16)
    loud = played[np.abs(played) > 1000]
    assert len(loud) > 2 * RATE, "the viewer played nothing into its sink"
    start = int(np.flatnonzero(np.abs(played) > 1000)[0])
    assert abs(dominant_hz(played[start : start + 2 * RATE]) - 440) <= 2
