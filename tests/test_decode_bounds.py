"""Bounded decoding: whatever bytes a password holder sends, every decoder raises ProtocolError and nothing else.

Deep nesting is the sharpest case: a ~2 KB msgpack value nested 2,000 levels deep makes msgspec's recursion guard
raise RecursionError wherever it skips a value (the envelope's raw body, an unknown field, extra elements).
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overdrive.bus.codec import PROTOCOL_VERSION, Codec
from overdrive.demo.bus import CODEC as DEMO_CODEC
from overdrive.errors import ProtocolError
from overdrive.index.protocol import CODEC as INDEX_CODEC
from overdrive.index.records import decode_rows
from overdrive.media.protocol import CODEC as MEDIA_CODEC
from overdrive.transfer.protocol import CODEC as TRANSFER_CODEC

CODECS: list[Codec] = [INDEX_CODEC, TRANSFER_CODEC, MEDIA_CODEC, DEMO_CODEC]  # type: ignore[type-arg]
MESSAGE_TYPES = [(codec, t) for codec in CODECS for t in codec.types]
encoder = msgspec.msgpack.Encoder()


def nested(depth: int, kind: str = "array") -> bytes:
    """A msgpack value nested ``depth`` levels deep: one-element arrays (or one-entry maps) around a nil."""
    opener = b"\x91" if kind == "array" else b"\x81\xa1k"
    return opener * depth + b"\xc0"


def fields(message_type: type) -> tuple[str, ...]:
    return tuple(message_type.__struct_fields__)  # type: ignore[attr-defined]


def body_with(message_type: type, field: str, value: bytes) -> bytes:
    """A msgpack map ``{"t": tag, field: value}`` with ``value`` spliced in as raw msgpack."""
    tag = message_type.__struct_config__.tag  # type: ignore[attr-defined]
    return b"\x82" + encoder.encode("t") + encoder.encode(tag) + encoder.encode(field) + value


def header(body: bytes, version: int = PROTOCOL_VERSION) -> bytes:
    return b"\x92" + encoder.encode(version) + body


def only_protocol_errors(codec: Codec, frames: list[bytes]) -> None:  # type: ignore[type-arg]
    try:
        codec.decode(frames)
    except ProtocolError:
        pass


@pytest.mark.parametrize("depth", [2_000, 100_000])
@pytest.mark.parametrize("kind", ["array", "map"])
def test_deep_nesting_anywhere_is_a_protocol_error(depth: int, kind: str) -> None:
    deep = nested(depth, kind)
    for codec in CODECS:
        for frames in ([header(deep)], [header(deep, version=PROTOCOL_VERSION + 1)], [b"\x92\x01\x91" + deep]):
            with pytest.raises(ProtocolError):
                codec.decode(frames)
    for codec, message_type in MESSAGE_TYPES:
        for field in (*fields(message_type), "unknown"):
            with pytest.raises(ProtocolError):
                codec.decode([header(body_with(message_type, field, deep)), b"p"])


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(MESSAGE_TYPES),
    st.data(),
    st.integers(1, 3_000),
    st.sampled_from(["array", "map"]),
    st.binary(max_size=8),
)
def test_every_message_type_with_nested_fields_only_raises_protocol_error(
    codec_and_type: tuple[Codec, type],  # type: ignore[type-arg]
    data: st.DataObject,
    depth: int,
    kind: str,
    noise: bytes,
) -> None:
    codec, message_type = codec_and_type
    field = data.draw(st.sampled_from([*fields(message_type), "t", "zz"]))
    value = nested(depth, kind)
    cut = data.draw(st.integers(0, len(value)))
    for body in (body_with(message_type, field, value), body_with(message_type, field, value[:cut] + noise)):
        only_protocol_errors(codec, [header(body)])
        only_protocol_errors(codec, [header(body), b"payload"])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64), st.integers(0, 3_000), st.binary(max_size=64))
def test_random_bytes_around_deep_nesting_only_raise_protocol_error(prefix: bytes, depth: int, suffix: bytes) -> None:
    for codec in CODECS:
        only_protocol_errors(codec, [prefix + nested(depth) + suffix])
        only_protocol_errors(codec, [b"\x92\x01" + prefix + nested(depth, "map") + suffix])


@pytest.mark.parametrize("declared", [b"\xdd\xff\xff\xff\xff", b"\xdf\xff\xff\xff\xff", b"\xdb\xff\xff\xff\xff"])
def test_huge_declared_lengths_are_refused_without_allocating(declared: bytes) -> None:
    for codec, message_type in MESSAGE_TYPES:
        for field in fields(message_type):
            with pytest.raises(ProtocolError):
                codec.decode([header(body_with(message_type, field, declared))])


@pytest.mark.parametrize(
    "rows", [b"\x91\x9a" + nested(3_000), b"\x91\x9b" + b"\x00" * 10 + nested(3_000), nested(5_000)]
)
def test_record_rows_nested_deeply_are_refused(rows: bytes) -> None:
    with pytest.raises(ProtocolError, match="bad record rows"):
        decode_rows(rows)


def test_a_lookup_pattern_longer_than_4096_characters_is_refused() -> None:
    body = encoder.encode({"t": "lookup", "ref": 1, "name": "*" * 4097, "glob": True})
    with pytest.raises(ProtocolError, match="length"):
        INDEX_CODEC.decode([header(body)])
    ok = encoder.encode({"t": "lookup", "ref": 1, "name": "*" * 4096, "glob": True})
    INDEX_CODEC.decode([header(ok)])
