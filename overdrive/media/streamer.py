"""The streamer: capture, encode and publish a stream on a CURVE-secured PUB socket.

:class:`Streamer` binds a PUB (small high-water mark: a slow viewer loses frames at the publisher instead of
slowing anyone), then loops: take the newest captured picture, encode it, send ``[topic, header, payload]`` with
the payload zero-copy; repeat :class:`~overdrive.media.protocol.StreamInfo` every second. It keeps no per-viewer
state, so a relay (XSUB/XPUB proxy) can re-publish the stream unchanged. Every message carries a signature by
``streamer.signer`` (:mod:`overdrive.media.trust`), derived from the node identity so a restart keeps the key and
viewers' pins; ``streamer.signer.fingerprint`` is what the lecturer shows the class.

It is a :class:`~overdrive.bus.service.Worker`: ``start()`` returns once the first frame is out, ``run()`` streams
in the caller's thread (the CLI's), ``request_stop()`` ends that from a signal handler.

Hooks for audio and recording (:mod:`overdrive.media.hooks`; no change to this module needed):

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
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from overdrive.bus.address import DEFAULT_STREAM_PORT, Endpoint, parse_endpoint
from overdrive.bus.service import STOP_TIMEOUT, Worker
from overdrive.bus.signing import Signer
from overdrive.bus.sockets import Bus
from overdrive.errors import ConfigError, MediaError
from overdrive.media.codecs import make_encoder
from overdrive.media.codecs.base import Encoder
from overdrive.media.hooks import Listener, Producer
from overdrive.media.protocol import (
    MAX_VIDEO_FRAME,
    TOPICS,
    AudioTrackInfo,
    StreamEnd,
    StreamInfo,
    StreamMessage,
    VideoFrame,
    VideoTrackInfo,
)
from overdrive.media.sources import CaptureThread, PictureSource, Region, Scale, make_source
from overdrive.media.trust import sealed

log = logging.getLogger(__name__)

STREAM_SNDHWM = 60
"""Messages queued per viewer before the PUB drops for that viewer (about 1-2 s of video)."""
INFO_INTERVAL = 1.0
SUBSCRIBABLE = frozenset(topic[:n] for topic in TOPICS.values() for n in range(len(topic) + 1))
"""The only subscription prefixes the streamer applies: its topics and the empty prefix (everything). libzmq keeps
every distinct prefix a peer subscribes to until that peer leaves, so a password holder could otherwise grow the
streamer by ~16 KB per subscription message (50 MB for 3,000)."""
MAX_SUBSCRIPTION = 4096
"""Bytes of one message from a viewer (a subscription, or a CURVE handshake command); a peer sending a longer one
is disconnected by libzmq."""
SUBSCRIPTION_HWM = 100
"""Subscription messages libzmq queues for the streamer to vet."""
END_LINGER_MS = 500
"""How long closing waits for the :class:`StreamEnd` to reach connected viewers."""
OUTBOX_LIMIT = 200
"""Producers' messages (audio chunks, 20 ms each) waiting for the streaming loop: about 2 s of two tracks. The
loop drains them every frame; they pile up only while it stalls (a slow encode), and by then the oldest are too
late to be played live, so a full outbox drops its oldest. Video, stream info and the stream's end never pass
through it: the loop publishes those itself."""


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
    other_dropped: int = 0
    """Producers' messages dropped, oldest first, because the loop fell :data:`OUTBOX_LIMIT` behind."""
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


