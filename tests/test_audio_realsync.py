"""A/V sync through real capture: a white X window and a 1 kHz beep in the PulseAudio sink, at the same instants.

``tests/flashbeep.py`` makes the events (it flashes the window when the beep reaches the sink's monitor, and
measures both instants on the stream clock); the streamer captures them with mss (``--source screen``) and
``--audio system``; a viewer records too. In both MP4s every beep must sit within 80 ms of its flash, after
removing the (measured, usually few ms) gap between the two real events.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import cast

import av
import numpy as np
import pytest

from tests.conftest import TestNetwork
from tests.services import PulseAudio, Xvfb, free_port
from tests.test_audio_live import RATE, analyse, dominant_hz, finish, one, spawn, wait_for

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.080
BEEPS = 5


def t0_seconds(rec: dict[str, object]) -> float:
    fields = dict(p.split("=", 1) for p in str(rec["comment"]).split()[1:])
    return int(fields["t0_ns"]) / 1e9


def offsets(rec: dict[str, object], truth: dict[str, list]) -> list[dict[str, float]]:
    """Per real event: where the recording put its beep and its flash, against when they really happened."""
    t0 = t0_seconds(rec)
    found = []
    beeps, flashes = cast(list[float], rec["onsets"]), cast(list[float], rec["flashes"])
    for beep_ns, (shown_ns, synced_ns) in zip(truth["beeps"], truth["flashes"], strict=True):
        beep, flash = beep_ns / 1e9 - t0, (shown_ns + synced_ns) / 2e9 - t0  # real instants on the file's timeline
        file_beep = min(beeps, key=lambda t: abs(t - beep), default=None)
        file_flash = min(flashes, key=lambda t: abs(t - flash), default=None)
        assert file_beep is not None and abs(file_beep - beep) < 0.5, f"beep at {beep:.2f}s not in {beeps}"
        assert file_flash is not None and abs(file_flash - flash) < 0.5, f"flash at {flash:.2f}s not in {flashes}"
        found.append(
            {
                "audio_path": file_beep - beep,  # capture latency left after compensation (+ = stamped late)
                "video_path": file_flash - flash,  # frame pts of the first white frame vs the map (0..1 frame)
                "raw": file_beep - file_flash,  # the recording's own A/V offset
                "av": (file_beep - file_flash) - (beep - flash),  # minus the real gap between the two events
            }
        )
    return found


def test_real_capture_flash_and_beep_align(
    pulse: PulseAudio, xvfb: Xvfb, network: TestNetwork, tmp_path: Path, overdrive_home: Path
) -> None:
    """White window + beep on the null sink, captured by mss and --audio system: within 80 ms in both MP4s."""
    port = free_port()
    env = network.env(overdrive_home)
    capture = ["--source", "screen", "--region", "0,0,640,360", "--fps", "30", "--audio", "system"]
    streamer = spawn(
        ["stream", *capture, "--bind", f"tcp://127.0.0.1:{port}", "--name", "real", "--backup", str(tmp_path / "s")],
        env,
        tmp_path,
    )
    viewer = spawn(["view", f"127.0.0.1:{port}", "--headless", "--backup", str(tmp_path / "v")], env, tmp_path)
    procs = [streamer, viewer]
    try:
        for folder in ("s", "v"):
            wait_for(lambda f=folder: list((tmp_path / f).glob(".*.part")), 30, f"the {folder} recording")  # type: ignore[misc]
        events = tmp_path / "events.json"
        driver = subprocess.run(
            [sys.executable, "-m", "tests.flashbeep", str(events), str(BEEPS)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert driver.returncode == 0, driver.stderr[-3000:]
        for proc in procs:  # stop like Ctrl-C: both close their files
            os.killpg(proc.pid, signal.SIGTERM)
        finish(streamer, 30)
        finish(viewer, 30)
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()

    truth = json.loads(events.read_text())
    assert len(truth["beeps"]) >= BEEPS - 1, truth  # the driver saw (nearly) every beep reach the monitor
    report = {}
    for where in ("s", "v"):
        path = one(tmp_path / where)
        rec = analyse(path)
        with av.open(str(path)) as c:
            assert [s.codec_context.name for s in c.streams.audio] == ["aac"]
        found = offsets(rec, truth)
        report[where] = found
        print(where, json.dumps([{k: round(v * 1000, 1) for k, v in f.items()} for f in found]))
        for f in found:
            assert abs(f["av"]) <= TOLERANCE, f"{where}: beep {f['av'] * 1000:+.0f} ms off its flash: {found}"


def track_pcm(path: Path, index: int) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(c.streams.audio[index])])


def share_at(samples: np.ndarray, hz: float, rate: int = RATE) -> float:
    """The part of the signal's spectral energy within 5 Hz of ``hz``."""
    x = samples.astype(np.float64).ravel()
    power = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(power[np.abs(freqs - hz) <= 5].sum() / power.sum())


