"""A password holder cannot pass another stream off as the lecture: signed stream messages and pinned keys.

In memory (:class:`StreamTrust` and the viewer's receive path on crafted frames), on loopback (a second streamer
with the password on another port; a forger publishing into a relay in the path) and as real subprocesses
(``view --pin``, ``[view] pin`` in the config file, the fingerprint in the streamer's ready line).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.ready import parse_ready
from overdrive.bus.signing import Signer
from overdrive.errors import ConfigError
from overdrive.media.protocol import AudioChunk, StreamInfo, StreamMessage, VideoFrame
from overdrive.media.streamer import Streamer
from overdrive.media.trust import Decision, StreamTrust, Verdict, sealed
from overdrive.media.viewer import Viewer, ViewerConfig
from tests.services import free_port
from tests.test_stream_cli import finish, spawn
from tests.test_stream_live import encoded_pattern, pattern_config, start_viewer, wait_until

LECTURER = Signer.from_seed(bytes(range(32)))
STUDENT = Signer.from_seed(bytes(range(1, 33)))


def lecture(
    signer: Signer, stream_id: str = "lecture", started_ns: int = 1000, n: int = 8
) -> tuple[list[list[Any]], StreamInfo, list[tuple[VideoFrame, bytes]]]:
    """A short signed stream: its info, then ``n`` H.264 frames and an audio chunk after each."""
    video, frames = encoded_pattern(n)
    frames = [(msgspec.structs.replace(f, stream_id=stream_id), d) for f, d in frames]
    info = StreamInfo(
        stream_id=stream_id,
        name="lecture",
        started_ns=started_ns,
        sent_ns=started_ns,
        video=video,
        signer=signer.public,
    )
    messages: list[list[Any]] = [sealed(signer, info)]
    for i, (frame, data) in enumerate(frames):
        messages.append(sealed(signer, frame, data))
        chunk = AudioChunk(stream_id=stream_id, track=0, seq=i + 1, pts_ns=frame.pts_ns, samples=960)
        messages.append(sealed(signer, chunk, b"\x00" * 64))
    return messages, info, frames


class Seen:
    """What reaches a viewer's hooks: every message (what a recording gets) and every decoded picture."""

    def __init__(self, viewer: Viewer) -> None:
        self.messages: list[tuple[StreamMessage, bytes]] = []
        self.pictures: list[tuple[int, np.ndarray]] = []
        viewer.add_listener(lambda m, p: self.messages.append((m, p)))
        viewer.add_picture_listener(lambda img, f: self.pictures.append((f.seq, img)))


def feed(viewer: Viewer, messages: list[list[Any]]) -> None:
    for message in messages:  # one batch each: every frame is decoded, none skipped as "not the newest"
        viewer.process([message])


# -- the policy, in memory ------------------------------------------------------------------------------------


def test_unpinned_viewer_trusts_the_first_key_and_says_its_fingerprint() -> None:
    trust = StreamTrust()
    (info_frames, *rest), info, _ = lecture(LECTURER)
    assert trust.check(rest[0]) is Verdict.UNVERIFIED  # a frame before any info
    decision = trust.offer(info, info_frames, trust.check(info_frames))
    assert decision.verdict is Verdict.TRUSTED
    assert decision.notice is not None
    assert LECTURER.fingerprint in decision.notice and f"--pin {LECTURER.fingerprint}" in decision.notice
    assert trust.fingerprint == LECTURER.fingerprint
    assert all(trust.check(m) is Verdict.TRUSTED for m in rest)
    assert trust.offer(info, info_frames, trust.check(info_frames)) == Decision(Verdict.TRUSTED)  # said once


def test_pinned_viewer_refuses_another_key_once_and_keeps_waiting() -> None:
    trust = StreamTrust(pin=LECTURER.fingerprint.replace("-", "").upper())  # typed without dashes: still the pin
    (student_info, *_), s_info, _ = lecture(STUDENT, "student")
    first = trust.offer(s_info, student_info, trust.check(student_info))
    assert first.verdict is Verdict.FORGED
    assert first.notice is not None and STUDENT.fingerprint in first.notice and LECTURER.fingerprint in first.notice
    assert trust.offer(s_info, student_info, trust.check(student_info)) == Decision(Verdict.FORGED)  # said once
    assert trust.key is None
    (real_info, *_), info, _ = lecture(LECTURER)
    assert trust.offer(info, real_info, trust.check(real_info)).verdict is Verdict.TRUSTED
    assert trust.fingerprint == LECTURER.fingerprint


def test_bad_pin_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="fingerprint"):
        ViewerConfig(host="127.0.0.1", headless=True, pin="3f2a-9c1b")


