"""Chunk tables: one XXH3-128 checksum per chunk of one version of a file, built off the file server's loop.

:class:`TableBuild` reads and checksums a file in a worker thread (it touches only its own descriptor); the Opens
waiting for it (:class:`Waiter`) are answered by :class:`~overdrive.transfer.serving.ServeCore` once it is given
back. See :mod:`~overdrive.transfer.protocol` for why a 128-bit checksum per chunk is enough.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

import blake3

from overdrive.errors import TransferError
from overdrive.transfer.budget import Peer
from overdrive.transfer.protocol import chunk_checksum


@dataclass(frozen=True, slots=True)
class ChunkTable:
    """XXH3-128 of each chunk and BLAKE3 of the whole file, for one version (dev, inode, size, mtime) of a file."""

    digests: bytes
    content_hash: str


class _StoppedError(Exception):
    pass


def build_table(
    fd: int, size: int, chunk_size: int, known_hash: str = "", stop: Callable[[], bool] | None = None
) -> ChunkTable:
    """Checksum ``fd`` chunk by chunk (memory: one chunk), and BLAKE3 it as a whole unless ``known_hash`` is given.

    ``stop`` is asked before each chunk; when it says True the build ends with TransferError.
    """
    whole = None if known_hash else blake3.blake3()
    digests = bytearray()
    offset = 0
    while offset < size:
        if stop is not None and stop():
            raise _StoppedError
        data = os.pread(fd, min(chunk_size, size - offset), offset)
        if not data:
            raise TransferError("file shrank while hashing it")
        digests += chunk_checksum(data)
        if whole is not None:
            whole.update(data)
        offset += len(data)
    return ChunkTable(bytes(digests), whole.hexdigest() if whole is not None else known_hash)


@dataclass(eq=False, slots=True)
class Waiter:
    """An Open waiting for its file's chunk table; owns ``fd`` until it is answered."""

    peer: Peer
    rid: int
    name: str
    fd: int
    st: os.stat_result
    content_hash: str
    """The catalogue's hash for the name when the Open came: the table must match it."""
    origin: object
    """Whatever the shell passed with the Open (its routing id): where the answer goes."""
    proof: tuple[bytes, bytes] = (b"", b"")
    """The ``Opened.holder_key`` and ``Opened.proof`` its answer carries."""


class TableBuild:
    """Building the chunk table of one version of a file: :meth:`run` in any thread (it only reads its own
    descriptor), then give it back to :meth:`ServeCore.built` on the server's thread."""

    def __init__(self, key: tuple[int, ...], fd: int, st: os.stat_result, chunk_size: int, known_hash: str) -> None:
        self.key = key
        self.fd = fd
        """A duplicate of the first waiter's descriptor, closed by the core once the build is given back."""
        self.size, self.mtime_ns, self.chunk_size, self.known_hash = st.st_size, st.st_mtime_ns, chunk_size, known_hash
        self.waiters: list[Waiter] = []
        self.table: ChunkTable | None = None
        self.error: Exception | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop at the next chunk (nobody waits for it any more, or the server is stopping)."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def run(self) -> None:
        """Read and checksum the file; the outcome lands in :attr:`table` or :attr:`error`. Never raises."""
        try:
            table = build_table(self.fd, self.size, self.chunk_size, self.known_hash, self._cancelled.is_set)
            after = os.fstat(self.fd)
            if (after.st_size, after.st_mtime_ns) != (self.size, self.mtime_ns):
                raise ChangedError("file changed while its chunk table was built")
            self.table = table
        except (_StoppedError, ChangedError, OSError, TransferError) as exc:
            self.error = exc


class ChangedError(Exception):
    """The file changed (size or modification time) while it was read."""
