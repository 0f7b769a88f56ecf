"""The wire codec: round trips, limits, and that nothing a peer sends raises anything but ProtocolError."""

from __future__ import annotations

from typing import Annotated, ClassVar

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overdrive.bus.codec import PROTOCOL_VERSION, Codec, Message
from overdrive.errors import ProtocolError
from overdrive.media.protocol import CODEC as STREAM_CODEC
from overdrive.media.protocol import AudioChunk, AudioTrackInfo, StreamInfo, VideoFrame, VideoTrackInfo


class Ping(Message, tag="ping", frozen=True):
    n: Annotated[int, msgspec.Meta(ge=0)]
    note: str = ""

    def __post_init__(self) -> None:
        if self.note == "forbidden":
            raise ValueError("note may not be 'forbidden'")


class Blob(Message, tag="blob", frozen=True):
    payload_frames: ClassVar[int] = 2
    max_payload: ClassVar[int] = 1024
    seq: int


CODEC = Codec(Ping, Blob, max_header=4096)
encoder = msgspec.msgpack.Encoder()


def test_round_trip_with_payload_frames_uncopied() -> None:
    big = bytearray(b"x" * 1000)
    frames = CODEC.encode(Blob(seq=7), big, b"tail")
    assert frames[1] is big, "payload frames must be passed through, not copied into the header"
    message, payload = CODEC.decode(frames)
    assert message == Blob(seq=7)
    assert [bytes(p) for p in payload] == [bytes(big), b"tail"]


def test_stream_messages_round_trip() -> None:
    info = StreamInfo(
        stream_id="s1",
        name="lecture",
        started_ns=1,
        sent_ns=2,
        video=VideoTrackInfo(codec="h264", width=1920, height=1080, fps=30.0, extradata=b"\x00\x00\x01"),
        audio=(AudioTrackInfo(track=0, source="system", codec="opus", sample_rate=48000, channels=2),),
    )
    for message, payload in [
        (info, ()),
        (VideoFrame(stream_id="s1", seq=5, pts_ns=10**18, keyframe=True, codec="h264"), (b"\x00\x00\x01\x65",)),
        (AudioChunk(stream_id="s1", track=0, seq=1, pts_ns=3, samples=960), (b"opus",)),
    ]:
        decoded, frames = STREAM_CODEC.decode(STREAM_CODEC.encode(message, *payload))
        assert decoded == message
        assert [bytes(f) for f in frames] == list(payload)


def test_header_carries_protocol_version() -> None:
    header = CODEC.encode(Ping(n=1))[0]
    assert msgspec.msgpack.decode(header)[0] == PROTOCOL_VERSION


@pytest.mark.parametrize(
    ("frames", "reason"),
    [
        ([], "empty"),
        ([b"\xc1"], "malformed"),
        ([encoder.encode((PROTOCOL_VERSION + 1, {"t": "ping", "n": 1}))], "version"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "nope", "n": 1}))], "invalid message"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "ping", "n": -1}))], "invalid message"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "ping", "n": 1, "note": "forbidden"}))], "invalid message"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "ping", "n": "1"}))], "invalid message"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "ping", "n": 1})), b"extra"], "payload frame"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "blob", "seq": 1})), b"a"], "payload frame"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "blob", "seq": 1})), b"a", b"b" * 1025], "exceeds"),
        ([encoder.encode((PROTOCOL_VERSION, {"t": "ping", "n": 1, "note": "x" * 5000}))], "exceeds"),
    ],
)
def test_bad_input_raises_protocol_error(frames: list[bytes], reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        CODEC.decode(frames)


def test_local_misuse_is_not_a_protocol_error() -> None:
    with pytest.raises(ValueError, match="forbidden"):
        Ping(n=1, note="forbidden")
    with pytest.raises(ValueError, match="payload frame"):
        CODEC.encode(Blob(seq=1), b"only one")
    with pytest.raises(TypeError):
        CODEC.encode(VideoFrame(stream_id="s", seq=1, pts_ns=1, keyframe=False, codec="jpeg"), b"")  # type: ignore[arg-type]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.binary(max_size=256), max_size=4))
def test_arbitrary_frames_only_raise_protocol_error(frames: list[bytes]) -> None:
    for codec in (CODEC, STREAM_CODEC):
        try:
            codec.decode(frames)
        except ProtocolError:
            pass


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(["ping", "blob", "info", "vf", "ac", "x"]), st.dictionaries(st.text(max_size=10), json_like))
def test_well_formed_msgpack_with_wrong_shapes_only_raises_protocol_error(tag: str, body: dict[str, object]) -> None:
    header = encoder.encode((PROTOCOL_VERSION, {**body, "t": tag}))
    for codec in (CODEC, STREAM_CODEC):
        try:
            codec.decode([header, b"p"])
        except ProtocolError:
            pass
