"""One file as overdrive describes it: name, size, BLAKE3 content hash and modification time.

A node's scanner produces :class:`FileInfo`; the index carries it in registrations (an array on the wire, in field
order) and the file server looks names up in a :class:`Catalogue` of them. The name is a relative POSIX path inside
the shared folder (:mod:`overdrive.files.names`); ``content_hash`` is the BLAKE3 digest of the whole file, 64
lowercase hex characters.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Protocol

import blake3
import msgspec

from overdrive.files.names import MAX_NAME_BYTES, check_wire_name

_HEX = "0123456789abcdef"

# Length bounds are checked by msgspec (in C); character sets in __post_init__ with str.strip, which is much
# faster than msgspec's regex patterns on the 1,000,000-record snapshot path.
ContentHash = Annotated[str, msgspec.Meta(min_length=64, max_length=64)]
NonNegative = Annotated[int, msgspec.Meta(ge=0, le=(1 << 63) - 1)]
Mtime = Annotated[int, msgspec.Meta(ge=-(1 << 63), le=(1 << 63) - 1)]
"""Modification time in ns since the epoch; files from before 1970 have negative ones."""
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_BYTES)]


def check_hash(value: str) -> str:
    """Return ``value`` if it is 64 lowercase hex characters (a BLAKE3 digest), else raise ValueError."""
    if len(value) != 64 or value.strip(_HEX):
        raise ValueError("content hash must be 64 lowercase hex characters")
    return value


HASH_BLOCK = 16 << 20
"""Bytes read per block while hashing: large enough for BLAKE3's threads to pay off."""


def never() -> None:
    """A ``check`` that never interrupts."""


def hash_file(path: Path, check: Callable[[], None] = never) -> str:
    """The content hash of a whole file: BLAKE3, hex. ``check`` is called between blocks (a Ctrl-C stops a long
    hash there)."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with path.open("rb") as fh:
        while block := fh.read(HASH_BLOCK):
            check()
            hasher.update(block)
    return hasher.hexdigest()


class FileInfo(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A file as a node reports it: what it is, not who has it (the index adds the holder)."""

    name: Name
    size: NonNegative
    content_hash: ContentHash
    mtime_ns: Mtime

    def __post_init__(self) -> None:
        check_wire_name(self.name)
        check_hash(self.content_hash)


class Catalogue(Protocol):
    """The files a node shares, looked up by relative name."""

    def get(self, name: str) -> FileInfo | None:
        """The current entry for ``name``, or None if this node does not share it."""
        ...
