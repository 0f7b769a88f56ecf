"""The streamer: capture, encode and publish a stream on a CURVE-secured PUB socket.

:class:`Streamer` binds a PUB (small high-water mark: a slow viewer loses frames at the publisher instead of
slowing anyone), then loops: take the newest captured picture, encode it, send ``[topic, header, payload]`` with
the payload zero-copy; repeat :class:`~overdrive.media.protocol.StreamInfo` every second. It keeps no per-viewer
state, so a relay (XSUB/XPUB proxy) can re-publish the stream unchanged.

Hooks for audio and recording (no change to this module needed):

* **Extra publishable sources** — ``Streamer.add_producer(producer)``. A producer has ``start(emit)`` and
  ``stop()``; it calls ``emit(message, payload)`` from any thread (e.g. ``AudioChunk`` + Opus bytes) and the
  streamer publishes it on the message's topic (``protocol.TOPICS``) from its own thread. Producers are started
  after the socket is bound (so ``streamer.stream_id`` and ``streamer.started_ns`` are set) and stopped before it
  closes. Audio tracks to announce go in ``StreamerConfig.audio`` (or ``streamer.add_audio_track``) before
  ``start``, so ``StreamInfo.audio`` lists them.
* **Listeners** — ``Streamer.add_listener(callback)``; ``callback(message, payload: bytes)`` is called in the
  streamer thread for every message it publishes (StreamInfo, VideoFrame with the encoded bytes, AudioChunk), so a
  local recording sees exactly what viewers got. Keep callbacks fast (hand off to a queue for heavy work).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import zmq

from overdrive.bus.address import DEFAULT_STREAM_PORT, Endpoint, parse_endpoint
from overdrive.bus.sockets import Bus
from overdrive.errors import ConfigError, MediaError
from overdrive.media.encoders import Encoder, Scale, make_encoder
from overdrive.media.protocol import (
    CODEC,
    MAX_VIDEO_FRAME,
    TOPICS,
    AudioTrackInfo,
    StreamInfo,
    StreamMessage,
    VideoFrame,
    VideoTrackInfo,
)
from overdrive.media.sources import CaptureThread, PictureSource, Region, make_source

log = logging.getLogger(__name__)

STREAM_SNDHWM = 60
"""Messages queued per viewer before the PUB drops for that viewer (about 1-2 s of video)."""
INFO_INTERVAL = 1.0

Listener = Callable[[StreamMessage, bytes], None]
Emit = Callable[[StreamMessage, bytes], None]


class Producer(Protocol):
    """An extra source of published messages (e.g. an audio capture)."""

    def start(self, emit: Emit) -> None: ...

    def stop(self) -> None: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamerConfig:
    """Everything a streamer needs; validated on construction."""

    source: str = "screen"
    monitor: int = 1
    region: str | None = None
    pip: str | None = None
    fps: float = 30.0
    scale: str = "1"
    codec: str = "h264"
    bitrate: int = 0
    quality: int = 80
    bind: str = f"tcp://0.0.0.0:{DEFAULT_STREAM_PORT}"
    duration: float | None = None
    name: str = "overdrive"
    keyframe_interval: float = 1.0
    pattern_size: tuple[int, int] = (1280, 720)
    audio: tuple[AudioTrackInfo, ...] = ()
    sndhwm: int = STREAM_SNDHWM
    endpoint: Endpoint = field(init=False)
    scaling: Scale = field(init=False)

    def __post_init__(self) -> None:
        if not 0.5 <= self.fps <= 240:
            raise ConfigError(f"--fps must be 0.5..240, not {self.fps}")
        if self.codec not in ("h264", "jpeg"):
            raise ConfigError(f"--codec must be h264 or jpeg, not {self.codec!r}")
        if self.bitrate < 0:
            raise ConfigError("--bitrate must be >= 0")
        if not 1 <= self.quality <= 100:
            raise ConfigError(f"--quality must be 1..100, not {self.quality}")
        if self.duration is not None and self.duration <= 0:
            raise ConfigError("--duration must be positive")
        if not 1 <= len(self.name) <= 128:
            raise ConfigError("--name must be 1..128 characters")
        if not 0.1 <= self.keyframe_interval <= 10:
            raise ConfigError("keyframe interval must be 0.1..10 s")
        if self.monitor < 0:
            raise ConfigError("--monitor must be >= 0")
        object.__setattr__(self, "endpoint", parse_endpoint(self.bind, DEFAULT_STREAM_PORT))
        object.__setattr__(self, "scaling", Scale.parse(self.scale))


@dataclass
class StreamerStats:
    """Live counters; ``fps`` and ``bitrate`` are over the last few seconds."""

    frames_sent: int = 0
    keyframes_sent: int = 0
    bytes_sent: int = 0
    other_sent: int = 0
    encode_seconds: float = 0.0
    fps: float = 0.0
    bitrate: float = 0.0
    width: int = 0
    height: int = 0
    _window: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=300), repr=False)

    def record(self, now: float, nbytes: int) -> None:
        self._window.append((now, nbytes))
        while self._window and now - self._window[0][0] > 3.0:
            self._window.popleft()
        if len(self._window) > 1:
            span = self._window[-1][0] - self._window[0][0]
            if span > 0:
                self.fps = (len(self._window) - 1) / span
                self.bitrate = sum(n for _, n in list(self._window)[1:]) * 8 / span


class Streamer:
    """Capture → encode → publish. ``start()`` runs it in a thread; ``run()`` runs it in the caller's."""

    def __init__(self, config: StreamerConfig, bus: Bus, source: PictureSource | None = None) -> None:
        self.config = config
        self.bus = bus
        self.stream_id = uuid.uuid4().hex[:16]
        self.started_ns = time.time_ns()
        self.stats = StreamerStats()
        self.endpoint: Endpoint | None = None
        self._source = source
        self._producers: list[Producer] = []
        self._listeners: list[Listener] = []
        self._audio = list(config.audio)
        self._outbox: queue.SimpleQueue[tuple[StreamMessage, bytes]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]

    # -- hooks -----------------------------------------------------------------------------------------------
    def add_producer(self, producer: Producer) -> None:
        self._producers.append(producer)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_audio_track(self, track: AudioTrackInfo) -> None:
        self._audio.append(track)

    def emit(self, message: StreamMessage, payload: bytes = b"") -> None:
        """Queue a message for publishing (thread-safe); used by producers."""
        self._outbox.put((message, payload))
        self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def bind(self) -> Endpoint:
        """Bind the PUB socket (idempotent); returns the bound endpoint (a real port if 0 was asked)."""
        if self._sock is None:
            sock = self.bus.server(zmq.PUB, hwm=self.config.sndhwm, max_message=1 << 16)
            sock.setsockopt(zmq.SNDBUF, 1 << 20)
            try:
                self.endpoint = self.bus.bind(sock, self.config.endpoint)
            except BaseException:
                sock.close(linger=0)
                raise
            self._sock = sock
        assert self.endpoint is not None
        return self.endpoint

    def start(self, timeout: float = 15.0) -> Endpoint:
        """Bind, then stream in a background thread; returns once the first frame is out (or raises)."""
        endpoint = self.bind()
        self._thread = threading.Thread(target=self._thread_main, name="overdrive-streamer", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise MediaError(f"streamer did not start within {timeout:g} s")
        if self._error is not None:
            self.stop()
            raise self._error
        return endpoint

    def request_stop(self) -> None:
        """Ask :meth:`run` to end at its next turn, within 0.1 s (its longest wait). Safe from a signal handler: it
        sets only ``_stop``, which the loop reads but never waits on; ``_wake`` is not touched, because the handler
        can run while the main thread holds that event's lock (in its clear or wait), and would then deadlock."""
        self._stop.set()

    def stop(self) -> None:
        """Stop streaming and close the socket (idempotent)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
            self._thread = None
        self._close_socket()

    def __enter__(self) -> Streamer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _close_socket(self) -> None:
        if self._sock is not None and (self._thread is None or not self._thread.is_alive()):
            self._sock.close(linger=0)
            self._sock = None

    def _thread_main(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of start()
            log.error("streamer stopped: %s", exc)
            self._error = exc
        finally:
            self._ready.set()

    def run(self, status: Callable[[StreamerStats], None] | None = None) -> StreamerStats:
        """Stream until ``stop()``, the duration ends, or the source fails. ``status`` is called about 2x/s."""
        cfg = self.config
        self.bind()
        source = self._source or make_source(
            cfg.source,
            monitor=cfg.monitor,
            region=Region.parse(cfg.region) if cfg.region else None,
            pip=cfg.pip,
            pattern_size=cfg.pattern_size,
            started_ns=self.started_ns,
        )
        capture = CaptureThread(source, cfg.fps, on_new=self._wake)
        capture.start()
        producers: list[Producer] = []
        encoder: Encoder | None = None
        try:
            first = capture.wait_newer(0, 5.0)
            if first is None:
                raise MediaError("the video source gave no picture")
            h, w = first.image.shape[:2]
            size = cfg.scaling.output_size(w, h)
            self.stats.width, self.stats.height = size
            encoder = make_encoder(
                cfg.codec,
                size[0],
                size[1],
                cfg.fps,
                bitrate=cfg.bitrate,
                quality=cfg.quality,
                keyframe_interval=cfg.keyframe_interval,
            )
            for producer in self._producers:
                producer.start(self.emit)
                producers.append(producer)
            self._loop(capture, encoder, size, status)
        finally:
            for producer in reversed(producers):
                producer.stop()
            capture.stop()
            if encoder is not None:
                encoder.close()
            self._ready.set()
            if self._thread is None:
                self._close_socket()
        if capture.error is not None and not self._stop.is_set():
            raise capture.error
        return self.stats

    def _loop(
        self,
        capture: CaptureThread,
        encoder: Encoder,
        size: tuple[int, int],
        status: Callable[[StreamerStats], None] | None,
    ) -> None:
        cfg = self.config
        deadline = time.monotonic() + cfg.duration if cfg.duration else None
        last_index = 0
        seq = 0
        next_info = 0.0
        next_status = time.monotonic() + 0.5
        video_info: VideoTrackInfo | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if capture.error is not None:
                break
            self._wake.clear()
            self._drain_outbox()
            captured = capture.wait_newer(last_index, 0.0)
            if captured is not None:
                last_index = captured.index
                t0 = time.perf_counter()
                packets = encoder.encode(cfg.scaling.apply(captured.image, size), captured.pts_ns)
                self.stats.encode_seconds += time.perf_counter() - t0
                for packet in packets:
                    if len(packet.data) > MAX_VIDEO_FRAME:
                        log.warning("dropping a %d-byte frame (limit %d)", len(packet.data), MAX_VIDEO_FRAME)
                        continue
                    if video_info is None or (encoder.extradata and not video_info.extradata):
                        video_info = VideoTrackInfo(
                            codec=encoder.codec,
                            width=size[0],
                            height=size[1],
                            fps=cfg.fps,
                            extradata=encoder.extradata,
                            bitrate=cfg.bitrate,
                        )
                        next_info = 0.0
                    if now >= next_info or packet.keyframe:  # info with every keyframe: joins take one interval
                        self._send_info(video_info)
                        next_info = now + INFO_INTERVAL
                    seq += 1
                    msg = VideoFrame(
                        stream_id=self.stream_id,
                        seq=seq,
                        pts_ns=packet.pts_ns,
                        keyframe=packet.keyframe,
                        codec=encoder.codec,
                    )
                    self._publish(msg, packet.data)
                    self.stats.frames_sent += 1
                    self.stats.keyframes_sent += packet.keyframe
                    self.stats.bytes_sent += len(packet.data)
                    self.stats.record(time.monotonic(), len(packet.data))
                self._ready.set()
            elif video_info is not None and now >= next_info:
                self._send_info(video_info)
                next_info = now + INFO_INTERVAL
            if status is not None and now >= next_status:
                status(self.stats)
                next_status = now + 0.5
            if captured is None:
                timeout = 0.1 if deadline is None else max(0.0, min(0.1, deadline - time.monotonic()))
                self._wake.wait(timeout)
        self._drain_outbox()

    def _send_info(self, video: VideoTrackInfo) -> None:
        info = StreamInfo(
            stream_id=self.stream_id,
            name=self.config.name,
            started_ns=self.started_ns,
            sent_ns=time.time_ns(),
            video=video,
            audio=tuple(self._audio),
            keyframe_interval=self.config.keyframe_interval,
        )
        self._publish(info, b"")

    def _drain_outbox(self) -> None:
        while True:
            try:
                message, payload = self._outbox.get_nowait()
            except queue.Empty:
                return
            try:
                self._publish(message, payload)
                self.stats.other_sent += 1
            except (ValueError, TypeError) as exc:
                log.warning("producer gave an invalid message: %s", exc)

    def _publish(self, message: StreamMessage, payload: bytes) -> None:
        sock = self._sock
        assert sock is not None
        frames = CODEC.encode(message, payload) if message.payload_frames else CODEC.encode(message)
        topic = TOPICS[type(message)]
        try:
            sock.send(topic, zmq.SNDMORE | zmq.NOBLOCK)
            for i, frame in enumerate(frames):
                last = i == len(frames) - 1
                sock.send(frame, (0 if last else zmq.SNDMORE) | zmq.NOBLOCK, copy=not (last and i > 0))
        except zmq.Again:  # PUB never blocks; kept for safety with exotic socket options
            log.debug("publish would block; dropped")
        for listener in self._listeners:
            try:
                listener(message, payload)
            except Exception:  # a hook must never stop the stream
                log.exception("stream listener failed")