def test_signature_binds_every_frame() -> None:
    trust = StreamTrust()
    (info_frames, video, *_), info, _ = lecture(LECTURER)
    trust.offer(info, info_frames, trust.check(info_frames))
    topic, header, payload, signature = video
    tampered = [
        [topic, header, payload[:-1] + b"\x00", signature],  # payload changed
        [topic, header + b"", payload, signature[:-1] + bytes([signature[-1] ^ 1])],  # signature changed
        [b"a", header, payload, signature],  # topic changed
        [topic, header + payload, b"", signature],  # frames re-split
        [topic, header, payload],  # no signature
        [topic, header, payload, b""],
    ]
    assert [trust.check(m) for m in tampered] == [Verdict.FORGED] * len(tampered)


# -- the receive path, in memory --------------------------------------------------------------------------


def test_forged_replayed_and_switched_messages_are_dropped_and_counted(network) -> None:
    honest, _, frames = lecture(LECTURER, "lecture", started_ns=5000)
    forger = Signer.generate()
    old, _, _ = lecture(LECTURER, "yesterday", started_ns=10)  # the lecturer's own older stream, replayed
    other, _, _ = lecture(STUDENT, "student", started_ns=9000)  # another stream, validly signed by its streamer
    switched, _, _ = lecture(forger, "lecture", started_ns=6000)  # a new key claiming to be the lecture
    later = msgspec.structs.replace(frames[0][0], seq=frames[-1][0].seq + 1)
    garbage = b"\x00\x00\x01\x65" + b"\xff" * 300
    attacks: list[list[Any]] = [
        sealed(forger, later, garbage),  # a valid header signed by the wrong key
        [b"v", *sealed(LECTURER, later, garbage)[1:3], bytes(64)],  # the right header, a wrong signature
        sealed(LECTURER, later, garbage)[:3],  # no signature
        [*sealed(LECTURER, later, garbage)[:3], sealed(LECTURER, later, b"y")[3]],  # another message's signature
        *old,
        *other,
        *switched,
    ]
    forged_count = 4 + len(other) + len(switched)
    replayed_count = 1  # the older stream's info; its frames never match the current stream_id
    clean = Viewer(ViewerConfig(host="127.0.0.1:1", headless=True), network.bus())
    attacked = Viewer(ViewerConfig(host="127.0.0.1:1", headless=True), network.bus())
    try:
        want, got = Seen(clean), Seen(attacked)
        feed(clean, honest)
        # the honest info first, then every attack after each honest message
        feed(attacked, honest[:1])
        for message in honest[1:]:
            feed(attacked, [message])
            feed(attacked, attacks)
        assert attacked.stats.forged == forged_count * (len(honest) - 1)
        assert attacked.stats.replayed == replayed_count * (len(honest) - 1)
        assert attacked.stats.malformed == 0 and attacked.stats.decode_errors == 0
        assert attacked.join.gaps == 0 and attacked.join.resets == 1
        assert attacked.trust.fingerprint == attacked.stats_dict()["signer"] == LECTURER.fingerprint
        assert attacked.stats_dict()["forged"] == attacked.stats.forged
        # what is recorded and shown is exactly the honest stream
        assert [(m, p) for m, p in got.messages if not isinstance(m, StreamInfo)] == [
            (m, p) for m, p in want.messages if not isinstance(m, StreamInfo)
        ]
        assert {m.stream_id for m, _ in got.messages} == {"lecture"}
        assert len(want.pictures) == len(frames)
        assert [s for s, _ in got.pictures] == [s for s, _ in want.pictures]
        assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(got.pictures, want.pictures, strict=True))
    finally:
        clean.stop()
        attacked.stop()


def test_signed_messages_sent_again_are_not_played_or_recorded_twice(network) -> None:
    honest, _, frames = lecture(LECTURER)
    viewer = Viewer(ViewerConfig(host="127.0.0.1:1", headless=True), network.bus())
    try:
        seen = Seen(viewer)
        feed(viewer, honest)
        before = (list(seen.messages), len(seen.pictures))
        feed(viewer, honest[1:])  # a password holder in the path sends the lecturer's own messages again
        assert (seen.messages, len(seen.pictures)) == before
        assert viewer.stats.replayed == len(frames)  # one audio chunk per frame
        assert viewer.join.drops["stale_seq"] == len(frames)
        assert viewer.stats.forged == 0
    finally:
        viewer.stop()


