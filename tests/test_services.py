"""Prove that each real test service works end to end (and fails loudly when broken)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

from tests.services import FirestoreEmulator, MariaDB, PulseAudio, Xvfb, emulator_credential

RATE = 48_000
TONE_HZ = 440.0


def tone(seconds: float, hz: float = TONE_HZ, rate: int = RATE) -> np.ndarray:
    """A mono int16 sine at half scale."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * 32767 * np.sin(2 * np.pi * hz * t)).astype(np.int16)


def dominant_hz(samples: np.ndarray, rate: int = RATE) -> float:
    """The frequency of the strongest FFT bin (mono, any dtype)."""
    x = samples.astype(np.float64).ravel()
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[int(np.argmax(spectrum[1:])) + 1])


def assert_tone(samples: np.ndarray) -> None:
    """Assert the samples hold a loud ~440 Hz tone."""
    assert len(samples) > RATE // 2, f"too few samples: {len(samples)}"
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    assert rms > 1000, f"silence (rms={rms:.1f})"
    assert abs(dominant_hz(samples) - TONE_HZ) < 5, f"peak at {dominant_hz(samples):.1f} Hz"


def pa_raw_args(device: str) -> list[str]:
    """pacat/parec arguments for raw mono s16le at RATE on ``device``, with low latency."""
    fmt = ["--format=s16le", f"--rate={RATE}", "--channels=1", "--raw", "--latency-msec=20"]
    return [f"--device={device}", *fmt]


def stop_recorder(recorder: subprocess.Popen[bytes]) -> None:
    """Let parec flush its last fragment, then stop it."""
    time.sleep(0.2)
    recorder.terminate()
    recorder.wait(5)


# ---------------------------------------------------------------- Xvfb


def test_xvfb_mss_grabs_drawn_colour(xvfb: Xvfb) -> None:
    """A red window drawn under Xvfb shows up red in an mss grab; the rest stays black."""
    import mss

    assert os.environ["DISPLAY"] == xvfb.display
    red = ["-bg", "red", "-fg", "red", "-xrm", "*background: red", "-xrm", "*borderWidth: 0"]
    window = subprocess.Popen(["xmessage", "-geometry", "640x480+100+100", *red, " "])
    try:
        subprocess.run(
            ["xdotool", "search", "--sync", "--onlyvisible", "--class", "xmessage"],
            check=True,
            capture_output=True,
            timeout=10,
        )
        open_mss = getattr(mss, "MSS", None) or mss.mss
        deadline = time.monotonic() + 5
        while True:
            with open_mss() as sct:
                monitor = sct.monitors[1]
                shot = np.array(sct.grab(monitor))  # BGRA
            inside = shot[120:560, 120:720, :3]
            if (inside == [0, 0, 255]).all() or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        window.terminate()
        window.wait(5)
    assert (monitor["width"], monitor["height"]) == (1920, 1080)
    assert (inside == [0, 0, 255]).all(), f"window not red: {np.unique(inside.reshape(-1, 3), axis=0)}"
    assert (shot[700:, 1000:, :3] == 0).all(), "root window not black"


# ---------------------------------------------------------------- PulseAudio

RECORD_SCRIPT = """
import sys, numpy as np, sounddevice as sd
data = sd.rec(int(float(sys.argv[2]) * {rate}), samplerate={rate}, channels=1, dtype="int16",
              device="pulse", blocking=True)
np.save(sys.argv[1], data)
"""

PLAY_SCRIPT = """
import sys, numpy as np, sounddevice as sd
sd.play(np.load(sys.argv[1]), samplerate={rate}, device="pulse", blocking=True)
"""