MIX = "lecture (system audio + microphone)"


@pytest.mark.parametrize(
    ("mode", "tracks"),
    [
        ("both", [(MIX, (440, 660)), ("system audio", (440,)), ("microphone", (660,))]),
        ("mic", [("microphone", (660,))]),
    ],
)
def test_audio_system_and_mic_are_recorded_as_aac_tracks(
    pulse: PulseAudio,
    network: TestNetwork,
    tmp_path: Path,
    overdrive_home: Path,
    mode: str,
    tracks: list[tuple[str, tuple[int, ...]]],
) -> None:
    """System audio is 440 Hz on the default sink, the mic 660 Hz on another sink's monitor: --audio both records
    first their mix (the default track: what a viewer hears live), then the system and mic tracks, all titled;
    --audio mic only the mic."""
    mic_sink = f"mic{uuid.uuid4().hex[:6]}"
    pulse.add_null_sink(mic_sink)
    fmt = ["--format=s16le", f"--rate={RATE}", "--channels=1", "--raw", "--latency-msec=40"]
    players = []
    for hz, sink in ((440, "virt"), (660, mic_sink)):
        t = np.arange(RATE * 30) / RATE
        raw = tmp_path / f"{hz}.raw"
        raw.write_bytes((0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16).tobytes())
        players.append(subprocess.Popen(["pacat", "--playback", f"--device={sink}", *fmt, str(raw)]))
    streamer = spawn(
        [
            "stream",
            *("--source", "testpattern", "--scale", "320x180", "--duration", "6"),
            *("--audio", mode, "--mic", f"pulse:{mic_sink}.monitor"),
            *("--bind", f"tcp://127.0.0.1:{free_port()}", "--backup", str(tmp_path / "s")),
        ],
        network.env(overdrive_home),
        tmp_path,
    )
    try:
        finish(streamer, 60)
    finally:
        for player in players:
            player.kill()
            player.wait(10)
        if streamer.poll() is None:
            os.killpg(streamer.pid, signal.SIGKILL)
            streamer.communicate()
    path = one(tmp_path / "s")
    with av.open(str(path)) as c:
        assert [s.codec_context.name for s in c.streams.audio] == ["aac"] * len(tracks)
        assert [s.metadata.get("handler_name") for s in c.streams.audio] == [title for title, _ in tracks]
        defaults = [bool(s.disposition & av.stream.Disposition.default) for s in c.streams.audio]
        assert defaults == [True] + [False] * (len(tracks) - 1)
    for index, (title, tones) in enumerate(tracks):
        pcm = track_pcm(path, index)[-3 * RATE :]  # the last 3 s (a fresh null sink may stall at first)
        assert len(pcm) == 3 * RATE and float(np.sqrt(np.mean(pcm**2))) > 0.05, f"{title} is silent"
        if len(tones) == 1:
            assert abs(dominant_hz(pcm) - tones[0]) <= 2, (title, dominant_hz(pcm))
        else:  # the mix: each tone a large part of it
            assert min(share_at(pcm, hz) for hz in tones) > 0.2, [share_at(pcm, hz) for hz in tones]
