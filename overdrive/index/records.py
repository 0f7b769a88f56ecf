"""What the index holds: one :class:`Record` per (holder node, file name), plus the replication stamp.

A record says "node HOLDER, reachable at ADDRESS, shares NAME (SIZE bytes, BLAKE3 CONTENT_HASH, MTIME_NS)". The
replication fields say who wrote this version and when: ``origin`` is the master that stamped it, ``seq`` that
master's sequence number, ``hlc`` a hybrid-logical-clock timestamp. ``deleted`` marks a tombstone. Of two versions
of the same (holder, name) the one with the larger ``(hlc, origin)`` wins everywhere (last writer wins).

Names come from the wire, so they are validated whenever a record is built or decoded, by the name policy's
:func:`~overdrive.files.names.check_wire_name`; what a file is (:class:`~overdrive.files.model.FileInfo`) is the one
file model of :mod:`overdrive.files`.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Final

import msgspec

from overdrive.errors import ProtocolError
from overdrive.files.model import ContentHash, FileInfo, Mtime, Name, NonNegative, check_hash
from overdrive.files.names import check_wire_name

_BASE32 = "abcdefghijklmnopqrstuvwxyz234567"
_HEX = "0123456789abcdef"

# Length bounds are checked by msgspec (in C); character sets in __post_init__ with str.strip (see files.model).
NodeId = Annotated[str, msgspec.Meta(min_length=16, max_length=16)]
Address = Annotated[str, msgspec.Meta(min_length=3, max_length=300)]


def check_node_id(value: str, what: str = "node id") -> str:
    """Return ``value`` if it looks like a node id (16 lowercase base32 characters), else raise ValueError."""
    if len(value) != 16 or value.strip(_BASE32):
        raise ValueError(f"{what} must be 16 lowercase base32 characters")
    return value


class Record(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """One version of one (holder, name) entry, stamped for replication. Field order is the wire/row order."""

    name: Name
    size: NonNegative
    content_hash: ContentHash
    holder: NodeId
    address: Address
    mtime_ns: Mtime
    origin: NodeId
    seq: NonNegative
    hlc: NonNegative
    deleted: bool = False

    def __post_init__(self) -> None:
        check_wire_name(self.name)
        check_hash(self.content_hash)
        check_node_id(self.holder, "holder")
        check_node_id(self.origin, "origin")

    @property
    def key(self) -> tuple[str, str]:
        """The replicated key: (holder, name)."""
        return (self.holder, self.name)

    @property
    def version(self) -> tuple[int, str]:
        """The last-writer-wins order: larger wins."""
        return (self.hlc, self.origin)

    def same_file(self, info: FileInfo, address: str) -> bool:
        """True if this live record already says exactly what ``info`` at ``address`` says."""
        return (
            not self.deleted
            and self.size == info.size
            and self.content_hash == info.content_hash
            and self.mtime_ns == info.mtime_ns
            and self.address == address
        )


def key_id(holder: str, name: str) -> bytes:
    """A fixed 16-byte id for a (holder, name) key: primary key in stores, its first byte picks the bucket."""
    return hashlib.blake2b(f"{holder}/{name}".encode("utf-8", "surrogatepass"), digest_size=16).digest()


def version_string(hlc: int, origin: str) -> str:
    """``(hlc, origin)`` as one string that sorts the same way (stores compare this column for LWW)."""
    return f"{hlc:016x}{origin}"


def record_row(record: Record) -> tuple[object, ...]:
    """The record's fields as a tuple, in declaration order (for bulk inserts and raw snapshots)."""
    return msgspec.structs.astuple(record)


RECORDS_DECODER = msgspec.msgpack.Decoder(list[Record])
RECORDS_ENCODER = msgspec.msgpack.Encoder()

RecordRow = tuple[Name, NonNegative, ContentHash, NodeId, Address, Mtime, NodeId, NonNegative, NonNegative, bool]
"""A record as a plain tuple in field order: the bulk (snapshot) form, validated per batch, not per row."""

# Column positions in a RecordRow: plain ints, as rows are indexed on the 1,000,000-entry snapshot path; Final, so
# that mypy types row[SEQ] as precisely as row[7].
NAME: Final = 0
SIZE: Final = 1
CONTENT_HASH: Final = 2
HOLDER: Final = 3
ADDRESS: Final = 4
MTIME_NS: Final = 5
ORIGIN: Final = 6
SEQ: Final = 7
HLC: Final = 8
DELETED: Final = 9

_ROWS_DECODER = msgspec.msgpack.Decoder(list[RecordRow])
_HEX_BYTES = _HEX.encode()
_BASE32_BYTES = _BASE32.encode()


def only(text: str, alphabet: bytes) -> bool:
    """True if every character of ``text`` is one of ``alphabet``'s (ASCII) bytes: one C pass, for long joins."""
    return text.isascii() and not text.encode("ascii").translate(None, alphabet)


def names_need_a_closer_look(joined: str) -> bool:
    """For ``"\\n" + "\\n".join(names) + "\\n"``: False only if every name is certainly a valid relative name.

    True if any could be invalid: non-ASCII text (checked name by name), an empty, ``.`` or ``..`` component, a
    leading or trailing slash, NUL or a backslash. With the separators all made ``/``, each of those shows as
    ``//``, ``/./`` or ``/../``, so a few fast substring scans cover them (a name containing a newline matches
    harmlessly: it too is checked on its own).
    """
    if not joined.isascii() or "\x00" in joined or "\\" in joined:
        return True
    slashed = joined.replace("\n", "/")
    return "//" in slashed or ("/." in slashed and ("/./" in slashed or "/../" in slashed))


def decode_rows(buffer: bytes | memoryview) -> list[RecordRow]:
    """Decode a msgpack array of record rows from a peer and validate every field; raise ProtocolError if any is
    bad.

    Equivalent to building a :class:`Record` per row but done in bulk (a few C-level passes over joined strings),
    which is what makes a 1,000,000-entry snapshot affordable.
    """
    try:
        rows = _ROWS_DECODER.decode(buffer)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: a value nested past msgspec's guard
        raise ProtocolError(f"bad record rows: {exc}") from exc
    validate_rows(rows)
    return rows


def validate_rows(rows: list[RecordRow]) -> None:
    """Raise ProtocolError unless every row's name, hash, holder and origin (from a peer) are valid."""
    if not rows:
        return
    if names_need_a_closer_look("\n" + "\n".join(r[0] for r in rows) + "\n"):
        for row in rows:  # slow path: a suspicious or non-ASCII name somewhere; check each one exactly
            check_peer_name(row[0])
    if not only("".join(r[2] for r in rows), _HEX_BYTES):
        raise ProtocolError("content hash must be 64 lowercase hex characters")
    if not only("".join([r[3] + r[6] for r in rows]), _BASE32_BYTES):
        raise ProtocolError("holder and origin must be 16 lowercase base32 characters")


def check_peer_name(name: str) -> None:
    """:func:`~overdrive.files.names.check_wire_name` for a name a peer sent: raise ProtocolError if it is bad."""
    try:
        check_wire_name(name)
    except ValueError as exc:
        raise ProtocolError(str(exc)) from exc


def wire_size(name: str) -> int:
    """A generous estimate of the bytes one entry named ``name`` takes in a message (for batching)."""
    return len(name) * 4 + 200 if not name.isascii() else len(name) + 200


def encode_rows(rows: list[RecordRow] | list[Record]) -> bytes:
    """msgpack array of rows (Records encode as the same arrays)."""
    return RECORDS_ENCODER.encode(rows)