def run_sounddevice(script: str, *args: str) -> None:
    """Run a sounddevice snippet in a fresh process (PortAudio caches devices at init)."""
    run = subprocess.run(
        [sys.executable, "-c", script.format(rate=RATE), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-2000:]


def test_pulse_defaults(pulse: PulseAudio) -> None:
    """The daemon is private and its defaults are the null sink and its monitor."""
    info = pulse.pactl("info")
    assert f"Server String: unix:{pulse.socket}" in info
    assert "Default Sink: virt" in info
    assert "Default Source: virt.monitor" in info


def test_pulse_sounddevice_records_what_pacat_plays(pulse: PulseAudio, tmp_path: Path) -> None:
    """A tone played into ``virt`` with pacat is recorded by sounddevice from the monitor."""
    source = tmp_path / "tone.raw"
    source.write_bytes(tone(20).tobytes())
    with open(source, "rb") as stdin:
        player = subprocess.Popen(["pacat", "--playback", *pa_raw_args("virt")], stdin=stdin)
    out = tmp_path / "rec.npy"
    try:
        run_sounddevice(RECORD_SCRIPT, str(out), "1.5")
    finally:
        player.kill()
        player.wait(5)
    assert_tone(np.load(out)[RATE // 4 :, 0])


def test_pulse_sounddevice_playback_reaches_monitor(pulse: PulseAudio, tmp_path: Path) -> None:
    """A tone played with sounddevice (default sink) is captured by parec on virt.monitor."""
    source = tmp_path / "tone.npy"
    np.save(source, tone(1.5))
    captured = tmp_path / "captured.raw"
    with open(captured, "wb") as sink:
        recorder = subprocess.Popen(["parec", *pa_raw_args("virt.monitor")], stdout=sink)
        try:
            run_sounddevice(PLAY_SCRIPT, str(source))
        finally:
            stop_recorder(recorder)
    assert_tone(np.frombuffer(captured.read_bytes(), dtype=np.int16))


def test_pulse_second_null_sink(pulse: PulseAudio, tmp_path: Path) -> None:
    """An added null sink carries its own audio to its own monitor."""
    name = f"extra{uuid.uuid4().hex[:6]}"
    pulse.add_null_sink(name)
    assert name in pulse.pactl("list", "short", "sinks")
    captured = tmp_path / "captured.raw"
    with open(captured, "wb") as sink:
        recorder = subprocess.Popen(["parec", *pa_raw_args(f"{name}.monitor")], stdout=sink)
        try:
            subprocess.run(
                ["pacat", "--playback", *pa_raw_args(name)],
                input=tone(1.5).tobytes(),
                check=True,
                timeout=30,
            )
        finally:
            stop_recorder(recorder)
    assert_tone(np.frombuffer(captured.read_bytes(), dtype=np.int16))


# ---------------------------------------------------------------- MariaDB


def test_mariadb_roundtrip(mariadb: MariaDB) -> None:
    """The overdrive user can create, insert and select over TCP; a bad password is refused."""
    import pymysql

    assert mariadb.url == (f"mysql://overdrive:{mariadb.password}@127.0.0.1:{mariadb.port}/overdrive_test")
    conn = pymysql.connect(
        host=mariadb.host,
        port=mariadb.port,
        user=mariadb.user,
        password=mariadb.password,
        database=mariadb.database,
        autocommit=True,
    )
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE files (id INT PRIMARY KEY AUTO_INCREMENT, name TEXT)")
            cur.executemany("INSERT INTO files (name) VALUES (%s)", [("a.mp4",), ("b.mp4",)])
            cur.execute("SELECT name FROM files ORDER BY id")
            assert cur.fetchall() == (("a.mp4",), ("b.mp4",))
            cur.execute("DROP TABLE files")
    finally:
        conn.close()
    with pytest.raises(pymysql.err.OperationalError):
        pymysql.connect(host=mariadb.host, port=mariadb.port, user=mariadb.user, password="wrong").close()


# ---------------------------------------------------------------- Firestore


def test_firestore_write_read_query_transaction_batch(firestore: FirestoreEmulator) -> None:
    """firebase-admin talks to the emulator: set/get, query, transaction and batched write."""
    import firebase_admin
    from firebase_admin import firestore as fs

    assert os.environ["FIRESTORE_EMULATOR_HOST"] == firestore.host_port
    app = firebase_admin.initialize_app(
        emulator_credential(),
        options={"projectId": firestore.project_id},
        name=f"test-{uuid.uuid4().hex}",
    )
    try:
        db = fs.client(app)
        files = db.collection(f"files-{uuid.uuid4().hex[:8]}")
        files.document("a").set({"name": "a.mp4", "size": 10})
        assert files.document("a").get().to_dict() == {"name": "a.mp4", "size": 10}
        assert not files.document("missing").get().exists

        batch = db.batch()
        batch.set(files.document("b"), {"name": "b.mp4", "size": 20})
        batch.set(files.document("c"), {"name": "c.mp4", "size": 30})
        batch.commit()

        big = files.where(filter=fs.FieldFilter("size", ">=", 20)).order_by("size").stream()
        assert [d.id for d in big] == ["b", "c"]

        @fs.transactional
        def grow(tx: fs.Transaction, ref: fs.DocumentReference) -> int:
            snap = ref.get(transaction=tx)
            size = int(snap.get("size")) + 5
            tx.update(ref, {"size": size})
            return size

        assert grow(db.transaction(), files.document("a")) == 15
        assert files.document("a").get().get("size") == 15
    finally:
        firebase_admin.delete_app(app)
