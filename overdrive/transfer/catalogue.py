"""What a serving node offers: the contract between the folder scanner (index) and the file server (transfer).

A name is a relative POSIX path inside the shared folder; ``content_hash`` is the BLAKE3 digest of the whole
file, 64 lowercase hex characters. The file server answers only for names its catalogue holds, and still checks
the path itself before opening anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import blake3
import msgspec


def hash_file(path: Path) -> str:
    """The content hash of a whole file: BLAKE3, hex, read in 1 MiB blocks."""
    hasher = blake3.blake3(max_threads=blake3.blake3.AUTO)
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            hasher.update(block)
    return hasher.hexdigest()


class SharedFile(msgspec.Struct, frozen=True, kw_only=True):
    """One file a node shares, as its scanner last saw it."""

    name: str
    size: int
    content_hash: str
    mtime_ns: int


class Catalogue(Protocol):
    """The files a node shares, looked up by relative name."""

    def get(self, name: str) -> SharedFile | None:
        """The current entry for ``name``, or None if this node does not share it."""
        ...
