"""The stream wire format: what a streamer publishes and every viewer (or relay) receives.

Each PUB message is ``[topic, header, *payload]``. Topics are fixed prefixes so a SUB can filter and an XSUB/XPUB
relay can forward without understanding anything else; the publisher keeps no per-viewer state.

* ``TOPIC_INFO``: :class:`StreamInfo`, repeated every second for late joiners (codec, size, extradata, audio,
  the streamer's signing key).
* ``TOPIC_VIDEO``: :class:`VideoFrame` + one payload frame (an H.264 access unit in Annex B, or a JPEG).
* ``TOPIC_AUDIO``: :class:`AudioChunk` + one payload frame (an Opus packet or interleaved s16le PCM).
* ``TOPIC_END``: :class:`StreamEnd`, sent once when a streamer stops cleanly (a viewer of a streamer that dies
  infers the end from silence instead).
* ``TOPIC_CHAT``: :class:`ChatLine`, one accepted chat line (or a join, leave, raised hand), republished by the
  streamer from its chat back channel (:mod:`overdrive.media.chat`); ``TOPIC_PRESENCE``: :class:`Presence`, who
  is watching. Viewers that predate chat never subscribe to them.

All timestamps are capture times in nanoseconds on the streamer's wall clock (``time.time_ns()``), shared by
video and audio, so recordings and playback line tracks up by timestamp, never by an assumed rate.
``stream_id`` changes whenever a streamer (re)starts, which tells viewers to reset decoders and recordings.
Every message ends with one more frame, the streamer's signature (:mod:`overdrive.media.trust`), which the
shells add and strip: this codec sees ``[header, *payload]`` only.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import Meta

from overdrive.bus.codec import Codec, Message

TOPIC_INFO = b"i"
TOPIC_VIDEO = b"v"
TOPIC_AUDIO = b"a"
TOPIC_END = b"e"
TOPIC_CHAT = b"c"
TOPIC_PRESENCE = b"p"

MAX_VIDEO_FRAME = 16 << 20
MAX_AUDIO_CHUNK = 64 << 10

VideoCodecName = Literal["h264", "jpeg"]
AudioCodecName = Literal["opus", "pcm"]
NonNegative = Annotated[int, Meta(ge=0)]
Dimension = Annotated[int, Meta(ge=2, le=16384)]
StreamId = Annotated[str, Meta(min_length=1, max_length=64)]
Name = Annotated[str, Meta(min_length=1, max_length=128)]


class VideoTrackInfo(msgspec.Struct, frozen=True, kw_only=True):
    """How to decode the video track."""

    codec: VideoCodecName
    width: Dimension
    height: Dimension
    fps: Annotated[float, Meta(gt=0, le=1000)]
    extradata: Annotated[bytes, Meta(max_length=4096)] = b""
    bitrate: NonNegative = 0


class AudioTrackInfo(msgspec.Struct, frozen=True, kw_only=True):
    """How to decode one audio track (system audio, microphone or test tone)."""

    track: Annotated[int, Meta(ge=0, le=7)]
    source: Name
    codec: AudioCodecName
    sample_rate: Annotated[int, Meta(ge=8000, le=192000)]
    channels: Annotated[int, Meta(ge=1, le=8)]
    extradata: Annotated[bytes, Meta(max_length=4096)] = b""


class StreamInfo(Message, tag="info", frozen=True):
    """Stream metadata, published every second on ``TOPIC_INFO``."""

    stream_id: StreamId
    name: Name
    started_ns: NonNegative
    sent_ns: NonNegative
    video: VideoTrackInfo
    audio: tuple[AudioTrackInfo, ...] = ()
    keyframe_interval: Annotated[float, Meta(gt=0, le=60)] = 1.0
    signer: Annotated[bytes, Meta(max_length=32)] = b""
    """The streamer's Ed25519 public key, which signs every message of the stream (viewers refuse an info without
    one; empty only in local use that never goes on the wire)."""
    chat_port: Annotated[int, Meta(ge=0, le=65535)] = 0
    """TCP port of the streamer's chat back channel on the stream's host (0: this stream has no chat)."""


class VideoFrame(Message, tag="vf", frozen=True):
    """One encoded video frame; the bytes follow as the single payload frame."""

    payload_frames: ClassVar[int] = 1
    max_payload: ClassVar[int] = MAX_VIDEO_FRAME

    stream_id: StreamId
    seq: NonNegative
    pts_ns: NonNegative
    keyframe: bool
    codec: VideoCodecName


class AudioChunk(Message, tag="ac", frozen=True):
    """About 20 ms of one audio track; the encoded bytes follow as the single payload frame."""

    payload_frames: ClassVar[int] = 1
    max_payload: ClassVar[int] = MAX_AUDIO_CHUNK

    stream_id: StreamId
    track: Annotated[int, Meta(ge=0, le=7)]
    seq: NonNegative
    pts_ns: NonNegative
    samples: Annotated[int, Meta(ge=1, le=48000)]


class StreamEnd(Message, tag="end", frozen=True):
    """The streamer stopped on purpose: viewers finish their recordings and wait for a new ``stream_id``."""

    stream_id: StreamId
    sent_ns: NonNegative


MAX_CHAT_NAME = 32
"""Characters of a shown chat name."""
MAX_CHAT_TEXT = 500
"""Characters of one chat line; a longer one is refused (not cut: the sender sees why and can split it)."""
MAX_PRESENCE_NAMES = 200
"""Names listed in one Presence (the count is always exact)."""
ChatKind = Literal["say", "hand", "join", "leave"]
ChatName = Annotated[str, Meta(min_length=1, max_length=MAX_CHAT_NAME)]


class ChatLine(Message, tag="chat", frozen=True):
    """One chat event the streamer accepted, in the order it accepted them (``seq`` grows by one per line).

    ``name`` is the name the streamer gave the sender, never one the sender chose for itself unchecked; ``host``
    is set only for lines sent from the streamer's own identity (the lecturer). ``text`` is plain text: whatever it
    holds (markup, scripts) is shown as the characters it is. ``sent_ns`` is on the stream clock."""

    stream_id: StreamId
    seq: NonNegative
    sent_ns: NonNegative
    name: ChatName
    text: Annotated[str, Meta(max_length=MAX_CHAT_TEXT)] = ""
    kind: ChatKind = "say"
    host: bool = False
    member: Annotated[str, Meta(max_length=16)] = ""
    """A short id of the sending connection and label, stable while it stays (tells two equal names apart)."""


class Presence(Message, tag="pres", frozen=True):
    """Who is in the chat: sent when it changes (at most about once a second) and every few seconds."""

    stream_id: StreamId
    sent_ns: NonNegative
    count: NonNegative
    names: Annotated[tuple[ChatName, ...], Meta(max_length=MAX_PRESENCE_NAMES)] = ()
    hands: Annotated[tuple[ChatName, ...], Meta(max_length=MAX_PRESENCE_NAMES)] = ()


StreamMessage = StreamInfo | VideoFrame | AudioChunk | StreamEnd | ChatLine | Presence
CODEC: Codec[StreamMessage] = Codec(StreamInfo, VideoFrame, AudioChunk, StreamEnd, ChatLine, Presence)

TOPICS: dict[type[Message], bytes] = {
    StreamInfo: TOPIC_INFO,
    VideoFrame: TOPIC_VIDEO,
    AudioChunk: TOPIC_AUDIO,
    StreamEnd: TOPIC_END,
    ChatLine: TOPIC_CHAT,
    Presence: TOPIC_PRESENCE,
}
