"""The browser gateway composed: a stream's messages, from a viewer or from the streamer itself, into the web server.

::

    server = WebServer(ServerConfig(host="0.0.0.0", port=8080), Access(invite_token(None, rotate=False)))
    viewer = Viewer(gateway_viewer_config("10.0.0.5"), bus)  # CURVE, verified signatures, no decoding
    viewer.add_listener(StreamToWeb(server))
    server.start(); viewer.connect(); viewer.start()

The gateway is an ordinary viewer of the stream: it holds the network password and checks the streamer's
signatures; browsers only ever see the H.264 and Opus it passes on. ``overdrive stream --web`` attaches the same
listener to the streamer (the one-machine case, no second subscription).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass

from overdrive import paths
from overdrive.errors import ConfigError, ProtocolError
from overdrive.index.addresses import guess_host
from overdrive.media.protocol import AudioChunk, StreamEnd, StreamInfo, StreamMessage, VideoFrame
from overdrive.media.viewer import ViewerConfig
from overdrive.web.access import check_token, new_token
from overdrive.web.fmp4 import AudioConfig, VideoConfig
from overdrive.web.gateway import AudioSample, VideoSample
from overdrive.web.server import WebServer

log = logging.getLogger(__name__)

DEFAULT_WEB_PORT = 8080
TOKEN_FILE = "web-token"


def gateway_viewer_config(host: str, *, pin: str | None = None) -> ViewerConfig:
    """A viewer that only receives and checks (no window, no decoding: the browsers decode), and waits for a
    stream that has not started yet or restarts."""
    return ViewerConfig(host=host, headless=True, decode=False, pin=pin, wait=None, title="overdrive web")


@dataclass(frozen=True, slots=True)
class _Tracks:
    stream_id: str
    extradata: bytes
    audio_track: int | None


class StreamToWeb:
    """A stream listener (viewer or streamer) that feeds a :class:`WebServer`: H.264 passed through, the first
    Opus track as the page's audio. Called in the stream's thread; the server hands everything to its loop."""

    def __init__(self, server: WebServer) -> None:
        self.server = server
        self._tracks: _Tracks | None = None
        self._warned: set[str] = set()

    def __call__(self, message: StreamMessage, payload: bytes) -> None:
        tracks = self._tracks
        if isinstance(message, StreamInfo):
            self._info(message)
        elif isinstance(message, VideoFrame):
            if tracks is not None and message.stream_id == tracks.stream_id:
                self.server.video(VideoSample(message.pts_ns, message.keyframe, payload))
        elif isinstance(message, AudioChunk):
            if tracks is not None and message.stream_id == tracks.stream_id and message.track == tracks.audio_track:
                self.server.audio(AudioSample(message.pts_ns, message.samples, payload))
        elif isinstance(message, StreamEnd) and tracks is not None and message.stream_id == tracks.stream_id:
            self._tracks = None
            self.server.end()

    def _info(self, info: StreamInfo) -> None:
        video = info.video
        opus = [a for a in info.audio if a.codec == "opus" and a.channels <= 2]
        audio_track = opus[0].track if opus else None
        tracks = _Tracks(info.stream_id, video.extradata, audio_track)
        if tracks == self._tracks:
            return
        if video.codec != "h264":
            self._warn(f"browsers need H.264; this stream is {video.codec} (stream with --codec h264)")
            return
        if not video.extradata:
            return  # the streamer has not encoded its first keyframe yet; the next info carries SPS/PPS
        try:
            config = VideoConfig.from_annexb(
                video.extradata, width=video.width, height=video.height, fps=video.fps, epoch_ns=info.started_ns
            )
        except ProtocolError as exc:
            self._warn(f"cannot pass this stream to browsers: {exc}")
            return
        audio = None
        if audio_track is not None:
            channels = next(a.channels for a in opus if a.track == audio_track)
            audio = AudioConfig(channels=channels, epoch_ns=info.started_ns)
        self._tracks = tracks
        log.info("web: stream %s (%s, audio %s)", info.stream_id, config.codec, "opus" if audio else "none")
        self.server.configure(config, audio)

    def _warn(self, text: str) -> None:
        if text not in self._warned:
            self._warned.add(text)
            log.warning("%s", text)


def invite_token(token: str | None, *, rotate: bool) -> str:
    """The invite token: ``token`` if given, else the stored one (so a restarted gateway keeps its link), else a
    new one; ``rotate`` makes a new one even when one is stored. The one chosen is stored (mode 0600)."""
    path = paths.config_dir() / TOKEN_FILE
    if token is not None:
        chosen = check_token(token)
    elif rotate:
        chosen = new_token()
    else:
        try:
            chosen = check_token(path.read_text().strip())
        except (OSError, ConfigError):
            chosen = new_token()
    paths.write_private(path, chosen.encode() + b"\n")
    return chosen


def parse_bind(value: str, option: str) -> tuple[str, int]:
    """``[HOST:]PORT`` (HOST defaults to 0.0.0.0) as a host and a port; ConfigError if it is neither."""
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{option} must be [HOST:]PORT, not {value!r}")
    return host, int(port)


def viewer_url(host: str, port: int, token: str) -> str:
    """The link to give viewers: the bound address, or this machine's LAN address when bound to every one."""
    if host in ("0.0.0.0", "", "*"):
        host = guess_host()
    elif host == "::":
        host = "[::1]"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/?t={token}"


def announce_url(url: str) -> None:
    """The URL on stdout (a script reads it from there); on a terminal also a QR code on stderr for phones."""
    print(url, flush=True)
    if sys.stderr.isatty() and os.environ.get("TERM") != "dumb":
        import segno

        segno.make(url, error="m").terminal(out=sys.stderr, compact=True)
        print(f"scan to watch: {url}", file=sys.stderr, flush=True)


__all__ = [
    "DEFAULT_WEB_PORT",
    "StreamToWeb",
    "announce_url",
    "gateway_viewer_config",
    "invite_token",
    "parse_bind",
    "viewer_url",
]
