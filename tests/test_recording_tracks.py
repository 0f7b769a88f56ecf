"""What a recording is called and which audio it plays first, through the real Recorder and PyAV reading back the
MP4: names from the wire keep their letters and stay one safe file name; with several audio tracks the first,
default track is their mix (what a viewer hears live) and the titled separate tracks follow."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import av
import numpy as np
import pytest

from overdrive.files.names import check_name
from overdrive.media.codecs.base import CHUNK_NS, CHUNK_SAMPLES, SAMPLE_RATE
from overdrive.media.codecs.h264 import H264Encoder
from overdrive.media.mux import MIX_LAG, _AacOut, _Mix
from overdrive.media.protocol import AudioChunk, AudioTrackInfo, StreamInfo, VideoFrame, VideoTrackInfo
from overdrive.media.recorder import MAX_NAME_BYTES, RecordConfig, Recorder, safe_name
from overdrive.media.sources import TestPattern
from tests.conftest import TestNetwork
from tests.services import PulseAudio, free_port
from tests.test_audio_live import finish, one, spawn

T0 = 1_700_000_000_000_000_000
SYSTEM_HZ, MIC_HZ = 440, 660

HOSTILE = ["../x", "a/b", "\x00", "\U0001f600" * 300, ".hidden", "CON", "..", "/", "a\\b", "x\u202egpj.exe", " ."]


def _info(name: str, tracks: tuple[tuple[str, int], ...] = (("testtone", 1),)) -> StreamInfo:
    return StreamInfo(
        stream_id="s1",
        name=name,
        started_ns=T0,
        sent_ns=T0,
        video=VideoTrackInfo(codec="h264", width=160, height=120, fps=30),
        audio=tuple(
            AudioTrackInfo(track=i, source=source, codec="pcm", sample_rate=SAMPLE_RATE, channels=channels)
            for i, (source, channels) in enumerate(tracks)
        ),
    )


def _sine(hz: int, start: int, channels: int) -> np.ndarray:
    t = np.arange(start, start + CHUNK_SAMPLES) / SAMPLE_RATE
    mono = (0.4 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)
    return np.repeat(mono[:, None], channels, axis=1)


def _record(folder: Path, info: StreamInfo, seconds: float, mic_until: float | None = None) -> Path:
    """Feed ``seconds`` of 30 fps video and, per track, a sine (440 Hz system, 660 Hz mic); the mic stops at
    ``mic_until``. Returns the one finished MP4."""
    recorder = Recorder(RecordConfig(backup_dir=folder))
    recorder.start()
    encoder = H264Encoder(160, 120, 30)
    pattern = TestPattern(160, 120, started_ns=T0)
    recorder(info, b"")
    chunk = 0
    for i in range(int(seconds * 30)):
        pts = T0 + i * 1_000_000_000 // 30
        for packet in encoder.encode(pattern.grab(pts, i), pts):
            recorder(
                VideoFrame(stream_id="s1", seq=i + 1, pts_ns=pts, keyframe=packet.keyframe, codec="h264"), packet.data
            )
        while T0 + chunk * CHUNK_NS <= pts:
            apts = T0 + chunk * CHUNK_NS
            for track in info.audio:
                if track.source == "mic" and mic_until is not None and apts - T0 >= mic_until * 1e9:
                    continue
                hz = MIC_HZ if track.source == "mic" else SYSTEM_HZ
                data = _sine(hz, chunk * CHUNK_SAMPLES, track.channels).tobytes()
                chunk_msg = AudioChunk(
                    stream_id="s1", track=track.track, seq=chunk + 1, pts_ns=apts, samples=CHUNK_SAMPLES
                )
                recorder(chunk_msg, data)
            chunk += 1
    encoder.close()
    done = recorder.close()
    assert len(done) == 1 and recorder.errors == 0
    return done[0].path


def _share_at(pcm: np.ndarray, hz: float) -> float:
    power = np.abs(np.fft.rfft(pcm * np.hanning(len(pcm)))) ** 2
    freqs = np.fft.rfftfreq(len(pcm), 1 / SAMPLE_RATE)
    return float(power[np.abs(freqs - hz) <= 5].sum() / power.sum())


def _tracks(path: Path) -> list[tuple[str | None, bool, np.ndarray]]:
    """(title, default, mono PCM as float) of each audio track."""
    out = []
    with av.open(str(path)) as c:
        for stream in c.streams.audio:
            title = stream.metadata.get("handler_name")  # what players show
            assert stream.metadata.get("name") == title  # the udta name, from the "title" tag
            default = bool(stream.disposition & av.stream.Disposition.default)
            out.append((title, default))
        pcms = []
        for index in range(len(out)):
            c.seek(0)
            pcms.append(np.concatenate([f.to_ndarray().mean(axis=0) for f in c.decode(audio=index)]))
    return [(t, d, p) for (t, d), p in zip(out, pcms, strict=True)]


def test_names_keep_every_script_and_stay_one_safe_component() -> None:
    assert safe_name("Übung Mathématiques 第1回") == "Übung Mathématiques 第1回"
    assert safe_name("U\u0308bung") == "Übung"  # NFD as macOS types it: stored composed
    for name in HOSTILE:
        cleaned = safe_name(name)
        assert cleaned and not cleaned.startswith(".") and len(cleaned.encode()) <= MAX_NAME_BYTES, (name, cleaned)
        assert check_name(cleaned) == (cleaned,), (name, cleaned)
        assert not {"/", "\\", "\x00", "\u202e"} & set(cleaned), (name, cleaned)
    assert safe_name("\U0001f600" * 300) == "\U0001f600" * (MAX_NAME_BYTES // 4)  # cut between characters
    assert safe_name("CON").upper() != "CON" and safe_name("../x") == "x" and safe_name("\x00") == "stream"


@pytest.mark.parametrize("name", ["Übung Mathématiques 第1回", *HOSTILE])
def test_recordings_on_disk_keep_letters_and_stay_in_the_backup_folder(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "backup"
    path = _record(folder, _info(name), 1.0)
    assert path.parent == folder and os.listdir(tmp_path) == ["backup"]
    assert os.listdir(folder) == [path.name] and not path.name.startswith(".")
    if name.startswith("Übung"):
        assert path.name.startswith("Übung Mathématiques 第1回-"), path.name
    with av.open(str(path)) as c:
        assert sum(1 for p in c.demux(video=0) if p.size) == 30


def test_both_records_the_mix_first_and_default_then_titled_tracks(tmp_path: Path) -> None:
    info = _info("lecture", (("system", 2), ("mic", 1)))
    tracks = _tracks(_record(tmp_path, info, 3.0))
    assert [(t, d) for t, d, _ in tracks] == [
        ("lecture (system audio + microphone)", True),
        ("system audio", False),
        ("microphone", False),
    ]
    (_, _, mix), (_, _, system), (_, _, mic) = tracks
    mid = slice(SAMPLE_RATE, 2 * SAMPLE_RATE)
    assert _share_at(system[mid], SYSTEM_HZ) > 0.9 and _share_at(mic[mid], MIC_HZ) > 0.9
    assert min(_share_at(mix[mid], SYSTEM_HZ), _share_at(mix[mid], MIC_HZ)) > 0.3  # both voices heard
    assert abs(len(mix) - len(system)) < 1024 and abs(len(mix) / SAMPLE_RATE - 3.0) < 0.05


def test_a_stalled_track_does_not_stop_the_mix(tmp_path: Path) -> None:
    info = _info("lecture", (("system", 2), ("mic", 1)))
    (_, _, mix), _, _ = _tracks(_record(tmp_path, info, 4.0, mic_until=1.0))
    assert abs(len(mix) / SAMPLE_RATE - 4.0) < 0.05  # the mix goes on with the system audio alone
    late = mix[int(2.5 * SAMPLE_RATE) : int(3.5 * SAMPLE_RATE)]
    assert _share_at(late, SYSTEM_HZ) > 0.9 and float(np.sqrt(np.mean(late**2))) > 0.1


def test_a_single_track_is_default_and_titled(tmp_path: Path) -> None:
    tracks = _tracks(_record(tmp_path, _info("lecture", (("system", 2),)), 1.0))
    assert [(t, d) for t, d, _ in tracks] == [("system audio", True)]


def test_the_mix_holds_at_most_a_second_for_a_silent_track(tmp_path: Path) -> None:
    """A track that sends nothing (a mic that stalled) delays the mix by at most MIX_LAG: the rest is written on,
    nothing piles up in memory."""
    with av.open(str(tmp_path / "mix.mp4"), "w", format="mp4") as container:
        mix = _Mix(_AacOut(container, 2, "mix", default=True), [0, 1])
        for k in range(150):  # 3 s of track 0 only
            for packet in mix.add(0, k * CHUNK_SAMPLES, _sine(SYSTEM_HZ, k * CHUNK_SAMPLES, 2)):
                container.mux(packet)
        written = mix.out.written
        assert 150 * CHUNK_SAMPLES - MIX_LAG - 1024 <= written <= 150 * CHUNK_SAMPLES - MIX_LAG
        for packet in mix.finish(None):
            container.mux(packet)


def test_a_sound_already_playing_is_recorded_from_the_first_frame(
    pulse: PulseAudio, network: TestNetwork, tmp_path: Path, overdrive_home: Path
) -> None:
    """A tone plays on the default sink before the stream starts: the streamer's recording has it from its very
    start (the audio device is running before the first video frame is taken)."""
    raw = tmp_path / "tone.raw"
    t = np.arange(SAMPLE_RATE * 30) / SAMPLE_RATE
    raw.write_bytes((0.5 * 32767 * np.sin(2 * np.pi * SYSTEM_HZ * t)).astype(np.int16).tobytes())
    fmt = ["--format=s16le", f"--rate={SAMPLE_RATE}", "--channels=1", "--raw", "--latency-msec=40"]
    player = subprocess.Popen(["pacat", "--playback", "--device=virt", *fmt, str(raw)])
    try:
        time.sleep(1.0)  # playing well before the stream starts
        args = ["--source", "testpattern", "--scale", "320x180", "--duration", "3", "--audio", "system"]
        where = ["--bind", f"tcp://127.0.0.1:{free_port()}", "--backup", str(tmp_path / "s")]
        finish(spawn(["stream", *args, *where], network.env(overdrive_home), tmp_path), 60)
    finally:
        player.kill()
        player.wait(10)
    (_, _, pcm), *_ = _tracks(one(tmp_path / "s"))
    loud = np.flatnonzero(np.abs(pcm) > 0.2)
    assert len(loud) and loud[0] / SAMPLE_RATE < 0.1, f"silent for the first {loud[0] / SAMPLE_RATE:.2f} s"
