"""The gateway's core, without sockets: stream in, one queue of WebSocket messages per browser out.

The composition feeds it :meth:`Gateway.configure` (a stream started), :meth:`Gateway.video`,
:meth:`Gateway.audio`, :meth:`Gateway.end` and chat lines; the server shell calls :meth:`Gateway.join` for each
browser and sends what its :class:`Session` queue holds. Each fragment is built once, as one ``bytes`` object that
every queue shares (nothing is re-encoded or copied per browser).

Binary messages are ``kind byte + payload`` (see ``KIND_*``); text messages are JSON control lines (``hello``,
``start``, ``end``, ``clock``, ``skip``, ``chat``, ``notice``). A late joiner gets ``start``, the init segments and
every fragment since the last keyframe (cached, bounded), so its first picture is at most one keyframe interval old
and the page jumps to the live edge. A browser that cannot keep up (its queue holds more than ``Limits.max_lag`` of
media, or more than the count/byte bounds) has its queued media dropped and resumes at the next keyframe: it is
never more than about a second behind, and a slow browser never slows the others or grows memory.
"""

from __future__ import annotations

import itertools
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from overdrive.errors import ConfigError
from overdrive.web.fmp4 import AudioConfig, VideoConfig, audio_fragment, audio_init, video_fragment, video_init

KIND_VIDEO = 0
KIND_AUDIO = 1
KIND_VIDEO_INIT = 2
KIND_AUDIO_INIT = 3

Item = bytes | str
"""One WebSocket message: binary (a kind byte, then fMP4) or text (one JSON control line)."""


@dataclass(frozen=True, slots=True)
class VideoSample:
    """One H.264 access unit in Annex B, with its capture time on the streamer's wall clock."""

    pts_ns: int
    keyframe: bool
    data: bytes


@dataclass(frozen=True, slots=True)
class AudioSample:
    """One Opus packet of ``samples`` samples at 48 kHz, with the capture time of its first sample."""

    pts_ns: int
    samples: int
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Every bound the gateway keeps; checked on construction."""

    max_sessions: int = 100
    queue_items: int = 120
    """Messages queued for one browser (about 2 s of 30 fps video with its audio)."""
    queue_bytes: int = 8 << 20
    max_lag: float = 1.0
    """Seconds of media a browser's queue may hold before it drops to the next keyframe."""
    cache_items: int = 400
    """Fragments kept since the last keyframe for late joiners (a longer group is not cached)."""
    cache_bytes: int = 16 << 20

    def __post_init__(self) -> None:
        if not 1 <= self.max_sessions <= 10_000:
            raise ConfigError("max sessions must be 1..10000")
        if self.queue_items < 8 or self.queue_bytes < 1 << 16 or self.cache_items < 8 or self.cache_bytes < 1 << 16:
            raise ConfigError("queue and cache bounds are too small to hold a keyframe")
        if not 0.2 <= self.max_lag <= 10:
            raise ConfigError("max lag must be 0.2..10 s")


class FullError(Exception):
    """No room for another browser (``Limits.max_sessions``)."""


@dataclass(slots=True)
class Session:
    """One browser's outgoing queue. ``wake`` (set by the shell) is called when the queue goes from empty to not."""

    id: int
    limits: Limits
    wake: Callable[[], None] = lambda: None
    dropped: int = 0
    """Times this browser fell behind and was moved to the next keyframe."""
    waiting_key: bool = False
    _queue: deque[tuple[Item, int | None]] = field(default_factory=deque)
    _bytes: int = 0

    def __len__(self) -> int:
        return len(self._queue)

    def pop(self) -> Item | None:
        """The next message to send, or None when the queue is empty."""
        if not self._queue:
            return None
        item, _ = self._queue.popleft()
        self._bytes -= len(item)
        return item

    def push(self, item: Item, pts_ns: int | None = None) -> None:
        """Queue ``item`` (media carries its capture time, which bounds the lag)."""
        was_empty = not self._queue
        self._queue.append((item, pts_ns))
        self._bytes += len(item)
        if was_empty:
            self.wake()

    def offer(self, item: bytes, pts_ns: int, keyframe: bool) -> None:
        """Queue a media fragment, or drop to the next keyframe when this browser is too far behind."""
        if self.waiting_key:
            if not keyframe:
                return
            self.waiting_key = False
        elif self._behind(pts_ns, len(item)):
            self._drop_media()
            if not keyframe:
                self.waiting_key = True
                return
        self.push(item, pts_ns)

    def clear(self) -> None:
        """Forget everything queued (the stream restarted: the page starts over from ``start``)."""
        self._queue.clear()
        self._bytes = 0
        self.waiting_key = False

    def _behind(self, pts_ns: int, size: int) -> bool:
        oldest = next((pts for _, pts in self._queue if pts is not None), None)
        lag = 0 if oldest is None else pts_ns - oldest
        limits = self.limits
        return (
            len(self._queue) >= limits.queue_items
            or self._bytes + size > limits.queue_bytes
            or lag > limits.max_lag * 1e9
        )

    def _drop_media(self) -> None:
        self.dropped += 1
        kept = [(item, pts) for item, pts in self._queue if pts is None]  # control lines stay, in order
        self._queue.clear()
        self._bytes = 0
        for item, pts in kept:
            self._queue.append((item, pts))
            self._bytes += len(item)
        self.push(json.dumps({"type": "skip"}))