def test_nothing_counts_before_a_trusted_info(network) -> None:
    honest, _, _ = lecture(LECTURER)
    viewer = Viewer(ViewerConfig(host="127.0.0.1:1", headless=True), network.bus())
    try:
        seen = Seen(viewer)
        feed(viewer, honest[1:])  # frames and audio, never an info
        unsigned_info = honest[0][:2]
        feed(viewer, [unsigned_info, [*honest[0][:2], bytes(64)]])
        assert seen.messages == [] and seen.pictures == []
        assert viewer.stats.unverified == len(honest) - 1
        assert viewer.stats.forged == 2
        assert viewer.trust.key is None and viewer.join.info is None
    finally:
        viewer.stop()


# -- on loopback -------------------------------------------------------------------------------------------


def test_pinned_viewer_refuses_a_second_streamer_with_the_password(network, viewers, caplog) -> None:
    caplog.set_level(logging.WARNING, logger="overdrive")
    with (
        Streamer(pattern_config(), network.bus()) as lecturer,
        Streamer(pattern_config(name="lecture"), network.bus()) as student,
    ):
        real = lecturer.start()
        fake = student.start()
        assert lecturer.signer.fingerprint != student.signer.fingerprint
        viewer, pictures = start_viewer(network.bus(), fake, viewers, pin=lecturer.signer.fingerprint)
        recorded: list[StreamMessage] = []
        viewer.add_listener(lambda m, _: recorded.append(m))
        wait_until(lambda: viewer.stats.forged >= 3, 20, "three of the student's infos refused")
        assert pictures.count() == 0 and recorded == [] and viewer.stats.frames_accepted == 0
        assert viewer.stats.unverified > 0  # the student's frames, dropped unread
        refusals = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(refusals) == 1, refusals
        assert student.signer.fingerprint in refusals[0] and "pinned" in refusals[0]
        # the same pin, pointed at the lecturer: it plays
        _, good = start_viewer(network.bus(), real, viewers, pin=lecturer.signer.fingerprint)
        wait_until(lambda: good.count() >= 5, 20, "pictures from the pinned lecturer")


@pytest.fixture
def viewers() -> Iterator[list[Viewer]]:
    started: list[Viewer] = []
    yield started
    for viewer in started:
        viewer.stop()


