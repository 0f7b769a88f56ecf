"""Audio and recording pieces in memory: timelines, jitter buffer, clock, codecs, and real MP4 files on disk."""

from __future__ import annotations

import threading
from pathlib import Path

import av
import numpy as np
import pytest

from overdrive.media.audio.capture import tone_block
from overdrive.media.audio.devices import ChunkClock
from overdrive.media.audio.jitter import JitterBuffer
from overdrive.media.codecs.base import CHUNK_NS, CHUNK_SAMPLES, SAMPLE_RATE
from overdrive.media.codecs.h264 import H264Encoder
from overdrive.media.codecs.jpeg import JpegEncoder
from overdrive.media.codecs.opus import OpusDecoder, OpusEncoder
from overdrive.media.mux import AudioTimeline
from overdrive.media.protocol import AudioChunk, AudioTrackInfo, StreamInfo, VideoFrame, VideoTrackInfo
from overdrive.media.recorder import RecordConfig, Recorder, safe_name
from overdrive.media.sources import TestPattern

T0 = 1_700_000_000_000_000_000
MS = 1_000_000


def test_timeline_places_gaps_overlaps_and_jitter() -> None:
    tl = AudioTimeline(T0)
    first = tl.place(T0 - 5 * MS, 960)  # starts 5 ms before the recording: trimmed exactly
    assert (first.skip, first.silence) == (240, 0)
    assert tl.cursor == 720
    assert tl.place(T0 + 15 * MS + 2 * MS // 10, 960).silence == 0  # 0.2 ms of jitter: absorbed
    gap = tl.place(T0 + 135 * MS, 960)  # 100 ms lost: silence keeps the timeline
    assert gap.silence == tl.position(T0 + 135 * MS) - 1680
    assert tl.cursor == tl.position(T0 + 135 * MS) + 960
    back = tl.place(T0 + 135 * MS, 960)  # a duplicate chunk overlaps completely: dropped
    assert back.skip == 960
    assert tl.pad_to(T0 + 1000 * MS) == SAMPLE_RATE - tl.cursor


def test_jitter_buffer_plays_by_timestamp_and_drops_late_audio() -> None:
    jb = JitterBuffer(1, target_ns=40 * MS)
    transit = 5 * MS
    for k in range(10):
        pts = T0 + k * CHUNK_NS
        jb.push(pts, np.full((CHUNK_SAMPLES, 1), k + 1, dtype=np.int16), pts + transit + (k % 3) * MS)
    assert jb.delay_ns == transit + 40 * MS
    out = jb.pull(CHUNK_SAMPLES, T0 + transit + 40 * MS)  # exactly when chunk 0 is due
    assert (out[:, 0] == 1).all()
    assert jb.stats.latencies_ms[-1] == pytest.approx(45, abs=0.1)
    later = jb.pull(CHUNK_SAMPLES, T0 + transit + 60 * MS)
    assert (later[:, 0] == 2).all()
    # chunk 1 again, long after its turn: dropped, never queued (the delay does not grow)
    assert not jb.push(T0 + CHUNK_NS, np.zeros((CHUNK_SAMPLES, 1), dtype=np.int16), T0 + 500 * MS)
    assert jb.stats.late == 1
    assert jb.delay_ns == transit + 40 * MS
    # a stall: the player resyncs to where it should be instead of playing old audio
    resumed = jb.pull(CHUNK_SAMPLES, T0 + transit + 40 * MS + 5 * CHUNK_NS)
    assert (resumed[:, 0] == 6).all()


def test_chunk_clock_ignores_scheduling_jitter() -> None:
    rng = np.random.default_rng(1)
    clock = ChunkClock(latency_ns=10 * MS)
    errors = []
    for k in range(300):
        true_start = T0 + k * CHUNK_NS
        wake = int(rng.uniform(0, 8) * MS)  # late wake-ups only
        done = true_start + CHUNK_NS + 10 * MS + wake
        errors.append(clock.stamp(CHUNK_SAMPLES, done, 0) - true_start)
    assert max(abs(e) for e in errors[60:]) < 1 * MS, max(errors[60:])
    assert clock.resyncs == 0


def test_tone_block_beeps_with_the_flash_schedule() -> None:
    block = tone_block(0, SAMPLE_RATE * 2)[:, 0]
    loud = np.flatnonzero(np.abs(block) > 1000)
    assert loud[0] < 48 and abs(loud[-1] - SAMPLE_RATE // 10) < 48  # 0..100 ms, then silence until 2 s
    assert not np.abs(block[SAMPLE_RATE // 10 + 10 :]).any()


def test_opus_chunks_are_stamped_with_the_samples_they_hold() -> None:
    enc, dec = OpusEncoder(1), OpusDecoder(1)
    decoded = []
    onset_chunk = 10
    for k in range(30):
        block = np.zeros((CHUNK_SAMPLES, 1), dtype=np.int16)
        if k >= onset_chunk:
            block = tone_block(0, CHUNK_SAMPLES)  # loud from chunk 10 on
        for chunk in enc.encode(block, T0 + k * CHUNK_NS):
            decoded.append((chunk.pts_ns, dec.decode(chunk.data)))
    pts = np.concatenate([p + np.arange(len(pcm)) * 1e9 / SAMPLE_RATE for p, pcm in decoded])
    pcm = np.concatenate([x[:, 0] for _, x in decoded])
    onset = pts[np.flatnonzero(np.abs(pcm) > 3000)[0]]
    assert abs(onset - (T0 + onset_chunk * CHUNK_NS)) < 2 * MS


def _info(codec: str, audio_codec: str = "pcm", name: str = "../lecture 1") -> StreamInfo:
    return StreamInfo(
        stream_id="s1",
        name=name,
        started_ns=T0,
        sent_ns=T0,
        video=VideoTrackInfo(codec=codec, width=320, height=240, fps=30),  # type: ignore[arg-type]
        audio=(AudioTrackInfo(track=0, source="testtone", codec=audio_codec, sample_rate=SAMPLE_RATE, channels=1),),  # type: ignore[arg-type]
    )


def _feed(recorder: Recorder, codec: str, seconds: float, gap: tuple[float, float] | None = None) -> None:
    """Feed a synthetic 30 fps stream with a beep every 2 s; drop everything inside ``gap`` (seconds)."""
    encoder = H264Encoder(320, 240, 30) if codec == "h264" else JpegEncoder()
    pattern = TestPattern(320, 240, started_ns=T0)
    recorder(_info(codec), b"")
    frames = int(seconds * 30)
    chunk = 0
    for i in range(frames):
        pts = T0 + i * 1_000_000_000 // 30
        lost = gap is not None and gap[0] <= (pts - T0) / 1e9 < gap[1]
        for packet in encoder.encode(pattern.grab(pts, i), pts):
            if not lost:
                recorder(
                    VideoFrame(stream_id="s1", seq=i + 1, pts_ns=pts, keyframe=packet.keyframe, codec=codec),
                    packet.data,
                )
        while T0 + chunk * CHUNK_NS <= pts:
            apts = T0 + chunk * CHUNK_NS
            if not (gap is not None and gap[0] <= (apts - T0) / 1e9 < gap[1]):
                data = tone_block(chunk * CHUNK_SAMPLES, CHUNK_SAMPLES).tobytes()
                recorder(AudioChunk(stream_id="s1", track=0, seq=chunk + 1, pts_ns=apts, samples=CHUNK_SAMPLES), data)
            chunk += 1
    encoder.close()


def onsets(pcm: np.ndarray, rate: int = SAMPLE_RATE, start: float = 0.0) -> list[float]:
    """Times of the first loud sample after at least 0.5 s of quiet (beep onsets)."""
    loud = np.flatnonzero(np.abs(pcm) > 0.1 * (32767 if pcm.dtype == np.int16 else 1))
    found, prev = [], -(10**9)
    for k in loud:
        if k - prev > rate // 2:
            found.append(start + k / rate)
        prev = k
    return found


def _video_times(path: Path) -> tuple[list[float], list[float]]:
    with av.open(str(path)) as c:
        times, flashes, last = [], [], False
        for f in c.decode(video=0):
            t = float(f.pts * f.time_base)
            white = f.to_ndarray(format="gray").mean() > 200
            if white and not last:
                flashes.append(t)
            times.append(t)
            last = white
    return times, flashes


@pytest.mark.parametrize("codec", ["h264", "jpeg"])
def test_recorder_writes_a_timestamped_mp4_with_gaps_held(tmp_path: Path, codec: str) -> None:
    recorder = Recorder(RecordConfig(backup_dir=tmp_path, wav=True))
    recorder.start()
    _feed(recorder, codec, 6.0, gap=(2.5, 3.5))
    done = recorder.close()
    assert len(done) == 1 and recorder.errors == 0
    path = done[0].path
    assert path.name.startswith("lecture 1-") and path.suffix == ".mp4" and path.parent == tmp_path
    assert not list(tmp_path.glob(".*.part"))
    times, flashes = _video_times(path)
    # the lost second is a held frame: nothing after it moved; the flashes stay on the 2 s grid
    assert [round(t, 3) for t in flashes] == [0.0, 2.0, 4.0]
    assert times[-1] == pytest.approx(6.0 - 1 / 30, abs=1e-3)
    assert not [t for t in times if 2.5 <= t < 3.5 and t > 2.51] or codec == "jpeg"
    with av.open(str(path)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        pcm = np.concatenate([f.to_ndarray()[0] for f in c.decode(audio=0)])
    loud = np.abs(pcm) > 0.1
    beeps = [round(t, 3) for t in onsets(pcm)]
    assert beeps == [0.0, 2.0, 4.0], beeps
    assert not loud[int(2.6 * SAMPLE_RATE) : int(3.4 * SAMPLE_RATE)].any()  # the gap is silence
    assert abs(len(pcm) / SAMPLE_RATE - 6.0) < 1024 / SAMPLE_RATE + 1e-3
    import soundfile as sf

    wav, rate = sf.read(done[0].wavs[0], dtype="int16")
    assert rate == SAMPLE_RATE and abs(len(wav) - 6 * SAMPLE_RATE) <= 1


def test_recorder_restart_makes_a_new_file_and_names_are_safe(tmp_path: Path) -> None:
    recorder = Recorder(RecordConfig(backup_dir=tmp_path))
    recorder.start()
    _feed(recorder, "h264", 1.0)
    recorder(
        StreamInfo(**{**{f: getattr(_info("h264"), f) for f in StreamInfo.__struct_fields__}, "stream_id": "s2"}), b""
    )
    recorder(VideoFrame(stream_id="s1", seq=99, pts_ns=T0 + 2 * 10**9, keyframe=True, codec="h264"), b"junk")
    done = recorder.close()
    assert len(done) == 1  # the restart closed the first file; stale frames of the old stream are ignored
    assert safe_name("../../etc/passwd") == "etc_passwd" and safe_name("...") == "stream"


def test_recorder_starts_its_writer_only_when_started(tmp_path: Path) -> None:
    before = set(threading.enumerate())
    recorder = Recorder(RecordConfig(backup_dir=tmp_path))
    assert set(threading.enumerate()) == before and not recorder.running
    recorder.start()
    assert recorder.running
    assert recorder.close() == [] and not recorder.running
