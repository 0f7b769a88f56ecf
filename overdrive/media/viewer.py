"""The viewer: subscribe to a stream, join it cleanly, decode, and measure; :mod:`~overdrive.media.display` shows.

:class:`Viewer` connects a CURVE SUB (the first connect is verified, so a wrong password fails within seconds
with "authentication failed for HOST"; afterwards ZeroMQ reconnects by itself when a streamer restarts). With
``ViewerConfig.wait`` it first waits for a streamer that is not listening yet (students arrive early); a refused
connection is retried, a failed handshake is still an error at once.

A stream ends when its streamer says so (:class:`~overdrive.media.protocol.StreamEnd`) or, for a streamer that
died, after ``end_after`` seconds of silence (StreamInfo comes every second). Either way listeners get a
``StreamEnd`` (a recording finishes), ``on_end`` is called, the window says so, and the viewer waits for the
stream to start again (a new StreamInfo) unless ``once`` is set. Each
loop it **drains everything queued** (ZMQ_CONFLATE cannot be used with multipart messages), feeds headers to
the sans-IO :class:`~overdrive.media.join.JoinState`, and decodes only from the newest keyframe of the batch,
or after falling more than a keyframe interval behind, from the next live keyframe
(:class:`~overdrive.media.join.CatchUp`), showing only the newest picture. A viewer that was paused or slow
therefore jumps back to live instead of replaying the past, and the publisher's high-water mark means it never
slows the streamer. Malformed or oversized messages are dropped and counted (``stats.malformed``, see
:mod:`~overdrive.media.stats`). Nothing is decoded, shown or passed to hooks until a StreamInfo signed by a key
the viewer trusts (``ViewerConfig.pin``, else the first one: :class:`~overdrive.media.trust.StreamTrust`); from
then on a message that key did not sign is dropped and counted (``stats.forged``).

It is a :class:`~overdrive.bus.service.ZmqService`: ``start()`` receives in a thread that ``stop()`` ends over
inproc; ``run()`` receives in the caller's thread (the CLI's main thread, where the window must live), and
``request_stop()`` ends that from a signal handler.

Hooks for audio playback and recording (no change to this module needed):

* ``Viewer.add_listener(callback)`` — ``callback(message, payload: bytes)`` runs in the viewer thread for every
  accepted message: every valid ``StreamInfo`` (a new ``stream_id`` means the streamer restarted: reset),
  every ``AudioChunk`` of the current stream, and every ``VideoFrame`` that continues a clean chain from a
  keyframe (with its encoded bytes, before any catch-up skipping, so a recording gets them all). ``payload`` is
  ``b""`` for StreamInfo. Keep callbacks fast.
  Chat lines and presence of the current stream (``ChatLine``, ``Presence``) go to listeners too.
* ``Viewer.add_picture_listener(callback)`` — ``callback(image, frame)`` for every decoded BGR picture.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import zmq

from overdrive import interrupts
from overdrive.bus.address import DEFAULT_STREAM_PORT, Endpoint, parse_endpoint
from overdrive.bus.service import START_TIMEOUT, STOP_TIMEOUT, ZmqService
from overdrive.bus.signing import normalise_fingerprint
from overdrive.bus.sockets import Bus
from overdrive.errors import ConfigError, HostNotFoundError, MediaError, ProtocolError, UnreachableError
from overdrive.media.chat import line_text
from overdrive.media.codecs import make_decoder
from overdrive.media.codecs.base import Decoder
from overdrive.media.display import Display, check_display
from overdrive.media.hooks import Listener
from overdrive.media.join import Accept, CatchUp, JoinState, Reset
from overdrive.media.protocol import (
    CODEC,
    TOPIC_AUDIO,
    TOPIC_CHAT,
    TOPIC_END,
    TOPIC_INFO,
    TOPIC_PRESENCE,
    TOPIC_VIDEO,
    AudioChunk,
    ChatLine,
    Presence,
    StreamEnd,
    StreamInfo,
    StreamMessage,
    VideoFrame,
)
from overdrive.media.sources import Image
from overdrive.media.stats import ViewerStats, report
from overdrive.media.trust import StreamTrust, Verdict

log = logging.getLogger(__name__)

STREAM_RCVHWM = 60
MAX_BATCH = 5000
_TOPIC_TYPES: dict[bytes, type] = {
    TOPIC_INFO: StreamInfo,
    TOPIC_VIDEO: VideoFrame,
    TOPIC_AUDIO: AudioChunk,
    TOPIC_END: StreamEnd,
    TOPIC_CHAT: ChatLine,
    TOPIC_PRESENCE: Presence,
}
RETRY_SECONDS = 0.5
"""Between two connection attempts while waiting for a streamer to start."""

PictureListener = Callable[[Image, VideoFrame], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class ViewerConfig:
    """What to watch and how; validated on construction."""

    host: str
    headless: bool = False
    duration: float | None = None
    stats_json: Path | None = None
    decode: bool = True
    overlay: bool = False
    connect_timeout: float = 3.0
    rcvhwm: int = STREAM_RCVHWM
    trace: Path | None = None
    title: str = "overdrive"
    pin: str | None = None
    wait: float | None = 0.0
    """Seconds to wait for a streamer that is not listening yet; None: as long as it takes; 0: fail at once."""
    end_after: float = 5.0
    """Seconds of silence after which a stream counts as ended (its streamer died or the network went)."""
    once: bool = False
    """Stop when the stream ends instead of waiting for it to start again."""
    endpoint: Endpoint = field(init=False)

    def __post_init__(self) -> None:
        if self.duration is not None and self.duration <= 0:
            raise ConfigError("--duration must be positive")
        if not 0.1 <= self.connect_timeout <= 60:
            raise ConfigError("connect timeout must be 0.1..60 s")
        if self.rcvhwm < 1:
            raise ConfigError("receive high-water mark must be >= 1")
        if self.wait is not None and self.wait < 0:
            raise ConfigError("--wait must be >= 0")
        if not 1.5 <= self.end_after <= 3600:
            raise ConfigError("end-of-stream silence must be 1.5..3600 s")
        object.__setattr__(self, "endpoint", parse_endpoint(self.host, DEFAULT_STREAM_PORT))
        if self.pin is not None:
            object.__setattr__(self, "pin", normalise_fingerprint(self.pin))


class Viewer(ZmqService):
    """Subscribe, join, decode and (unless headless) show one stream."""

    name = "overdrive-viewer"
    error_type = MediaError

    def __init__(self, config: ViewerConfig, bus: Bus) -> None:
        if not config.headless:
            check_display()  # before anything (audio devices, sockets) is opened for a viewer that cannot show
        super().__init__(bus)
        self.config = config
        self.join = JoinState()
        self.catchup = CatchUp()
        self.trust = StreamTrust(config.pin)
        self._audio_seq: dict[int, int] = {}  # newest AudioChunk.seq per track of the current stream (<= 8)
        self.stats = ViewerStats()
        self._listeners: list[Listener] = []
        self._picture_listeners: list[PictureListener] = []
        self._decoder: Decoder | None = None
        self._sock: zmq.Socket | None = None  # type: ignore[type-arg]
        self._stop_requested = threading.Event()
        self._display = None if config.headless else Display(config.title, config.overlay, self.stats_dict)
        self._trace: IO[str] | None = None
        self.started = 0.0
        self.on_join: Callable[[StreamInfo], None] | None = None
        """Called (in the receiving thread) when a stream starts, also again after it ended."""
        self.on_end: Callable[[StreamInfo, str], None] | None = None
        """Called (in the receiving thread) with the stream and why it ended."""
        self.ended = 0
        self._heard = 0.0  # monotonic time of the last message
        self._done = False  # `once` and the stream ended

    # -- hooks -----------------------------------------------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def add_picture_listener(self, listener: PictureListener) -> None:
        self._picture_listeners.append(listener)

    # -- lifecycle -------------------------------------------------------------------------------------------
    def connect(self, check: interrupts.Check = interrupts.never, waiting: Callable[[], None] | None = None) -> None:
        """Connect and verify the handshake; AuthError (wrong password) at once, UnreachableError when nothing
        listens within the timeout, or with ``config.wait`` once that is over (``waiting`` is called when the
        waiting starts; ``check`` between attempts, so a stop signal ends it by raising KeyboardInterrupt)."""
        if self._sock is not None:
            return
        cfg = self.config
        deadline = None if cfg.wait is None else time.monotonic() + cfg.wait
        while True:
            sock = self.bus.client(zmq.SUB, hwm=cfg.rcvhwm)
            sock.setsockopt(zmq.RCVBUF, 1 << 20)
            for topic in _TOPIC_TYPES:
                sock.setsockopt(zmq.SUBSCRIBE, topic)
            try:
                self.bus.connect(sock, cfg.endpoint, verify=True, timeout=cfg.connect_timeout, patient=not cfg.wait)
                break
            except HostNotFoundError:
                sock.close(linger=0)
                raise
            except UnreachableError:
                sock.close(linger=0)
                if not cfg.wait and cfg.wait is not None:
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise UnreachableError(
                        f"no stream at {cfg.endpoint.display} after waiting {cfg.wait:g} s"
                    ) from None
            except BaseException:
                sock.close(linger=0)
                raise
            if waiting is not None:
                waiting()
                waiting = None
            pause = RETRY_SECONDS if deadline is None else min(RETRY_SECONDS, deadline - time.monotonic())
            interrupts.sleep(max(0.0, pause), check)
        self._sock = sock
        self.started = self._heard = time.monotonic()

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Connect, then receive in a background thread (headless use: tests, recording-only viewers)."""
        self.connect()
        super().start(timeout)

    def run(self) -> ViewerStats:
        """Receive until ``stop()``, the duration ends, or ``q`` in the window; write --stats-json at the end."""
        self.connect()
        self.serve()
        return self.stats

    def request_stop(self) -> None:
        """Ask :meth:`run` to end at its next turn (safe from a signal handler: it only sets an event)."""
        self._stop_requested.set()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        super().stop(timeout)
        if not self.running and self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def __enter__(self) -> Viewer:  # start() is explicit: run() is the other way to use a viewer
        return self

    # -- main loop -------------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.connect()
        if self.config.trace is not None:
            self._trace = self.config.trace.open("w")

    def loop(self, control: zmq.Socket) -> None:  # type: ignore[type-arg]
        sock = self._sock
        assert sock is not None
        cfg = self.config
        display = self._display
        deadline = self.started + cfg.duration if cfg.duration else None
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(control, zmq.POLLIN)
        while not self._stop_requested.is_set() and not self._done:
            wait_ms = 10 if display is not None and display.open else 100
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = min(wait_ms, int(left * 1000) + 1)
            events = dict(poller.poll(wait_ms))
            if control in events:
                break
            if sock in events:
                picture = self.process(self._drain(sock))
                if picture is not None and display is not None:
                    display.show(picture)
            elif self.join.stream_id is not None and time.monotonic() - self._heard > cfg.end_after:
                self.end(self.join.stream_id, f"nothing received for {cfg.end_after:g} s")
            if display is not None and display.open and not display.keys():
                break

    def teardown(self) -> None:
        if self._trace is not None:
            self._trace.close()
            self._trace = None
        if self._decoder is not None:
            self._decoder.close()
        if self._display is not None:
            self._display.close()
        if self.config.stats_json is not None:
            self.config.stats_json.write_text(json.dumps(self.stats_dict(), indent=2) + "\n")
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    @staticmethod
    def _drain(sock: zmq.Socket) -> list[list[zmq.Frame]]:  # type: ignore[type-arg]
        batch: list[list[zmq.Frame]] = []
        while len(batch) < MAX_BATCH:
            try:
                batch.append(sock.recv_multipart(zmq.NOBLOCK, copy=False))
            except zmq.Again:
                break
        return batch

    def process(self, batch: list[list[Any]]) -> Image | None:
        """Handle one drained batch of raw multipart messages; returns the newest decoded picture, if any.

        This is the whole receive path (validation, join logic, hooks, catch-up, decoding), usable on crafted
        frames without a socket.
        """
        pending: list[tuple[VideoFrame, bytes]] = []
        now_ns = time.time_ns()
        if batch:
            self._heard = time.monotonic()
        for frames in batch:
            self.stats.messages += 1
            parsed = self._parse(frames, now_ns)
            if parsed is None:
                continue
            message, payload = parsed
            if isinstance(message, StreamInfo):
                self.stats.infos += 1
                action = self.join.on_info(message)
                if isinstance(action, Reset):
                    pending.clear()
                    self._reset(action.info)
                self._notify(message, b"")
            elif isinstance(message, StreamEnd):
                if message.stream_id == self.join.stream_id:
                    pending.clear()  # nothing of it is shown after it ended
                    self.end(message.stream_id, "the streamer stopped")
            elif isinstance(message, AudioChunk):
                if message.stream_id == self.join.stream_id and self._fresh_audio(message):
                    self.stats.audio_chunks += 1
                    self._notify(message, payload)
            elif isinstance(message, (ChatLine, Presence)):  # chat: to listeners (media.chat_view), in order
                if message.stream_id == self.join.stream_id:
                    if isinstance(message, ChatLine) and self._display is not None:
                        self._display.chat_line(line_text(message))
                    self._notify(message, b"")
            else:
                self.stats.frames_received += 1
                if isinstance(self.join.on_frame(message), Accept):
                    self.stats.frames_accepted += 1
                    pending.append((message, payload))
                    self._notify(message, payload)
        return self._decode(pending)

    def _parse(self, frames: list[Any], now_ns: int) -> tuple[StreamMessage, bytes] | None:
        size = sum(len(f.buffer) if hasattr(f, "buffer") else len(f) for f in frames)
        self.stats.note_bytes(size, now_ns)
        if len(frames) < 2:
            self.stats.malformed += 1
            return None
        topic = bytes(frames[0].buffer if hasattr(frames[0], "buffer") else frames[0])
        expected = _TOPIC_TYPES.get(topic)
        if expected is None:
            self.stats.malformed += 1
            log.debug("dropped a message on unknown topic %r", topic[:8])
            return None
        verdict = self.trust.check(frames)  # before decoding: only a signed StreamInfo can bring a key to trust
        if verdict is not Verdict.TRUSTED and (expected is not StreamInfo or len(frames) < 3):
            self._distrust(verdict, None)
            return None
        try:
            message, payload = CODEC.decode(frames[1:-1])  # the last frame is the signature
            if type(message) is not expected:
                raise ProtocolError(f"{type(message).__name__} on topic {topic!r}")
        except ProtocolError as exc:
            self.stats.malformed += 1
            log.debug("dropped malformed message: %s", exc)
            return None
        if isinstance(message, StreamInfo):
            decision = self.trust.offer(message, frames, verdict)
            if decision.verdict is not Verdict.TRUSTED:
                self._distrust(decision.verdict, decision.notice)
                return None
            if decision.notice is not None:
                log.warning("%s", decision.notice)
            self.stats.signer = self.trust.fingerprint
        return message, bytes(payload[0]) if payload else b""

    def _distrust(self, verdict: Verdict, notice: str | None) -> None:
        """Count a message the trusted key did not sign (and say why, once per foreign key)."""
        setattr(self.stats, verdict.value, getattr(self.stats, verdict.value) + 1)
        if notice is not None:
            log.warning("%s", notice)

    def _fresh_audio(self, chunk: AudioChunk) -> bool:
        """Whether ``chunk`` is newer than the last of its track: a signed chunk sent again (a replay) is not."""
        if chunk.seq <= self._audio_seq.get(chunk.track, -1):
            self.stats.replayed += 1
            return False
        self._audio_seq[chunk.track] = chunk.seq
        return True

    def end(self, stream_id: str, reason: str) -> None:
        """The stream ``stream_id`` ended: tell listeners (recordings finish), the window and ``on_end``."""
        info = self.join.info
        if info is None or not self.join.on_end(stream_id):
            return
        self.ended += 1
        log.info("stream %s ended: %s", stream_id, reason)
        self._notify(StreamEnd(stream_id=stream_id, sent_ns=time.time_ns()), b"")
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        if self._display is not None:
            self._display.ended("stream ended" if self.config.once else "stream ended - waiting for it to restart")
        if self.on_end is not None:
            self.on_end(info, reason)
        if self.config.once:
            self._done = True

    def _reset(self, info: StreamInfo) -> None:
        self._audio_seq.clear()
        self.catchup = CatchUp(stale_ns=max(1_000_000_000, int(info.keyframe_interval * 1e9)))
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        log.info(
            "joined stream %s (%s %dx%d %s)",
            info.stream_id,
            info.name,
            info.video.width,
            info.video.height,
            info.video.codec,
        )
        if self._display is not None:
            self._display.set_title(info.name)
        if self.config.decode:
            try:
                self._decoder = make_decoder(info.video.codec, info.video.extradata)
            except MediaError as exc:
                log.warning("cannot decode this stream: %s", exc)
        if self.on_join is not None:
            self.on_join(info)

    def _decode(self, pending: list[tuple[VideoFrame, bytes]]) -> Image | None:
        if not pending:
            return None
        now_ns = time.time_ns()
        if not self.config.decode or self._decoder is None:
            for frame, _ in pending:
                self.stats.note_latency((now_ns - frame.pts_ns) / 1e6)
                self._write_trace(now_ns, frame, decoded=False, shown=False)
            return None
        start = self.catchup.plan([f for f, _ in pending], now_ns)
        self.stats.frames_skipped += start
        for frame, _ in pending[:start]:
            self._write_trace(now_ns, frame, decoded=False, shown=False)
        newest: Image | None = None
        newest_frame: VideoFrame | None = None
        broken = False
        for frame, data in pending[start:]:
            if broken and not frame.keyframe:
                self.stats.frames_skipped += 1
                continue
            try:
                images = self._decoder.decode(data)
            except MediaError as exc:
                log.debug("decode error: %s", exc)
                self.stats.decode_errors += 1
                self.join.decode_failed()
                broken = True
                continue
            broken = False
            done_ns = time.time_ns()
            for image in images:
                self.stats.frames_decoded += 1
                self.stats.note_latency((done_ns - frame.pts_ns) / 1e6)
                for listener in self._picture_listeners:
                    listener(image, frame)
                newest, newest_frame = image, frame
            self._write_trace(done_ns, frame, decoded=bool(images), shown=False)
        if newest is not None and newest_frame is not None:
            self.stats.frames_shown += 1
            now = time.time_ns()
            if not self.stats.first_shown_ns:
                self.stats.first_shown_ns = now
            self.stats.last_shown_ns = now
            self._write_trace(now, newest_frame, decoded=True, shown=True)
        return newest

    def _notify(self, message: StreamMessage, payload: bytes) -> None:
        for listener in self._listeners:
            try:
                listener(message, payload)
            except Exception:
                log.exception("viewer listener failed")

    def _write_trace(self, now_ns: int, frame: VideoFrame, *, decoded: bool, shown: bool) -> None:
        if self._trace is not None:
            self._trace.write(f"{now_ns} {frame.seq} {frame.pts_ns} {int(decoded)} {int(shown)}\n")

    # -- stats -----------------------------------------------------------------------------------------------
    def stats_dict(self) -> dict[str, Any]:
        return report(self.stats, self.join, self.catchup, self.started)
