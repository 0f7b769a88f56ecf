"""Streamer and viewers on real CURVE sockets on loopback: screen capture on Xvfb, late joiners, restarts, junk."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest
import zmq

from overdrive.bus.address import Endpoint
from overdrive.bus.codec import PROTOCOL_VERSION
from overdrive.bus.signing import Signer
from overdrive.bus.sockets import Bus
from overdrive.errors import AuthError, ConfigError
from overdrive.media.codecs.h264 import H264Encoder
from overdrive.media.protocol import CODEC, MAX_VIDEO_FRAME, AudioChunk, StreamInfo, VideoFrame, VideoTrackInfo
from overdrive.media.sources import TestPattern
from overdrive.media.streamer import OUTBOX_LIMIT, Streamer, StreamerConfig
from overdrive.media.trust import seal, sealed
from overdrive.media.viewer import Viewer, ViewerConfig

W, H = 640, 480

# A child process shows a known RGB picture in an undecorated Tk window at (0, 0) of the X display.
WINDOW_SCRIPT = r"""
import sys, tkinter, numpy as np
h, w = int(sys.argv[1]), int(sys.argv[2])
yy, xx = np.mgrid[0:h, 0:w]
img = np.zeros((h, w, 3), np.uint8)
img[..., 0] = xx * 255 // w
img[..., 1] = yy * 255 // h
img[..., 2] = ((xx // 40 + yy // 40) % 2) * 200
root = tkinter.Tk()
root.overrideredirect(True)
root.geometry(f"{w}x{h}+0+0")
photo = tkinter.PhotoImage(data=b"P6 %d %d 255\n" % (w, h) + img.tobytes(), format="PPM")
tkinter.Label(root, image=photo, borderwidth=0, highlightthickness=0).place(x=0, y=0)
root.after(300, lambda: print("ready", flush=True))
root.mainloop()
"""


def known_picture_bgr(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3), np.uint8)
    img[..., 2] = xx * 255 // w
    img[..., 1] = yy * 255 // h
    img[..., 0] = ((xx // 40 + yy // 40) % 2) * 200
    return img


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 99.0 if mse == 0 else 10 * np.log10(255**2 / mse)


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


class Pictures:
    """Collects decoded pictures from a viewer (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, VideoFrame, np.ndarray]] = []

    def __call__(self, image: np.ndarray, frame: VideoFrame) -> None:
        with self.lock:
            self.items.append((time.monotonic(), frame, image))

    def count(self) -> int:
        with self.lock:
            return len(self.items)

    def snapshot(self) -> list[tuple[float, VideoFrame, np.ndarray]]:
        with self.lock:
            return list(self.items)


def pattern_config(**kw: object) -> StreamerConfig:
    base: dict[str, object] = {
        "source": "testpattern",
        "bind": "tcp://127.0.0.1:0",
        "fps": 30.0,
        "pattern_size": (320, 240),
    }
    base.update(kw)
    return StreamerConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def viewers() -> Iterator[list[Viewer]]:
    started: list[Viewer] = []
    yield started
    for v in started:
        v.stop()


def start_viewer(bus: Bus, endpoint: Endpoint, viewers: list[Viewer], **kw: object) -> tuple[Viewer, Pictures]:
    viewer = Viewer(ViewerConfig(host=endpoint.display, headless=True, **kw), bus)  # type: ignore[arg-type]
    pictures = Pictures()
    viewer.add_picture_listener(pictures)
    viewer.start()
    viewers.append(viewer)
    return viewer, pictures


def test_screen_capture_reaches_two_viewers_intact(xvfb: object, network, viewers) -> None:
    window = subprocess.Popen([sys.executable, "-c", WINDOW_SCRIPT, str(H), str(W)], stdout=subprocess.PIPE)
    try:
        assert window.stdout is not None
        assert window.stdout.readline().strip() == b"ready"
        config = StreamerConfig(source="screen", region=f"0,0,{W},{H}", bind="tcp://127.0.0.1:0", fps=15)
        with Streamer(config, network.bus()) as streamer:
            endpoint = streamer.start()
            got = [start_viewer(network.bus(), endpoint, viewers) for _ in range(2)]
            wait_until(lambda: all(p.count() >= 5 for _, p in got), 20, "5 pictures at each viewer")
            expected = known_picture_bgr(H, W)
            for viewer, pictures in got:
                _, frame, image = pictures.snapshot()[-1]
                assert image.shape == (H, W, 3)
                assert psnr(image, expected) > 30, "decoded screen does not match the picture on it"
                assert viewer.stats.decode_errors == 0
                assert frame.stream_id == streamer.stream_id
    finally:
        window.kill()
        window.wait()
        if window.stdout is not None:
            window.stdout.close()


def test_late_joiner_gets_clean_pictures_within_a_keyframe_interval(network, viewers) -> None:
    with Streamer(pattern_config(keyframe_interval=1.0), network.bus()) as streamer:
        endpoint = streamer.start()
        _, early = start_viewer(network.bus(), endpoint, viewers)
        wait_until(lambda: early.count() >= 40, 20, "the early viewer to decode 40 pictures")
        late_viewer = Viewer(ViewerConfig(host=endpoint.display, headless=True), network.bus())
        late = Pictures()
        late_viewer.add_picture_listener(late)
        viewers.append(late_viewer)
        late_viewer.connect()
        joined = time.monotonic()
        late_viewer.start()
        wait_until(lambda: late.count() >= 10, 20, "the late viewer to decode 10 pictures")
        first_at, first_frame, _ = late.snapshot()[0]
        # one keyframe interval (info rides with every keyframe), plus slack for a loaded machine
        assert first_at - joined < 1.0 + 0.75
        assert first_frame.keyframe
        reference = {f.seq: img for _, f, img in early.snapshot()}
        common = [(f.seq, img) for _, f, img in late.snapshot() if f.seq in reference]
        assert common, "no picture seen by both viewers"
        for seq, image in common:  # decoding from the keyframe gives exactly what the early viewer saw
            assert np.array_equal(image, reference[seq]), f"late joiner's picture {seq} differs"
        assert late_viewer.stats.decode_errors == 0


def test_wrong_password_is_refused_quickly(network) -> None:
    with Streamer(pattern_config(), network.bus()) as streamer:
        endpoint = streamer.start()
        viewer = Viewer(ViewerConfig(host=endpoint.display, headless=True), network.bus(password="not it"))
        started = time.monotonic()
        with pytest.raises(AuthError, match=f"authentication failed for {endpoint.display}"):
            viewer.connect()
        assert time.monotonic() - started < 3.5
        viewer.stop()


def test_viewer_recovers_when_the_streamer_restarts(network, viewers) -> None:
    first = Streamer(pattern_config(), network.bus())
    endpoint = first.start()
    try:
        viewer, pictures = start_viewer(network.bus(), endpoint, viewers)
        wait_until(lambda: pictures.count() >= 10, 20, "pictures from the first streamer")
    finally:
        first.stop()
    # the same machine again: the same node identity, so the same signing key (a new one would be refused)
    second = Streamer(pattern_config(bind=f"tcp://127.0.0.1:{endpoint.port}"), network.bus(), signer=first.signer)
    deadline = time.monotonic() + 10
    while True:
        try:
            second.start()
            break
        except ConfigError:  # the old socket's port may take a moment to free
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    try:
        wait_until(
            lambda: sum(f.stream_id == second.stream_id for _, f, _ in pictures.snapshot()) >= 10,
            20,
            "pictures from the restarted streamer",
        )
        assert viewer.join.resets == 2
        assert viewer.stats.decode_errors == 0
    finally:
        second.stop()


def encoded_pattern(n: int) -> tuple[VideoTrackInfo, list[tuple[VideoFrame, bytes]]]:
    pattern = TestPattern(160, 120, started_ns=10**18)
    enc = H264Encoder(160, 120, 30)
    out = []
    for i in range(n):
        pts = pattern.started_ns + i * 33_333_333
        for p in enc.encode(pattern.grab(pts, i), pts):
            out.append(
                (VideoFrame(stream_id="rogue", seq=i + 1, pts_ns=p.pts_ns, keyframe=p.keyframe, codec="h264"), p.data)
            )
    return VideoTrackInfo(codec="h264", width=160, height=120, fps=30, extradata=enc.extradata), out


def test_malformed_and_oversized_messages_are_dropped_and_counted(network, viewers) -> None:
    """A streamer of its own (it knows the password) signs junk between valid frames; the viewer survives."""
    rogue = Signer.generate()
    bus = network.bus()
    pub = bus.server(zmq.PUB)
    try:
        endpoint = bus.bind(pub, Endpoint("127.0.0.1", 0))
        viewer, pictures = start_viewer(network.bus(), endpoint, viewers)
        video, frames = encoded_pattern(6)
        info = StreamInfo(stream_id="rogue", name="rogue", started_ns=1, sent_ns=1, video=video, signer=rogue.public)
        while viewer.stats.infos == 0:  # until the subscription has reached the publisher
            pub.send_multipart(sealed(rogue, info))
            time.sleep(0.05)
        wait_until(lambda: viewer.stats.infos > 0, 10, "info to arrive")
        key_header, key_data = frames[0]
        vf_header = CODEC.encode(key_header, b"")[0]
        body = msgspec.msgpack.decode(vf_header)[1]
        junk = [
            [b"v"],  # topic only
            [b"v", b"\x93\xffgarbage", b"x"],  # not msgpack
            [b"vx", vf_header, key_data],  # unknown topic (prefix of a subscribed one)
            [b"i", vf_header, key_data],  # a video frame on the info topic
            [b"v", vf_header],  # missing payload
            [b"v", vf_header, b"\x00" * (MAX_VIDEO_FRAME + 1)],  # oversized payload
            [b"v", msgspec.msgpack.encode([PROTOCOL_VERSION + 1, body]), key_data],  # future protocol
            [b"v", msgspec.msgpack.encode([PROTOCOL_VERSION, {**body, "seq": -5}]), key_data],  # invalid field
        ]
        for message in junk:
            pub.send_multipart(message if len(message) < 2 else seal(rogue, message))
        for header, data in frames[:3]:
            pub.send_multipart(sealed(rogue, header, data))
        wait_until(lambda: pictures.count() >= 1, 10, "pictures after the junk")
        # a valid header whose keyframe bytes are garbage: a decode error, then recovery at the next keyframe
        bad = VideoFrame(stream_id="rogue", seq=10, pts_ns=frames[2][0].pts_ns, keyframe=True, codec="h264")
        pub.send_multipart(sealed(rogue, bad, b"\x00\x00\x01\x65" + b"\xff" * 500))
        wait_until(lambda: viewer.stats.decode_errors >= 1, 10, "the bad keyframe")
        for i, (header, data) in enumerate(frames):
            again = VideoFrame(
                stream_id="rogue", seq=11 + i, pts_ns=header.pts_ns, keyframe=header.keyframe, codec="h264"
            )
            pub.send_multipart(sealed(rogue, again, data))
        wait_until(lambda: viewer.stats.frames_accepted >= 10, 10, "the valid frames after the bad one")
        wait_until(lambda: any(f.seq == 16 for _, f, _ in pictures.snapshot()), 10, "the last picture")
        assert viewer.stats.malformed == len(junk)
        assert viewer.stats.decode_errors == 1
        assert viewer.running
        seqs = [f.seq for _, f, _ in pictures.snapshot()]
        assert 10 not in seqs and seqs[-1] == 16 and set(seqs) >= {3, 11, 12, 13, 14, 15}
    finally:
        pub.close(linger=0)


def test_receive_path_on_crafted_frames_without_a_socket(network) -> None:
    viewer = Viewer(ViewerConfig(host="127.0.0.1:1", headless=True), network.bus())
    video, frames = encoded_pattern(3)
    signer = Signer.generate()
    info = StreamInfo(stream_id="rogue", name="x", started_ns=1, sent_ns=1, video=video, signer=signer.public)
    batch = [sealed(signer, info)] + [sealed(signer, h, d) for h, d in frames]
    batch.insert(2, seal(signer, [b"v", b"junk", b""]))
    picture = viewer.process(batch)
    assert picture is not None and picture.shape == (120, 160, 3)
    assert viewer.stats.malformed == 1
    assert viewer.stats.frames_decoded == 3
    assert viewer.stats.frames_shown == 1  # only the newest picture of a batch is shown
    viewer.stop()


def solid_clip(path: Path, bgr: tuple[int, int, int], frames: int = 12, size: tuple[int, int] = (64, 48)) -> Path:
    """A short H.264 clip of one colour: a stand-in webcam (OpenCV opens files and cameras alike)."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        picture = np.zeros((size[1], size[0], 3), np.uint8)
        picture[:] = bgr
        for _ in range(frames):
            out.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="bgr24")))
        out.mux(stream.encode(None))
    return path


def test_webcam_picture_in_picture_reaches_the_viewer(network, viewers, tmp_path: Path) -> None:
    clip = solid_clip(tmp_path / "cam.mp4", (0, 0, 255))  # pure red
    with Streamer(pattern_config(pip=f"webcam:{clip}"), network.bus()) as streamer:
        endpoint = streamer.start()
        _, pictures = start_viewer(network.bus(), endpoint, viewers)
        wait_until(lambda: pictures.count() >= 15, 20, "15 pictures")
        _, _, image = pictures.snapshot()[-1]
    h, w = image.shape[:2]
    inset_w, inset_h = w // 4, 48 * (w // 4) // 64  # a quarter of the width, the clip's aspect, 8 px from the edge
    inset = image[h - 8 - inset_h + 4 : h - 8 - 4, w - 8 - inset_w + 4 : w - 8 - 4].reshape(-1, 3).mean(axis=0)
    assert inset[2] > 200 and inset[0] < 60 and inset[1] < 60, f"no red inset at the bottom right: BGR {inset}"
    corner = image[: h // 3, : w // 3].reshape(-1, 3).mean(axis=0)
    assert not (corner[2] > 200 and corner[0] < 60 and corner[1] < 60), "the inset covers the whole picture"


def test_a_stalled_loop_keeps_only_the_newest_producer_messages(network) -> None:
    # messages emitted while the loop does not run (here: before it starts) stand for a loop stalled by a slow encode
    streamer = Streamer(pattern_config(), network.bus())
    seen: list[int] = []
    streamer.add_listener(lambda m, _: seen.append(m.seq) if isinstance(m, AudioChunk) else None)
    extra = 25
    for seq in range(1, OUTBOX_LIMIT + extra + 1):
        chunk = AudioChunk(stream_id=streamer.stream_id, track=0, seq=seq, pts_ns=seq * 20_000_000, samples=960)
        streamer.emit(chunk, b"\0" * 8)
    with streamer:
        streamer.start()
        deadline = time.monotonic() + 10
        while len(seen) < OUTBOX_LIMIT and time.monotonic() < deadline:
            time.sleep(0.05)
    assert seen == list(range(extra + 1, OUTBOX_LIMIT + extra + 1))  # the oldest went, in order
    assert streamer.stats.other_dropped == extra