class Streamer(Worker):
    """Capture → encode → publish. ``start()`` runs it in a thread; ``run()`` runs it in the caller's."""

    name = "overdrive-streamer"
    error_type = MediaError
    ready_on_setup = False  # ready once the first frame is out

    def __init__(
        self, config: StreamerConfig, bus: Bus, source: PictureSource | None = None, signer: Signer | None = None
    ) -> None:
        super().__init__()
        self.config = config
        self.bus = bus
        self.signer = signer or Signer.for_identity(bus.security.identity)  # same identity, same key: pins last
        self.stream_id = uuid.uuid4().hex[:16]
        self.started_ns = time.time_ns()
        self.stats = StreamerStats()
        self.endpoint: Endpoint | None = None
        self.chat_port = 0
        """Announced in StreamInfo (set by :func:`~overdrive.media.chat_server.attach_chat` before start)."""
        self._source = source
        self._producers: list[Producer] = []
        self._listeners: list[Listener] = []
        self._audio = list(config.audio)
        self._outbox: deque[tuple[StreamMessage, bytes]] = deque()
        self._outbox_lock = threading.Lock()  # producers' threads append, the loop takes
        self._wake = threading.Event()
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]
        self._status: Callable[[StreamerStats], None] | None = None
        self._capture: CaptureThread | None = None
        self._encoder: Encoder | None = None
        self._size = (0, 0)
        self._running_producers: list[Producer] = []

    # -- hooks -----------------------------------------------------------------------------------------------
    def add_producer(self, producer: Producer) -> None:
        self._producers.append(producer)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_audio_track(self, track: AudioTrackInfo) -> None:
        self._audio.append(track)

    def emit(self, message: StreamMessage, payload: bytes = b"") -> None:
        """Queue a message for publishing (thread-safe); used by producers. Past :data:`OUTBOX_LIMIT` waiting,
        the oldest is dropped."""
        with self._outbox_lock:
            if len(self._outbox) >= OUTBOX_LIMIT:
                self._outbox.popleft()
                self.stats.other_dropped += 1
            self._outbox.append((message, payload))
        self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------------------------
    def bind(self) -> Endpoint:
        """Bind the PUB socket (idempotent); returns the bound endpoint (a real port if 0 was asked)."""
        if self._sock is None:
            sock = self.bus.server(zmq.XPUB, hwm=self.config.sndhwm, max_message=MAX_SUBSCRIPTION)
            sock.setsockopt(zmq.SNDBUF, 1 << 20)
            sock.setsockopt(zmq.XPUB_MANUAL, 1)  # subscriptions are vetted by _admit_subscriptions
            sock.rcvhwm = SUBSCRIPTION_HWM
            try:
                self.endpoint = self.bus.bind(sock, self.config.endpoint)
            except BaseException:
                sock.close(linger=0)
                raise
            self._sock = sock
        assert self.endpoint is not None
        return self.endpoint

    def start(self, timeout: float = 15.0) -> Endpoint:  # type: ignore[override]
        """Bind, then stream in a background thread; returns once the first frame is out (or raises)."""
        endpoint = self.bind()
        super().start(timeout)
        return endpoint

    def run(self, status: Callable[[StreamerStats], None] | None = None) -> StreamerStats:
        """Stream until ``stop()``, the duration ends, or the source fails. ``status`` is called about 2x/s.

        ``request_stop()`` ends it from a signal handler: the loop waits on its own wake event, never on
        ``stopping``, so setting that is safe while this thread holds any lock."""
        self._status = status
        self.serve()
        return self.stats

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop streaming and close the socket (idempotent)."""
        super().stop(timeout)
        self._close_socket()

    def wake(self) -> None:
        self._wake.set()

    def __enter__(self) -> Streamer:  # start() is explicit: it returns the endpoint
        return self

    def _close_socket(self) -> None:
        if not self.running:  # else the loop's thread owns it and closes it in teardown
            self._close_socket_here()

    # -- the worker --------------------------------------------------------------------------------------------
    def setup(self) -> None:
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
        capture = self._capture = CaptureThread(source, cfg.fps, on_new=self._wake)
        capture.start()
        first = capture.wait_newer(0, 5.0)
        if first is None:
            raise MediaError("the video source gave no picture")
        h, w = first.image.shape[:2]
        self._size = cfg.scaling.output_size(w, h)
        self.stats.width, self.stats.height = self._size
        self._encoder = make_encoder(
            cfg.codec,
            self._size[0],
            self._size[1],
            cfg.fps,
            bitrate=cfg.bitrate,
            quality=cfg.quality,
            keyframe_interval=cfg.keyframe_interval,
        )
        for producer in self._producers:
            producer.start(self.emit)
            self._running_producers.append(producer)

    def loop(self) -> None:
        capture, encoder = self._capture, self._encoder
        assert capture is not None and encoder is not None
        self._loop(capture, encoder, self._size, self._status)
        if capture.error is not None and not self.stopping.is_set():
            raise capture.error

    def teardown(self) -> None:
        for producer in reversed(self._running_producers):
            producer.stop()
        self._running_producers.clear()
        if self._capture is not None:
            self._capture.stop()
        if self._encoder is not None:
            self._encoder.close()
        linger = 0
        if self._sock is not None and self.stats.frames_sent:
            self._publish(StreamEnd(stream_id=self.stream_id, sent_ns=time.time_ns()), b"")
            linger = END_LINGER_MS
        self._close_socket_here(linger)

    def _close_socket_here(self, linger: int = 0) -> None:
        """The loop's thread owns the socket once it runs; it closes it on the way out."""
        if self._sock is not None:
            self._sock.close(linger=linger)
            self._sock = None

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
        while not self.stopping.is_set():
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if capture.error is not None:
                break
            self._wake.clear()
            self._admit_subscriptions()
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
                self.mark_ready()
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
            signer=self.signer.public,
            chat_port=self.chat_port,
        )
        self._publish(info, b"")

    def _admit_subscriptions(self) -> None:
        """Apply the (un)subscriptions viewers sent to one of our topics; drop every other prefix unapplied."""
        sock = self._sock
        assert sock is not None
        for _ in range(SUBSCRIPTION_HWM):
            try:
                event = sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if event[:1] in (b"\x00", b"\x01") and event[1:] in SUBSCRIBABLE:
                sock.setsockopt(zmq.SUBSCRIBE if event[0] else zmq.UNSUBSCRIBE, event[1:])

    def _drain_outbox(self) -> None:
        while True:
            with self._outbox_lock:
                if not self._outbox:
                    return
                message, payload = self._outbox.popleft()
            try:
                self._publish(message, payload)
                self.stats.other_sent += 1
            except (ValueError, TypeError) as exc:
                log.warning("producer gave an invalid message: %s", exc)

    def _publish(self, message: StreamMessage, payload: bytes) -> None:
        sock = self._sock
        assert sock is not None
        try:  # copy=False: frames above pyzmq's copy threshold (the payload) go out zero-copy
            sock.send_multipart(sealed(self.signer, message, payload), zmq.NOBLOCK, copy=False)
        except zmq.Again:  # PUB never blocks; kept for safety with exotic socket options
            log.debug("publish would block; dropped")
        for listener in self._listeners:
            try:
                listener(message, payload)
            except Exception:  # a hook must never stop the stream
                log.exception("stream listener failed")
