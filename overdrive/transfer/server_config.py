"""Limits and counters of one file server (:class:`~overdrive.transfer.serving.ServeCore`)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from overdrive.errors import ConfigError
from overdrive.transfer.budget import Limits
from overdrive.transfer.protocol import DEFAULT_CHUNK, valid_chunk_size


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Limits of one file server. Every per-peer limit holds per identity and, summed over the identities it
    comes from, per network address (identities are free to make; see :mod:`~overdrive.transfer.budget`)."""

    chunk_size: int = DEFAULT_CHUNK
    max_transfers_per_peer: int = 8
    """Transfers (open, or waiting for their chunk table) one identity may hold."""
    max_transfers_per_address: int = 16
    """Transfers all the identities of one network address may hold together."""
    max_transfers: int = 256
    """Transfers everybody may hold together (each holds a file descriptor)."""
    idle_timeout: float = 120.0
    """Seconds after which a transfer no chunk was served for is closed, even if nobody needs its slot."""
    reclaim_after: float = 5.0
    """Seconds after which a transfer no chunk was served for gives up its slot to an Open that needs it."""
    max_inflight_per_peer: int = 32 << 20
    """Bytes of replies to one identity handed to the socket and not yet sent: its further Reads wait. Twice the
    default fetch window of 1 MiB chunks, since a sent reply is counted until pyzmq releases it, a little after it
    left: at exactly one window an honest fetcher's Reads would wait."""
    max_inflight_per_address: int = 64 << 20
    """The same, for all the identities of one network address together."""
    max_inflight: int = 128 << 20
    """The same, for everybody together. Each bound may be passed by one chunk (one is always let out), and this one
    by one chunk per address holding a transfer, so peers that never read cannot lock out a new one."""
    max_deferred_reads_per_peer: int = 64
    """Reads one identity may have waiting for its in-flight bytes to go out; more are dropped unanswered."""
    max_deferred_reads: int = 4096
    """Reads everybody together may have waiting."""
    table_cache_bytes: int = 64 << 20
    max_chunk_size: int = 4 << 20
    """Largest chunk a fetcher may ask for (bigger only when a file needs it to stay under MAX_CHUNKS)."""
    working_notice: int = 64 << 20
    """Files at least this big get a ``Working`` reply before their chunk table is built (not when it is cached)."""
    table_workers: int = 4
    """Chunk tables built at once, each in a worker thread of the server (more wait for a free worker)."""

    def __post_init__(self) -> None:
        if not valid_chunk_size(self.chunk_size):
            raise ConfigError(f"chunk_size must be a power of two in [64 KiB, 16 MiB], not {self.chunk_size}")
        if not 1 <= self.max_transfers_per_peer <= self.max_transfers:
            raise ConfigError("need 1 <= max_transfers_per_peer <= max_transfers")
        if self.idle_timeout <= 0 or self.reclaim_after <= 0:
            raise ConfigError("idle_timeout and reclaim_after must be positive")
        if self.table_workers < 1:
            raise ConfigError("table_workers must be at least 1")
        if min(self.max_inflight_per_peer, self.max_deferred_reads_per_peer) < 1:
            raise ConfigError("in-flight bytes and deferred reads per peer must be at least 1")

    @property
    def slot_limits(self) -> Limits:
        """Transfer slots per identity, per address and in total (the address limit within the other two)."""
        per_address = max(self.max_transfers_per_peer, min(self.max_transfers_per_address, self.max_transfers))
        return Limits(self.max_transfers_per_peer, per_address, self.max_transfers)

    @property
    def inflight_limits(self) -> Limits:
        """Bytes in flight per identity, per address and in total."""
        per_address = max(self.max_inflight_per_peer, min(self.max_inflight_per_address, self.max_inflight))
        return Limits(
            self.max_inflight_per_peer, per_address, max(self.max_inflight, per_address), newcomer_passes_total=True
        )


@dataclass
class ServerStats:
    """Counters a test or benchmark can read (plain ints, safe to read from another thread)."""

    opened: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    chunks_sent: int = 0
    bytes_sent: int = 0
    malformed: int = 0
    unroutable: int = 0
    changed: int = 0
    closed: int = 0
    expired: int = 0
    cancelled: int = 0
    """Opens the fetcher gave up (timed out or stopped), dropped while waiting for their table or after."""
    tables_built: int = 0
    evicted: int = 0
    """Idle transfers closed to make room for another peer's Open, and transfers taken from the address holding
    the most slots when every slot was taken."""
    deferred: int = 0
    """Reads that waited for their peer's bytes in flight to go out."""
    reads_dropped: int = 0
    """Reads dropped unanswered: their peer already had as many waiting as it may."""