class Gateway:
    """The stream's state for browsers: current configs, init segments, the cache since the last keyframe."""

    def __init__(self, limits: Limits | None = None, *, name: str = "overdrive", chat: bool = False) -> None:
        self.limits = limits or Limits()
        self.name = name
        self.chat = chat
        self.video_config: VideoConfig | None = None
        self.audio_config: AudioConfig | None = None
        self.sessions: dict[int, Session] = {}
        self._ids = itertools.count(1)
        self._sequence = itertools.count(1)
        self._start: str | None = None
        self._inits: list[bytes] = []
        self._cache: list[tuple[bytes, int, bool]] = []
        self._cache_bytes = 0
        self._cache_valid = False

    # -- browsers --------------------------------------------------------------------------------------------
    def join(self, now_ns: int, wake: Callable[[], None] = lambda: None) -> Session:
        """A new browser: its session, already holding what it needs to start (if a stream is on) and the
        gateway's clock."""
        if len(self.sessions) >= self.limits.max_sessions:
            raise FullError(f"already {len(self.sessions)} browsers")
        session = Session(next(self._ids), self.limits, wake)
        self.sessions[session.id] = session
        session.push(json.dumps({"type": "hello", "name": self.name, "chat": self.chat}))
        self._prime(session)
        session.push(_clock(now_ns))
        return session

    def leave(self, session: Session) -> None:
        self.sessions.pop(session.id, None)

    def _prime(self, session: Session) -> None:
        if self._start is None:
            return
        session.push(self._start)
        for init in self._inits:
            session.push(init)
        if not self._cache_valid:
            session.waiting_key = True
            return
        for item, pts, keyframe in self._cache:
            session.offer(item, pts, keyframe)

    # -- the stream ------------------------------------------------------------------------------------------
    def configure(self, video: VideoConfig, audio: AudioConfig | None) -> None:
        """A stream (re)started with these tracks: every browser restarts its player from the next keyframe."""
        self.video_config, self.audio_config = video, audio
        start: dict[str, object] = {
            "type": "start",
            "name": self.name,
            "video": {"codec": video.codec, "width": video.width, "height": video.height},
            "audio": None if audio is None else {"codec": audio.codec, "channels": audio.channels},
            "epoch_ms": video.epoch_ns // 1_000_000,
        }
        self._start = json.dumps(start)
        self._inits = [bytes((KIND_VIDEO_INIT,)) + video_init(video)]
        if audio is not None:
            self._inits.append(bytes((KIND_AUDIO_INIT,)) + audio_init(audio))
        self._clear_cache()
        for session in self.sessions.values():
            session.clear()
            self._prime(session)

    def video(self, sample: VideoSample) -> None:
        config = self.video_config
        if config is None:
            return
        fragment = video_fragment(config, next(self._sequence), sample.pts_ns, sample.keyframe, sample.data)
        self._publish(bytes((KIND_VIDEO,)) + fragment, sample.pts_ns, sample.keyframe)

    def audio(self, sample: AudioSample) -> None:
        config = self.audio_config
        if config is None or self.video_config is None:
            return
        fragment = audio_fragment(config, next(self._sequence), sample.pts_ns, sample.samples, sample.data)
        self._publish(bytes((KIND_AUDIO,)) + fragment, sample.pts_ns, False)

    def end(self) -> None:
        """The stream ended: pages show it; nothing more until the next :meth:`configure`."""
        self.video_config = self.audio_config = None
        self._start = None
        self._inits = []
        self._clear_cache()
        self.broadcast({"type": "end"})

    def broadcast(self, message: dict[str, object]) -> None:
        """Queue one JSON control line (a chat line, the clock) for every browser."""
        text = json.dumps(message)
        for session in self.sessions.values():
            session.push(text)

    def clock(self, now_ns: int) -> None:
        """Tell pages the gateway's wall clock (they correct their own by it when measuring latency)."""
        text = _clock(now_ns)
        for session in self.sessions.values():
            session.push(text)

    def _publish(self, item: bytes, pts_ns: int, keyframe: bool) -> None:
        if keyframe:
            self._clear_cache()
            self._cache_valid = True
        if self._cache_valid:
            if len(self._cache) >= self.limits.cache_items or self._cache_bytes + len(item) > self.limits.cache_bytes:
                self._clear_cache()  # a group too long to cache: joiners wait for the next keyframe
            else:
                self._cache.append((item, pts_ns, keyframe))
                self._cache_bytes += len(item)
        for session in self.sessions.values():
            session.offer(item, pts_ns, keyframe)

    def _clear_cache(self) -> None:
        self._cache.clear()
        self._cache_bytes = 0
        self._cache_valid = False


def _clock(now_ns: int) -> str:
    return json.dumps({"type": "clock", "server_ms": now_ns // 1_000_000})


__all__ = ["AudioSample", "FullError", "Gateway", "Item", "Limits", "Session", "VideoSample"]