class Relay:
    """An XSUB/XPUB relay in the path (as a password holder could run one), forwarding every frame unchanged."""

    def __init__(self, network: Any, upstreams: list[Endpoint]) -> None:
        bus = network.bus()
        self.xsub = bus.client(zmq.XSUB)
        for upstream in upstreams:
            bus.connect(self.xsub, upstream)
        self.xpub = bus.server(zmq.XPUB)
        self.endpoint = bus.bind(self.xpub, Endpoint("127.0.0.1", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-relay")
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.xsub, zmq.POLLIN)
        poller.register(self.xpub, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                other = self.xpub if sock is self.xsub else self.xsub
                other.send_multipart(sock.recv_multipart())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.xsub.close(linger=0)
        self.xpub.close(linger=0)


@pytest.fixture
def forger(network) -> Iterator[tuple[zmq.Socket, Endpoint]]:  # type: ignore[type-arg]
    bus = network.bus()
    pub = bus.server(zmq.PUB)
    endpoint = bus.bind(pub, Endpoint("127.0.0.1", 0))
    yield pub, endpoint
    pub.close(linger=0)


def test_frames_injected_in_the_path_are_dropped_and_the_lecture_plays(network, viewers, forger) -> None:
    pub, forger_at = forger
    with Streamer(pattern_config(), network.bus()) as streamer:
        relay = Relay(network, [streamer.start(), forger_at])
        try:
            viewer, pictures = start_viewer(network.bus(), relay.endpoint, viewers)
            wait_until(lambda: pictures.count() >= 3, 20, "pictures through the relay")
            impostor = Signer.generate()
            video, frames = encoded_pattern(2)
            n = 0
            while viewer.stats.forged < 60:  # until the relay has subscribed to the forger, then a while more
                n += 1
                fake = VideoFrame(
                    stream_id=streamer.stream_id, seq=10**6 + n, pts_ns=frames[0][0].pts_ns, keyframe=True, codec="h264"
                )
                honest_looking = sealed(streamer.signer, fake, frames[0][1])
                pub.send_multipart(sealed(impostor, fake, frames[0][1]))  # signed by another key
                pub.send_multipart(honest_looking[:3])  # unsigned
                pub.send_multipart([*honest_looking[:3], bytes(64)])  # signature of zeros
                info = StreamInfo(
                    stream_id="impostor",
                    name="lecture",
                    started_ns=2 * streamer.started_ns,
                    sent_ns=1,
                    video=video,
                    signer=impostor.public,
                )
                pub.send_multipart(sealed(impostor, info))  # a key switch, mid-session
                time.sleep(0.02)
                if n > 2000:
                    pytest.fail(f"forged messages never reached the viewer: {viewer.stats_dict()}")
            shown = pictures.count()
            wait_until(lambda: pictures.count() >= shown + 10, 20, "more pictures after the forgeries")
            assert viewer.stats.decode_errors == 0 and viewer.join.gaps == 0 and viewer.join.resets == 1
            assert viewer.trust.fingerprint == streamer.signer.fingerprint
            assert {f.stream_id for _, f, _ in pictures.snapshot()} == {streamer.stream_id}
            assert all(f.seq < 10**6 for _, f, _ in pictures.snapshot())
        finally:
            relay.close()


# -- as a user runs it ---------------------------------------------------------------------------------------


def test_cli_pin_refuses_the_wrong_streamer_in_one_line(network, tmp_path: Path) -> None:
    lecturer_env = network.env(tmp_path / "lecturer")
    student_env = network.env(tmp_path / "student")
    viewer_env = network.env(tmp_path / "viewer")
    lecturer_port, student_port = free_ports(2)
    base = ["stream", "--source", "testpattern", "--scale", "320x180", "--duration", "60"]
    lecturer = spawn([*base, "--bind", f"tcp://127.0.0.1:{lecturer_port}"], lecturer_env, tmp_path)
    student = spawn([*base, "--bind", f"tcp://127.0.0.1:{student_port}"], student_env, tmp_path)
    try:
        key = ready_key(lecturer, lecturer_port)
        assert key != ready_key(student, student_port)
        # --pin on the command line, then `pin` in the [view] table of the config file
        (tmp_path / "viewer" / "config").mkdir(parents=True)
        for how, extra in (("option", ["--pin", key]), ("config", [])):
            if how == "config":
                (tmp_path / "viewer" / "config" / "config.toml").write_text(f'[view]\npin = "{key}"\n')
            stats = tmp_path / f"{how}.json"
            args = ["view", f"127.0.0.1:{student_port}", "--headless", "--duration", "3", "--stats-json", str(stats)]
            code, err = finish(spawn([*args, *extra], viewer_env, tmp_path))
            assert code == 0, err
            data = json.loads(stats.read_text())
            assert data["frames_shown"] == 0 and data["frames_accepted"] == 0 and data["forged"] >= 1, data
            assert data["signer"] is None
            warnings = [line for line in err.splitlines() if " WARNING " in line]
            assert len(warnings) == 1 and "refusing" in warnings[0] and key in warnings[0], err
        # the same pin (from the config file) at the lecturer: it plays
        stats = tmp_path / "lecturer.json"
        args = ["view", f"127.0.0.1:{lecturer_port}", "--headless", "--duration", "3", "--stats-json", str(stats)]
        code, err = finish(spawn(args, viewer_env, tmp_path))
        assert code == 0, err
        data = json.loads(stats.read_text())
        assert data["frames_shown"] > 0 and data["forged"] == 0 and data["signer"] == key, data
        assert " WARNING " not in err, err
    finally:
        for proc in (lecturer, student):
            proc.terminate()
            finish(proc)


def test_cli_unpinned_viewer_names_the_key_to_compare(network, tmp_path: Path) -> None:
    env = network.env(tmp_path / "home")
    (port,) = free_ports(1)
    streamer = spawn(
        [
            "stream",
            "--source",
            "testpattern",
            "--scale",
            "320x180",
            "--bind",
            f"tcp://127.0.0.1:{port}",
            "--duration",
            "60",
        ],
        network.env(tmp_path / "s"),
        tmp_path,
    )
    try:
        key = ready_key(streamer, port)
        code, err = finish(spawn(["view", f"127.0.0.1:{port}", "--headless", "--duration", "3"], env, tmp_path))
        assert code == 0, err
        hints = [line for line in err.splitlines() if key in line]
        assert len(hints) == 1 and f"--pin {key}" in hints[0] and "lecturer" in hints[0], err
        assert "forged 0" in err
    finally:
        streamer.terminate()
        finish(streamer)


def free_ports(n: int) -> list[int]:
    ports: set[int] = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)


def ready_key(streamer: Any, port: int) -> str:
    """The fingerprint in a streamer's ready line (``key XXXX-XXXX-XXXX-XXXX`` among the details)."""
    assert streamer.stdout is not None
    line = streamer.stdout.readline()
    ready = parse_ready(line)
    assert ready.endpoint.port == port, line
    (key,) = [d.removeprefix("key ") for d in ready.details if d.startswith("key ")]
    return key
