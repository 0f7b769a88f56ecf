"""The one wire codec: typed messages in, ZeroMQ frames out, and back.

A message on the wire is ``[header, *payload]``. The header is msgpack ``[PROTOCOL_VERSION, body]`` where body is
a tagged msgspec Struct; payload frames (video, file chunks) travel untouched as separate frames, so big buffers are
never copied into the header. Routing frames (ROUTER identities, PUB topics) are the socket shell's business and are
stripped before :meth:`Codec.decode` sees the frames.

Anything a peer sends that is not a valid message for this codec raises :class:`~overdrive.errors.ProtocolError`
and nothing else: wrong version, unknown tag, bad field, too large, nested too deeply, wrong number of payload frames.
A valid envelope whose body is tagged with a tag not of this codec raises its subclass
:class:`~overdrive.errors.ForeignMessageError`: a message of another overdrive protocol (see :mod:`overdrive.bus.kind`).

Bounds: the header is at most ``max_header`` bytes; every field has a bounded type (``msgspec.Meta(max_length=...)``
on strings and containers, no ``Any``), and msgspec checks a declared array, map or string length against the bytes
left before allocating, so no length field can make it allocate more than the header holds. Nesting is bounded by
msgspec's recursion guard, which raises ``RecursionError`` (turned into ProtocolError here) long before the C stack
is at risk (at the interpreter's recursion limit, 1,000 by default); valid messages nest a few levels.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Generic, TypeVar, Union

import msgspec

from overdrive.errors import ForeignMessageError, ProtocolError

PROTOCOL_VERSION = 1
MAX_HEADER_BYTES = 1 << 20
"""Largest header accepted; snapshots and batches are split to stay below it."""
DECODE_ERRORS = (msgspec.DecodeError, RecursionError)
"""What decoding a peer's bytes may raise inside msgspec (DecodeError covers ValidationError): each becomes
ProtocolError. ``RecursionError`` comes from values nested deeper than the interpreter's recursion limit."""


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="t", omit_defaults=True):
    """Base of every wire message: frozen, keyword-only, tagged by a short string.

    ``payload_frames`` says how many raw frames follow the header; ``max_payload`` bounds each of them.
    Subclasses validate cross-field rules in ``__post_init__`` (raise ``ValueError``), which msgspec runs both
    when a message is built locally (the ValueError stands: local misuse) and when one is decoded from a peer
    (msgspec wraps it in a ValidationError, which :meth:`Codec.decode` turns into ProtocolError).
    """

    payload_frames: ClassVar[int] = 0
    max_payload: ClassVar[int] = 0


M = TypeVar("M", bound=Message)
Frame = Union[bytes, memoryview, Any]  # noqa: UP007 - Any covers zmq.Frame without importing zmq here


class _Envelope(msgspec.Struct, array_like=True):
    version: int
    body: msgspec.Raw


class _Tagged(msgspec.Struct):
    """Only the tag of a message body (every other field skipped unread)."""

    t: Annotated[str, msgspec.Meta(max_length=64)]


def _as_buffer(frame: Frame) -> memoryview:
    """Return a read-only view of a frame, whether bytes, memoryview or zmq.Frame, without copying."""
    if isinstance(frame, (bytes, bytearray, memoryview)):
        return memoryview(frame)
    buffer = getattr(frame, "buffer", None)
    if buffer is None:
        raise ProtocolError(f"unexpected frame type {type(frame).__name__}")
    return memoryview(buffer)


def _reason(exc: BaseException) -> str:
    """One line saying why a peer's bytes were refused."""
    return "nested too deeply" if isinstance(exc, RecursionError) else str(exc)


class Codec(Generic[M]):
    """Encode and decode one protocol's messages (the set of Struct types given)."""

    def __init__(self, *types: type[M], max_header: int = MAX_HEADER_BYTES) -> None:
        if not types:
            raise ValueError("a codec needs at least one message type")
        tags = [t.__struct_config__.tag for t in types]
        if len(set(tags)) != len(tags):
            raise ValueError(f"duplicate message tags in {tags}")
        self.types = types
        self.tags = frozenset(tags)
        self.max_header = max_header
        union: Any = Union[types] if len(types) > 1 else types[0]  # noqa: UP007
        self._encoder = msgspec.msgpack.Encoder()
        self._envelope = msgspec.msgpack.Decoder(_Envelope)
        self._body = msgspec.msgpack.Decoder(union)
        self._tag = msgspec.msgpack.Decoder(_Tagged)

    def encode(self, message: M, *payload: Frame) -> list[Frame]:
        """Frames for ``message`` followed by its raw payload frames (not copied)."""
        if not isinstance(message, self.types):
            raise TypeError(f"{type(message).__name__} is not a message of this protocol")
        if len(payload) != message.payload_frames:
            raise ValueError(
                f"{type(message).__name__} takes {message.payload_frames} payload frame(s), got {len(payload)}"
            )
        header = self._encoder.encode((PROTOCOL_VERSION, message))
        if len(header) > self.max_header:
            raise ValueError(f"header of {len(header)} bytes exceeds {self.max_header}")
        return [header, *payload]

    def decode(self, frames: Sequence[Frame]) -> tuple[M, list[memoryview]]:
        """Parse ``[header, *payload]`` from a peer; raise ProtocolError for anything invalid."""
        if not frames:
            raise ProtocolError("empty message")
        header = _as_buffer(frames[0])
        if header.nbytes > self.max_header:
            raise ProtocolError(f"header of {header.nbytes} bytes exceeds {self.max_header}")
        try:
            envelope = self._envelope.decode(header)
        except DECODE_ERRORS as exc:
            raise ProtocolError(f"malformed header: {_reason(exc)}") from exc
        if envelope.version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {envelope.version}, expected {PROTOCOL_VERSION}")
        try:
            message: M = self._body.decode(envelope.body)
        except DECODE_ERRORS as exc:
            tag = self._foreign_tag(envelope.body)
            if tag is not None:
                raise ForeignMessageError(f"invalid message: {tag!r} is of another overdrive protocol", tag) from exc
            raise ProtocolError(f"invalid message: {_reason(exc)}") from exc
        payload = [_as_buffer(f) for f in frames[1:]]
        if len(payload) != message.payload_frames:
            raise ProtocolError(
                f"{type(message).__name__} needs {message.payload_frames} payload frame(s), got {len(payload)}"
            )
        for part in payload:
            if part.nbytes > message.max_payload:
                raise ProtocolError(f"payload of {part.nbytes} bytes exceeds {message.max_payload}")
        return message, payload

    def _foreign_tag(self, body: msgspec.Raw) -> str | None:
        """The tag of a body that is a tagged message of another protocol, or None (ours, or not a message)."""
        try:
            tag = self._tag.decode(body).t
        except DECODE_ERRORS:
            return None
        return None if tag in self.tags else tag
